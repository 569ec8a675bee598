"""Who may call the gateway: client API keys, the ``/metrics`` token, and what pods are told.

Keys come from ``server.api_keys_file`` (one per line, ``#`` comments) and the ``SLOGATE_API_KEYS``
environment variable (comma-separated), read once at start. A presented token is checked in
constant time: it and every key are compared as SHA-256 digests (equal lengths, so
``hmac.compare_digest`` leaks nothing about a key's length) and every key is compared, whichever
matches, so the time does not tell which key or how many there are. Keys and tokens are never
logged and never appear in an error.

The client's ``Authorization`` header is the gateway's business: it reaches the pods only with
``upstream.forward_authorization`` (see :mod:`gateway.pod_access` for what the pods get).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from config import ConfigError, GatewayConfig, ServerConfig
from gateway.errors import AuthenticationError

API_KEYS_ENV = "SLOGATE_API_KEYS"
_REDACTED = "<redacted>"


class BearerTokens:
    """A set of accepted bearer tokens; empty means "no authentication"."""

    __slots__ = ("_digests",)

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(t) for t in dict.fromkeys(tokens) if t)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the tokens."""
        token = bearer_token(authorization)
        if token is None:
            return False
        presented = _digest(token)
        matched = False
        for digest in self._digests:  # every key, always: no early exit
            matched |= hmac.compare_digest(digest, presented)
        return matched


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>`` (the scheme is case-insensitive), else ``None``."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _digest(token: str) -> bytes:
    # Header values may hold any byte (aiohttp decodes them with surrogateescape).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def api_keys(cfg: ServerConfig, environ: Mapping[str, str]) -> BearerTokens:
    """The client API keys: the keys file's lines and ``SLOGATE_API_KEYS``."""
    keys: list[str] = []
    if cfg.api_keys_file:
        keys += secret_lines(cfg.api_keys_file, "server.api_keys_file")
        if not keys:  # fail closed: an emptied keys file must not open the gateway
            raise ConfigError("server.api_keys_file", cfg.api_keys_file, "holds no key")
    keys += [k.strip() for k in environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    return BearerTokens(keys)


def metrics_token(cfg: ServerConfig) -> BearerTokens:
    """The ``/metrics`` token, from ``metrics_token`` or ``metrics_token_file``."""
    token = metrics_secret(cfg)
    return BearerTokens([token] if token else [])


def metrics_secret(cfg: ServerConfig) -> str:
    """The ``/metrics`` token itself ("" for none): replicas present it to each other."""
    return single_secret(
        cfg.metrics_token,
        cfg.metrics_token_file,
        "server.metrics_token",
        "server.metrics_token_file",
    )


def single_secret(value: str, file: str, value_path: str, file_path: str) -> str:
    if value and file:
        raise ConfigError(file_path, file, f"give either {value_path} or {file_path}, not both")
    if file:
        lines = secret_lines(file, file_path)
        if len(lines) != 1:
            raise ConfigError(file_path, file, f"must hold exactly one token (found {len(lines)})")
        return lines[0]
    if value and value != value.strip():
        raise ConfigError(value_path, _REDACTED, "must not start or end with whitespace")
    return value


def secret_lines(path: str, where: str) -> list[str]:
    """The non-blank, non-comment lines of a secrets file, stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(where, path, f"cannot read: {exc}") from exc
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


OPEN_PATHS = frozenset({"/health", "/ready"})
"""Probes stay open: a load balancer or kubelet has no key."""
METRICS_PATH = "/metrics"
INFLIGHT_PATH = "/slogate/v1/inflight"
"""What replicas tell each other (:mod:`gateway.backends.peers`): guarded like ``/metrics``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessPolicy:
    """Which token each path needs, and whether the client's ``Authorization`` goes upstream."""

    api_keys: BearerTokens
    metrics_token: BearerTokens
    forward_authorization: bool = False

    @classmethod
    def from_config(cls, cfg: GatewayConfig, environ: Mapping[str, str]) -> AccessPolicy:
        return cls(
            api_keys=api_keys(cfg.server, environ),
            metrics_token=metrics_token(cfg.server),
            forward_authorization=cfg.upstream.forward_authorization,
        )

    def check(self, path: str, authorization: str | None) -> None:
        """Raise a 401 unless ``authorization`` carries the token ``path`` needs."""
        if path in (METRICS_PATH, INFLIGHT_PATH):
            if self.metrics_token and not self.metrics_token.accepts(authorization):
                raise AuthenticationError(
                    "/metrics needs a valid bearer token (Authorization: Bearer <token>)",
                    code="invalid_metrics_token",
                )
            return
        if not self.api_keys or path in OPEN_PATHS or self.api_keys.accepts(authorization):
            return
        if bearer_token(authorization) is None:
            raise AuthenticationError(
                "You didn't provide an API key. Provide it in an Authorization header using "
                "Bearer auth (Authorization: Bearer YOUR_KEY)."
            )
        raise AuthenticationError("Incorrect API key provided.")

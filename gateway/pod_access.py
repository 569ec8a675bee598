"""How the gateway reaches its pods: the TLS trust for ``https://`` endpoints and the token it
presents to them.

Both apply to every connection the gateway opens to a pod: the relay's session
(:func:`gateway.proxy.make_session`) and the control session of the scraper and model discovery
(:class:`gateway.backends.control_session.ControlSessionConfig` carries both). The gateway only
ever connects to the endpoints of its pool: request paths are appended to an endpoint's
configured URL and nothing a client sends names a host (an absolute-form request target is
reduced to its path, see :mod:`gateway.middlewares`).
"""

from __future__ import annotations

import ssl

from config import ConfigError, UpstreamConfig
from gateway.auth import single_secret


def pod_ssl(cfg: UpstreamConfig) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` for connections to pods: verified against ``tls_ca_file`` when given
    (instead of the system store), aiohttp's verified default otherwise, or no verification
    with ``tls_verify: false``."""
    if not cfg.tls_verify:
        return False
    if not cfg.tls_ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=cfg.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("upstream.tls_ca_file", cfg.tls_ca_file, f"cannot load: {exc}") from exc


def pod_authorization(cfg: UpstreamConfig) -> str | None:
    """The ``Authorization`` value the gateway sends to the pods (vLLM's ``--api-key``)."""
    token = single_secret(
        cfg.authorization,
        cfg.authorization_file,
        "upstream.authorization",
        "upstream.authorization_file",
    )
    if token and cfg.forward_authorization:
        raise ConfigError(
            "upstream.forward_authorization",
            True,
            "give either forward_authorization or a token for the pods, not both",
        )
    return f"Bearer {token}" if token else None


def pod_headers(cfg: UpstreamConfig) -> dict[str, str]:
    """Headers every request to a pod carries (a request's own header of that name wins)."""
    authorization = pod_authorization(cfg)
    return {"Authorization": authorization} if authorization else {}

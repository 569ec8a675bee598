"""Configuration reload: SIGHUP, or a change of the configuration file, applied live.

The new configuration is loaded and validated whole (the same loader and checks as at start,
plus building the scheduler its ``scheduling`` section describes). Invalid: it is rejected, the
ERROR log line ``config.reload_rejected`` names the error, and the running configuration stays.
Valid: what can change live is applied at once, without dropping a request:

- ``pool.endpoints``: endpoints join and leave (:mod:`gateway.backends.membership`; streams to
  a leaving endpoint finish);
- ``scheduling``: a new scheduler for new requests; requests already admitted finish under the
  old one (:mod:`gateway.policy`). The predictor, its model and training window are kept;
- ``slo``: objectives, default objective, ``retry_after_s``, ``explain``, the admission queue
  (kept with its waiters unless its own settings changed);
- ``server.api_keys_file``, ``server.metrics_token``, ``server.metrics_token_file`` (and the
  files themselves, re-read on every reload: rotating a key is editing its file), and
  ``SLOGATE_API_KEYS`` as the process started with it;
- ``logging.level``.

Anything else (listener, TLS files, upstream, tokenizer, predictor, scrape settings,
``pool.kubernetes``) needs a restart: such a change is named in a WARNING
``config.restart_required`` and the running value stays, the rest is applied. Each reload is
counted in ``slogate_config_reloads_total{result}`` (``applied``, ``unchanged``, ``rejected``)
and ``slogate_config_last_reload_successful``.

The file watch polls the configuration file and the key and token files it names every
``server.config_watch_s`` and reloads when their contents change (a Kubernetes ConfigMap
volume swaps a symlink: contents, not modification times, are compared).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from config import ConfigError, GatewayConfig
from gateway.auth import AccessPolicy

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger(__name__)

LIVE = (
    "pool.endpoints",
    "scheduling",
    "slo",
    "server.api_keys_file",
    "server.metrics_token",
    "server.metrics_token_file",
    "logging.level",
)
"""Configuration paths a reload applies while running (a path or anything below it)."""


def changed_paths(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted paths of the leaf fields that differ between two configurations (a field
    holding a list, a mapping or a plain value is a leaf)."""
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        out: list[str] = []
        for f in dataclasses.fields(old):
            path = f"{prefix}.{f.name}" if prefix else f.name
            out += changed_paths(getattr(old, f.name), getattr(new, f.name), path)
        return out
    return [] if old == new else [prefix]


def is_live(path: str) -> bool:
    return any(path == live or path.startswith(f"{live}.") for live in LIVE)


def _with_live_parts(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """``running`` with the live sections taken from ``new``."""
    server = dataclasses.replace(
        running.server,
        api_keys_file=new.server.api_keys_file,
        metrics_token=new.server.metrics_token,
        metrics_token_file=new.server.metrics_token_file,
    )
    return dataclasses.replace(
        running,
        server=server,
        pool=dataclasses.replace(running.pool, endpoints=new.pool.endpoints),
        scheduling=new.scheduling,
        slo=new.slo,
        logging=dataclasses.replace(running.logging, level=new.logging.level),
    )


@dataclass(frozen=True, slots=True)
class ReloadResult:
    result: str
    """``applied``, ``unchanged`` or ``rejected``."""
    applied: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    error: str | None = None


class ConfigReloader:
    """Reloads ``gateway``'s configuration from ``load()`` (the configuration file with the
    command line's overrides, as at start)."""

    def __init__(
        self,
        gateway: Gateway,
        load: Callable[[], GatewayConfig],
        *,
        environ: Mapping[str, str],
        files: Callable[[GatewayConfig], list[str]] = lambda cfg: [],
        set_log_level: Callable[[str], None] | None = None,
    ) -> None:
        self._gateway = gateway
        self._load = load
        self._environ = environ
        self._files = files
        """The files whose contents the watch compares (the config file, key files)."""
        self._set_log_level = set_log_level or _set_root_level
        self._digest = self._files_digest(gateway.cfg)

    def reload(self, trigger: str) -> ReloadResult:
        """Load, validate and apply; never raises (a failure is the result ``rejected``)."""
        gateway = self._gateway
        metrics = gateway.metrics
        running = gateway.cfg
        try:
            new = self._load()
            paths = changed_paths(running, new)
            live = [p for p in paths if is_live(p)]
            restart = [p for p in paths if not is_live(p)]
            # Everything that can fail is built before anything changes.
            scheduler = (
                gateway.new_scheduler(new.scheduling)
                if any(p.startswith("scheduling") for p in live)
                else None
            )
            access = AccessPolicy.from_config(_with_live_parts(running, new), self._environ)
        except Exception as exc:
            expected = isinstance(exc, ConfigError | ValueError | OSError)
            if not expected:  # a bug: its traceback too
                metrics.background_task_errors.labels("reload").inc()
            metrics.config_reloads.labels("rejected").inc()
            metrics.config_last_reload_successful = 0.0
            logger.error(
                "config.reload_rejected",
                exc_info=None if expected else exc,
                extra={"trigger": trigger, "error": str(exc) or type(exc).__name__},
            )
            return ReloadResult("rejected", error=str(exc) or type(exc).__name__)
        self._digest = self._files_digest(new)
        if restart:
            logger.warning(
                "config.restart_required",
                extra={"trigger": trigger, "paths": restart},
            )
        gateway.access = access  # key files are re-read on every reload
        if live:
            if any(p.startswith("pool.endpoints") for p in live) and new.pool.kubernetes is None:
                gateway.membership.apply(new.pool.endpoints)
            if scheduler is not None or any(p.startswith("slo") for p in live):
                gateway.director.reconfigure(
                    scheduler or gateway.director.policy.scheduler, new.slo
                )
                gateway.start_trainer()
            if "logging.level" in live:
                self._set_log_level(new.logging.level)
            gateway.cfg = _with_live_parts(running, new)
        result = "applied" if live else "unchanged"
        metrics.config_reloads.labels(result).inc()
        metrics.config_last_reload_successful = 1.0
        logger.info(
            "config.reloaded",
            extra={"trigger": trigger, "result": result, "applied": live},
        )
        return ReloadResult(result, tuple(live), tuple(restart))

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the watched files' contents change; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                digest = await asyncio.to_thread(self._files_digest, self._gateway.cfg)
            except Exception:  # the watch outlives whatever went wrong
                logger.exception("config.watch_failed")
                self._gateway.metrics.background_task_errors.labels("reload").inc()
                continue
            if digest != self._digest:
                self._digest = digest
                self.reload("file")

    def _files_digest(self, cfg: GatewayConfig) -> str:
        sha = hashlib.sha256()
        for name in self._files(cfg):
            sha.update(name.encode())
            sha.update(b"\0")
            sha.update(_contents(name))
            sha.update(b"\0")
        return sha.hexdigest()


def _contents(name: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except OSError as exc:  # gone or unreadable: a state like any other, compared as such
        return f"<{type(exc).__name__}>".encode()


def _set_root_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def watched_files(config_path: str | None) -> Callable[[GatewayConfig], list[str]]:
    """The configuration file and the key and token files ``cfg`` names."""

    def files(cfg: GatewayConfig) -> list[str]:
        server = cfg.server
        named = (config_path, server.api_keys_file, server.metrics_token_file)
        return [n for n in named if n]

    return files

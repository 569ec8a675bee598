"""TLS on the listener: an ``ssl.SSLContext`` from ``server.tls_cert_file`` and
``server.tls_key_file``, re-read when either file changes.

Certificates get renewed (cert-manager, ACME) while the gateway runs. A watcher checks both files'
(mtime, size, inode) every ``server.tls_reload_interval_s`` and, on a change, loads them into
the same context: connections already open keep the certificate they shook hands with, new
handshakes get the new one. A pair that does not load (the key written before the certificate,
a half-written file) is first tried on a scratch context in a worker thread, so the serving
context never holds a mismatched pair; the old certificate stays and the next change is tried
again. The serving context itself is reloaded on the event loop's thread (about a
millisecond), never while that thread could be starting a handshake from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from config import ConfigError, ServerConfig

logger = logging.getLogger(__name__)

_Signature = tuple[tuple[int, int, int], tuple[int, int, int]]


class CertificateReloader:
    """The listener's SSL context and the watcher that keeps it current."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        *,
        interval_s: float,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.interval_s = interval_s
        self._on_error = on_error
        self.context = _server_context()
        try:
            self._signature = self._stat()
            self.context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("server.tls_cert_file", cert_file, f"cannot load: {exc}") from exc
        self._failed: _Signature | str | None = None
        """What the last failed attempt saw (a signature, or "missing"): warned about once."""

    @classmethod
    def from_config(
        cls, cfg: ServerConfig, *, on_error: Callable[[], None] | None = None
    ) -> CertificateReloader | None:
        """``None`` when the listener has no TLS configured."""
        if not cfg.tls_cert_file and not cfg.tls_key_file:
            return None
        if not cfg.tls_cert_file or not cfg.tls_key_file:
            missing = "tls_key_file" if cfg.tls_cert_file else "tls_cert_file"
            raise ConfigError(f"server.{missing}", "", "needed for TLS: give both files")
        return cls(
            cfg.tls_cert_file,
            cfg.tls_key_file,
            interval_s=cfg.tls_reload_interval_s,
            on_error=on_error,
        )

    def reload_if_changed(self) -> bool:
        """Load the files into the serving context if they changed since the last load and
        load; whether it did. Blocking; the watcher splits it between a worker thread and the
        event loop (:meth:`run`)."""
        signature = self.loadable_change()
        return signature is not None and self.apply(signature)

    def loadable_change(self) -> _Signature | None:
        """The files' signature when they changed since the last load and load as a pair (tried
        on a scratch context); else ``None``. File I/O: for a worker thread."""
        try:
            signature = self._stat()
        except OSError as exc:
            self._warn_once("missing", exc)
            return None
        if signature == self._signature or signature == self._failed:
            return None
        try:
            _server_context().load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            self._warn_once(signature, exc)
            return None
        return signature

    def apply(self, signature: _Signature) -> bool:
        """Load the files into the serving context. On the event loop's thread: the context
        must not change while another thread starts a handshake from it."""
        try:
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:  # changed again since the trial: next round
            self._warn_once(signature, exc)
            return False
        self._signature, self._failed = signature, None
        logger.info("tls.certificate_reloaded", extra={"cert_file": self.cert_file})
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                signature = await loop.run_in_executor(None, self.loadable_change)
                if signature is not None:
                    self.apply(signature)
            except Exception:
                logger.exception("tls.reload_error", extra={"cert_file": self.cert_file})
                if self._on_error is not None:
                    self._on_error()

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """A ``cleanup_ctx`` running the watcher while the app runs."""
        task = asyncio.create_task(self.run(), name="tls-reload")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _stat(self) -> _Signature:
        cert, key = os.stat(self.cert_file), os.stat(self.key_file)
        return (
            (cert.st_mtime_ns, cert.st_size, cert.st_ino),
            (key.st_mtime_ns, key.st_size, key.st_ino),
        )

    def _warn_once(self, seen: _Signature | str, exc: Exception) -> None:
        if seen == self._failed:
            return
        self._failed = seen
        logger.warning(
            "tls.reload_failed",
            extra={"cert_file": self.cert_file, "key_file": self.key_file, "error": str(exc)},
        )


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context

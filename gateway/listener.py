"""The HTTP listener's protocol settings: what aiohttp's server enforces before a handler runs.

aiohttp's server parses each request's line and headers itself: a line or header field longer
than its limit, too many headers, or anything that is not HTTP is answered with a plain-text 400
and the connection closed, before the app (and its OpenAI-style errors) sees a request. It has no
header read timeout of its own: the keep-alive timer runs from the connection's start (and from
each response's end) until a request's headers are complete, so ``server.keepalive_timeout_s``
also bounds how long a client may take to send its headers. The body's time is bounded by the
body middleware (``server.body_read_timeout_s``, 408).

aiohttp logs each malformed request at ERROR with a traceback quoting the offending bytes, which
may be a client's prompt (a body cut short by a lying ``Content-Length`` is parsed as the next
request). :class:`MalformedRequestFilter` turns that into one INFO line without them.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from config import ServerConfig

PROTOCOL_LOGGER = "slogate.http"


def listener_settings(cfg: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for ``web.run_app``, ``web.AppRunner`` or a ``TestServer``."""
    return {
        "keepalive_timeout": cfg.keepalive_timeout_s,
        "max_line_size": cfg.max_request_line_bytes,
        "max_field_size": cfg.max_header_bytes,
        "max_headers": cfg.max_headers,
        "logger": protocol_logger(),
    }


class MalformedRequestFilter(logging.Filter):
    """Rewrites aiohttp's report of an unparsable request as ``http.malformed_request`` at INFO,
    naming the error class and status, never the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | web.RequestPayloadError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg = "http.malformed_request"
            record.args = None
            record.remote = remote
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
            record.error = type(exc).__name__
            record.status = exc.code if isinstance(exc, HttpProcessingError) else 400
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def protocol_logger() -> logging.Logger:
    logger = logging.getLogger(PROTOCOL_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())
    return logger

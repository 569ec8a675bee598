"""Middlewares: the one place errors become HTTP responses, plus per-route request metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import GatewayError, error_body
from gateway.telemetry import GatewayMetrics

logger = logging.getLogger(__name__)

_CLIENT_CLOSED = 499
"""nginx's code for a request whose client went away before the answer."""

_HTTP_ERRORS: dict[int, tuple[str, str]] = {
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def error_response(status: int, message: str, type_: str, code: str) -> web.Response:
    return web.Response(
        status=status, body=error_body(message, type_, code), content_type="application/json"
    )


def make_error_middleware(metrics: GatewayMetrics, clock: Callable[[], float]) -> Middleware:
    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except GatewayError as exc:
            status = exc.status
            response = web.Response(
                status=exc.status,
                body=exc.body(),
                content_type="application/json",
                headers=exc.headers,
            )
            return response
        except web.HTTPException as exc:
            status = exc.status
            type_, code = _HTTP_ERRORS.get(exc.status, ("invalid_request_error", "http_error"))
            message = exc.reason
            if exc.status == 404:
                message = f"Invalid URL ({request.method} {request.path})"
            return error_response(exc.status, message, type_, code)
        except asyncio.CancelledError:
            status = _CLIENT_CLOSED
            raise
        except Exception:
            logger.exception("request.unhandled_error", extra={"path": request.path})
            return error_response(500, "internal gateway error", "internal_error", "internal_error")
        finally:
            metrics.http(route, status, clock() - started)

    return error_middleware

"""Middlewares: the one place errors become HTTP responses, plus per-route request metrics;
access control; and reading the request body within its size and time limits.

Order (outermost first): errors -> access -> body. So a refused key is a 401 before a byte of
its body is read, and every failure below, the limits' included, is rendered here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from gateway.auth import AccessPolicy
from gateway.errors import (
    BadRequestError,
    GatewayError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnreadableBodyError,
    error_body,
)
from gateway.proxy import REQUEST_ID_HEADER
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
        except asyncio.CancelledError:
            status = _CLIENT_CLOSED
            raise
        except Exception as exc:
            response = render_error(request, exc)
            status = response.status
            # The client's request id comes back on the gateway's own errors too.
            request_id = request.headers.get(REQUEST_ID_HEADER)
            if request_id:
                response.headers[REQUEST_ID_HEADER] = request_id
            if isinstance(exc, RequestTimeoutError | UnreadableBodyError):
                await _answer_and_close(request, response)
            return response
        finally:
            metrics.http(route, status, clock() - started)

    return error_middleware


def render_error(request: web.Request, exc: Exception) -> web.Response:
    """The response to an exception a handler raised: OpenAI-shaped, leaking no internals."""
    if isinstance(exc, GatewayError):
        return web.Response(
            status=exc.status, body=exc.body(), content_type="application/json", headers=exc.headers
        )
    if isinstance(exc, web.HTTPException):
        type_, code = _HTTP_ERRORS.get(exc.status, ("invalid_request_error", "http_error"))
        message = exc.reason
        if exc.status == 404:
            message = f"Invalid URL ({request.method} {request.path})"
        return error_response(exc.status, message, type_, code)
    if isinstance(exc, ConnectionResetError):
        # The client left while its request was read or answered: nobody to answer, nothing to
        # log (without handler cancellation this is how aiohttp reports it).
        return web.Response(status=_CLIENT_CLOSED)
    logger.error("request.unhandled_error", exc_info=exc, extra={"path": request.path})
    return error_response(500, "internal gateway error", "internal_error", "internal_error")


async def _answer_and_close(request: web.Request, response: web.Response) -> None:
    """Send ``response``, then close the connection at once. The rest of a body that timed out
    or does not decode is not worth reading: aiohttp would otherwise keep reading it for its
    lingering time (10 s) to drain the connection."""
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return
    request.protocol.force_close()  # after the bytes are queued: the transport flushes them


def make_access_middleware(current: Callable[[], AccessPolicy]) -> Middleware:
    """The request target, the client's token, and what of it goes upstream.

    - An absolute-form target (``GET http://host/path``) is reduced to its path: the gateway
      routes by path only, and nothing a client sends can name the host it connects to.
    - Header values must be UTF-8 (they are forwarded to the pods): else 400.
    - The path's token (client API key, or the ``/metrics`` token) is checked: else 401.
    - The client's ``Authorization`` is removed unless ``upstream.forward_authorization``.

    ``current()`` gives the policy in force (a configuration reload replaces it).
    """

    @web.middleware
    async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.raw_path.startswith("/"):
            request = request.clone(rel_url=request.rel_url)
        _check_header_encoding(request)
        policy = current()
        policy.check(request.path, request.headers.get(hdrs.AUTHORIZATION))
        if not policy.forward_authorization and hdrs.AUTHORIZATION in request.headers:
            headers = request.headers.copy()
            headers.popall(hdrs.AUTHORIZATION)
            request = request.clone(headers=headers)
        return await handler(request)

    return access_middleware


def _check_header_encoding(request: web.Request) -> None:
    for name, value in request.headers.items():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise BadRequestError(
                f"header {name} is not valid UTF-8", code="invalid_header", param=name
            ) from None


def make_body_middleware(*, max_body_bytes: int, timeout_s: float) -> Middleware:
    """Read a routed request's body up front, within ``max_body_bytes`` (413) and ``timeout_s``
    (408, for a client trickling its body); handlers then read it from memory."""

    @web.middleware
    async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists and request.match_info.http_exception is None:
            await read_body(request, max_body_bytes=max_body_bytes, timeout_s=timeout_s)
        return await handler(request)

    return body_middleware


async def read_body(request: web.Request, *, max_body_bytes: int, timeout_s: float) -> bytes:
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise PayloadTooLargeError(
            f"request body of {request.content_length} bytes exceeds the limit of {max_body_bytes}"
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body was not received within {timeout_s:g} s"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(
            f"request body exceeds the limit of {max_body_bytes} bytes"
        ) from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # Bad chunked framing or an undecodable Content-Encoding.
        raise UnreadableBodyError(
            f"the request body could not be read ({type(exc).__name__})"
        ) from None

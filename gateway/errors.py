"""Gateway errors and the one table that turns them into OpenAI-style HTTP responses.

GatewayError                        status  type
├── BadRequestError                 400     invalid_request_error
├── NotFoundError                   404     invalid_request_error   (unknown route or model)
├── MethodNotAllowedError           405     invalid_request_error
├── PayloadTooLargeError            413     invalid_request_error
├── SheddedError                    429     rate_limit_error        (admission shed the request)
├── NoEndpointError                 503     service_unavailable     (no usable endpoint)
└── UpstreamError                   502     upstream_error          (model server failed before
    └── UpstreamTimeoutError        504     upstream_error           the first byte / timed out)
(added later, defined at the end of the module:)
├── BadRequestError
│   └── UnreadableBodyError         400     invalid_request_error   (bad framing or encoding)
├── AuthenticationError             401     authentication_error    (missing or wrong API key)
└── RequestTimeoutError             408     invalid_request_error   (body not received in time)

Domain code raises these; ``gateway.middlewares.error_middleware`` is the only place that renders
them (and any unexpected exception, as a 500 that leaks no internals).
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class BadRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_value"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class SheddedError(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "request_shed"


class NoEndpointError(GatewayError):
    status = 503
    type = "service_unavailable"
    default_code = "no_available_endpoint"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    default_code = "bad_gateway"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class AuthenticationError(GatewayError):
    """A missing or wrong bearer token; carries ``WWW-Authenticate: Bearer`` (RFC 6750)."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class RequestTimeoutError(GatewayError):
    """The client did not send its request body in time; the connection is closed."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class UnreadableBodyError(BadRequestError):
    """The body's chunked framing or ``Content-Encoding`` does not decode; the connection is
    closed (what follows on it cannot be trusted)."""

    default_code = "invalid_body"

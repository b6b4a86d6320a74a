"""The proxy's error tree, each error carrying its HTTP status and OpenAI-style body.

    ProxyError                      (500 api_error)
    ├── InvalidRequest              (400 invalid_request_error)
    │   ├── BodyTooLarge            (413)
    │   └── StreamingDenied         (400)
    ├── Unauthorized                (401, Kong's {"message"} body: key-auth refused)
    ├── RouteNotFound               (404 not_found_error)
    ├── NoTargetAvailable           (503 service_unavailable)
    ├── BudgetExhausted             (429 tokens | requests)
    └── UpstreamFailed              (502 upstream_error)
        └── UpstreamTimeout         (504)

Every error leaves the gateway as ``{"error": {"message", "type", "param", "code"}}``, the
shape the OpenAI SDKs parse, so clients see a readable exception instead of a crash; except
``Unauthorized``, which answers exactly as Kong's key-auth does (``{"message": ...}``), the
body Kong clients check for.
Messages reuse Kong's wording where Kong has one.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "BodyTooLarge",
    "BudgetExhausted",
    "InvalidRequest",
    "NoTargetAvailable",
    "ProxyError",
    "RouteNotFound",
    "StreamingDenied",
    "Unauthorized",
    "UpstreamFailed",
    "UpstreamTimeout",
    "error_body",
]


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_encoder = msgspec.json.Encoder()


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    """An OpenAI-style error document."""
    return _encoder.encode(_ErrorBody(_ErrorDetail(message, type_, param, code)))


class ProxyError(Exception):
    """Base of every error the proxy answers with; never carries a secret."""

    status_code = 500
    error_type = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        #: Response headers to send with the error (e.g. Retry-After).
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.code, self.param)


class InvalidRequest(ProxyError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class StreamingDenied(InvalidRequest):
    code = "streaming_not_enabled"


class _KongMessage(msgspec.Struct):
    message: str


class Unauthorized(ProxyError):
    """key-auth refused the request (no key, an unknown key, a key given twice)."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def body(self) -> bytes:
        return _encoder.encode(_KongMessage(self.message))


class RouteNotFound(ProxyError):
    status_code = 404
    error_type = "not_found_error"
    code = "route_not_found"


class NoTargetAvailable(ProxyError):
    status_code = 503
    error_type = "service_unavailable"
    code = "no_target_available"


class BudgetExhausted(ProxyError):
    """Every target that could serve the request is over its fleet-wide budget. The type
    is the limit, as OpenAI's own 429s say it ("tokens" or "requests")."""

    status_code = 429
    error_type = "tokens"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.error_type = limit


class UpstreamFailed(ProxyError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamFailed):
    status_code = 504
    code = "upstream_timeout"

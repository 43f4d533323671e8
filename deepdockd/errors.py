"""The project's own errors. The error middleware turns each into one JSON shape:

    {"error": {"code": "...", "message": "...", "details": {...}}}

Services and handlers raise these; nothing else reaches a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class ApiError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class InvalidInput(ApiError):
    status = 422
    code = "invalid_input"


class TooManyRequests(ApiError):
    status = 429
    code = "too_many_requests"


class BadGateway(ApiError):
    status = 502
    code = "bad_gateway"


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"

"""The middlewares besides authentication (auth.py): every failure leaves the daemon as one
JSON shape (see errors.py), and every request that changes something leaves an audit line."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from deepdockd.api.keys import AUDIT_TARGET, REQUEST_USER
from deepdockd.errors import ApiError
from deepdockd.logfmt import logfmt

log = logging.getLogger(__name__)
audit_log = logging.getLogger("deepdockd.audit")


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, object] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details, headers=exc.headers)
    except web.HTTPException as exc:
        # aiohttp's own answers: no route, wrong method, body too large.
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(
            500, "internal_error", "internal error; the daemon's log has the details"
        )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}",
            headers={"Allow": ",".join(allowed)},
        )
    if isinstance(exc, web.HTTPNotFound):
        return error_response(404, "not_found", f"no route for {request.method} {request.path}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, "body_too_large", exc.text or "request body too large")
    code = exc.reason.lower().replace(" ", "_")
    return error_response(exc.status, code, exc.text or exc.reason)


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line for each request that changes something: who, what, on what, and how it
    ended. Outside the error middleware, so that it sees the answer to every request, errors
    included."""
    response = await handler(request)
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        fields = {
            "user": request.get(REQUEST_USER, "-"),
            "action": f"{request.method} {request.path}",
            "target": request.get(AUDIT_TARGET) or "/".join(request.match_info.values()) or "-",
            "outcome": response.status,
        }
        # logfmt: a path or a name with spaces stays one quoted value (docs/security.md#audit).
        audit_log.info("%s", logfmt(fields), extra=fields)
    return response

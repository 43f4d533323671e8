"""Who is calling: bearer tokens checked on every route but the public ones."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from deepdockd.api.keys import REQUEST_CALLER, REQUEST_USER
from deepdockd.errors import Unauthorized
from deepdockd.tokens import Caller, TokenStore

# Health, documentation and the dashboard's files need no token (the dashboard's calls do).
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.yaml", "/openapi.json", "/docs", "/ui"})
PUBLIC_PREFIXES = ("/docs/", "/ui/")
# With auth off (allowed on loopback only), every caller is this admin.
ANONYMOUS = Caller(user="anonymous", role="admin")

_CHALLENGE = 'Bearer realm="deepdockd"'


def caller_of(request: web.Request) -> Caller:
    return request[REQUEST_CALLER]


def auth_middleware(tokens: TokenStore | None) -> Middleware:
    """``tokens`` None: auth is off."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tokens is None:
            request[REQUEST_CALLER] = ANONYMOUS
        elif not _public(request.path):
            request[REQUEST_CALLER] = _check(request, tokens)
        if REQUEST_CALLER in request:
            request[REQUEST_USER] = request[REQUEST_CALLER].user
        return await handler(request)

    return authenticate


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _check(request: web.Request, tokens: TokenStore) -> Caller:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "this route needs a token: send the header Authorization: Bearer TOKEN",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    caller = tokens.authenticate(token.strip())
    if caller is None:
        raise Unauthorized(
            "the token is not valid: it was mistyped or revoked",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    return caller

"""Who is calling: a bearer token, or on the local socket the host user the kernel names
(``host_users.py``), checked on every route but the public ones. A token wins over the
socket's peer: an admin may act as a service account there."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from deepdockd.api.keys import REQUEST_BY_COOKIE, REQUEST_BY_PEER, REQUEST_CALLER, REQUEST_USER
from deepdockd.errors import Unauthorized
from deepdockd.host_users import caller_of_uid, peer_uid
from deepdockd.proxy.sessions import ProxySessions
from deepdockd.tokens import Caller, HostToken, TokenStore, host_account_exists

# Health, documentation and the dashboard's files need no token (the dashboard's calls do).
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.yaml", "/openapi.json", "/docs", "/ui"})
PUBLIC_PREFIXES = ("/docs/", "/ui/")
# The proxy's route, where a session cookie may stand in for the token (handlers/proxy.py).
PROXY_PATH = "/containers/{name}/proxy/{port}/{path}"
# With auth off (allowed on loopback only), every caller is this admin.
ANONYMOUS = Caller(user="anonymous", role="admin")

_CHALLENGE = 'Bearer realm="deepdockd"'


def caller_of(request: web.Request) -> Caller:
    return request[REQUEST_CALLER]


def auth_middleware(
    tokens: TokenStore | None, admin_group: str | None, sessions: ProxySessions
) -> Middleware:
    """``tokens`` None: auth is off. ``admin_group`` None: socket callers are not host users
    (``host_users`` off), so they need a token like anyone. ``sessions``: the proxy's."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tokens is None:
            request[REQUEST_CALLER] = ANONYMOUS
        elif not _public(request.path):
            request[REQUEST_CALLER] = await _check(request, tokens, admin_group, sessions)
        if REQUEST_CALLER in request:
            request[REQUEST_USER] = request[REQUEST_CALLER].user
        return await handler(request)

    return authenticate


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def on_local_socket(request: web.Request) -> bool:
    connection = request.transport.get_extra_info("socket") if request.transport else None
    return connection is not None and connection.family == socket.AF_UNIX


async def _check(
    request: web.Request, tokens: TokenStore, admin_group: str | None, sessions: ProxySessions
) -> Caller:
    # The host's account lookups (NSS: files, or LDAP and sssd on a lab's hosts) may block,
    # so they run in a thread, never on the event loop.
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if (session := _proxy_session(request, sessions)) is not None:
        # The cookie wins: the Authorization header is then the service's own.
        request[REQUEST_BY_COOKIE] = True
        scheme, token = "Bearer", session
    if not scheme and admin_group is not None and on_local_socket(request):
        connection = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
        request[REQUEST_BY_PEER] = True
        return await asyncio.to_thread(caller_of_uid, peer_uid(connection), admin_group)
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "this route needs a token: send the header Authorization: Bearer TOKEN",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    entry = tokens.find(token.strip())
    if isinstance(entry, HostToken) and not await asyncio.to_thread(
        host_account_exists, entry.user
    ):
        entry = None  # its user's host account is gone, and the token with it
    if entry is None:
        raise Unauthorized(
            "the token is not valid: it was mistyped or revoked",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    return Caller(entry.user, entry.role)


def _proxy_session(request: web.Request, sessions: ProxySessions) -> str | None:
    """On the proxy's route, the token behind the request's session cookie; None where the
    request has no such cookie. A cookie that is no (longer a) session for the container in
    the path is a 401."""
    route = request.match_info.route
    if route.resource is None or route.resource.canonical != PROXY_PATH:
        return None
    secret = request.cookies.get(sessions.cookie_name)
    if not secret:
        return None
    token = sessions.token_for(secret, request.match_info["name"])
    if token is None:
        raise Unauthorized(
            "the proxy session has ended, or is not for this container: open the service "
            "from the dashboard again",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    return token

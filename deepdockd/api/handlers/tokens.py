"""Tokens host users make for themselves, for a laptop or a script: made only over the local
socket, on the kernel's word of who is calling (never with a token, so a stolen token cannot
breed more); listed and revoked by their user, and by admins, over either listener."""

from __future__ import annotations

from aiohttp import web

from deepdockd.api import answers
from deepdockd.api.auth import caller_of
from deepdockd.api.keys import CONFIG, REQUEST_BY_PEER, TOKENS
from deepdockd.api.schemas import MintTokenSchema, load_body
from deepdockd.errors import Conflict, Forbidden, NotFound
from deepdockd.tokens import TokenError, TokenStore


async def mint_token(request: web.Request) -> web.Response:
    tokens = _store(request)
    if not request.get(REQUEST_BY_PEER, False):
        raise Forbidden(
            "tokens are made only over the local socket, for the host user calling "
            f"({request.app[CONFIG].socket}), without a token: log in to the server and run "
            "deepdock token create NAME"
        )
    name = (await load_body(request, MintTokenSchema()))["name"]
    caller = caller_of(request)
    try:
        entry, token = tokens.mint(caller.user, caller.role, name)
    except TokenError as exc:
        raise Conflict(str(exc), details={"name": name}) from None
    return web.json_response({**answers.host_token(entry), "token": token}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    caller = caller_of(request)
    mine = None if caller.is_admin else caller.user
    listed = sorted(_store(request).host_tokens(mine), key=lambda t: (t.user, t.created, t.name))
    return web.json_response({"tokens": [answers.host_token(t) for t in listed]})


async def revoke_token(request: web.Request) -> web.Response:
    tokens, caller = _store(request), caller_of(request)
    token_id = request.match_info["token_id"]
    found = next((t for t in tokens.host_tokens() if t.id == token_id), None)
    # Another user's token is as absent as one that never was: ids are not to be probed.
    if found is None or not (caller.is_admin or found.user == caller.user):
        raise NotFound(f"no token {token_id!r}", details={"id": token_id})
    tokens.revoke_host_token(token_id)
    return web.json_response({"message": f"token '{found.name}' ({found.id}) revoked"})


def _store(request: web.Request) -> TokenStore:
    if TOKENS not in request.app:
        raise NotFound("auth is off on this daemon, so it has no tokens")
    return request.app[TOKENS]

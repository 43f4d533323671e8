"""The containers' services, reached through deepdockd with their owner's rights: the
services are published on loopback (``service_bind_address``), and deepdockd relays HTTP and
WebSocket traffic to them for the container's owner and the admins only
(docs/security.md#services)."""

from __future__ import annotations

import ipaddress

from aiohttp import web
from yarl import URL

from deepdockd.api.auth import caller_of
from deepdockd.api.keys import (
    CONFIG,
    CONTAINERS,
    PROXY_SESSIONS,
    RELAY,
    REQUEST_BY_COOKIE,
    REQUEST_BY_PEER,
    STREAM_CAPS,
    TOKENS,
)
from deepdockd.config import Config
from deepdockd.containers.model import ContainerNotRunning, ManagedContainer
from deepdockd.errors import Forbidden, NotFound


async def open_session(request: web.Request) -> web.Response:
    """A session cookie for the container's proxy path, for the token that asks: what the
    dashboard trades the token for before it opens a service in a new tab."""
    name = request.match_info["name"]
    container = await request.app[CONTAINERS].get(name, caller_of(request))
    if request.get(REQUEST_BY_PEER, False):
        raise Forbidden(
            "a proxy session stands in for a token, for a browser: ask with a token "
            "(deepdock token create NAME makes one)"
        )
    sessions = request.app[PROXY_SESSIONS]
    token = _bearer(request) if TOKENS in request.app else ""
    secret, lifetime = sessions.open(token, container.name)
    prefix = proxy_prefix(container.name)
    response = web.json_response(
        {
            "urls": {str(port): f"{prefix}{port}/" for port in sorted(container.ports)},
            "expires_in": int(lifetime),
        },
        status=201,
    )
    response.set_cookie(
        sessions.cookie_name,
        secret,
        path=prefix,
        max_age=int(lifetime),
        httponly=True,
        samesite="Strict",
        secure=_over_tls(request),
    )
    return response


async def relay(request: web.Request) -> web.StreamResponse:
    """The request to the container's service, and its answer back."""
    name = request.match_info["name"]
    caller = caller_of(request)
    container = await request.app[CONTAINERS].get(name, caller)
    port = int(request.match_info["port"])
    host, host_port = _where(container, port, request.app[CONFIG])
    what = f"port {port} of container {container.name!r}"
    upstream = URL.build(
        scheme="http",
        host=host,
        port=host_port,
        path=request.rel_url.raw_path,
        query_string=request.rel_url.raw_query_string,
        encoded=True,
    )
    # A token that authenticated the request is deepdockd's, not the service's; with a
    # cookie, the Authorization header is the service's own (Jupyter's "token …").
    keep_authorization = request.get(REQUEST_BY_COOKIE, False)
    relay = request.app[RELAY]
    if _is_websocket(request):
        with request.app[STREAM_CAPS].hold(caller):
            return await relay.websocket(
                request, upstream, keep_authorization=keep_authorization, what=what
            )
    return await relay.http(request, upstream, keep_authorization=keep_authorization, what=what)


def proxy_prefix(name: str) -> str:
    return f"/containers/{name}/proxy/"


def _where(container: ManagedContainer, port: int, config: Config) -> tuple[str, int]:
    """Where the proxy connects for the container's ``port``: with Docker on this host, the
    container's own address on its network (no hop through Docker's port publisher, whose
    copy would double the relay's cost); else its published port."""
    host_port = _published(container, port)
    if config.docker_host.startswith("unix://") and container.addresses:
        return container.addresses[0], port
    return _loopback_for(config.service_bind_address), host_port


def _published(container: ManagedContainer, port: int) -> int:
    """The host port of ``port``: only a port its create published is a service."""
    host_port = container.ports.get(port)
    if host_port is None:
        published = ", ".join(str(p) for p in sorted(container.ports)) or "none"
        raise NotFound(
            f"container {container.name!r} publishes no port {port} (its ports: {published}); "
            'a create\'s "ports" names the ports the proxy reaches',
            details={"name": container.name, "port": port},
        )
    if container.state != "running":
        first = "unpause" if container.state == "paused" else "start"
        raise ContainerNotRunning(
            f"container {container.name!r} is {container.state}, not running: {first} it first",
            details={"name": container.name, "state": container.state},
        )
    return host_port


def _loopback_for(address: str) -> str:
    """Where to reach a port published on ``address``: the address itself, or loopback
    where it is the unspecified address (all of the host's)."""
    parsed = ipaddress.ip_address(address)
    if parsed.is_unspecified:
        return "::1" if parsed.version == 6 else "127.0.0.1"
    return address


def _is_websocket(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def _bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").partition(" ")[2].strip()


def _over_tls(request: web.Request) -> bool:
    # Behind a TLS-terminating reverse proxy, the page came over TLS although this hop did
    # not. A forged header only makes the cookie Secure, which costs its sender the cookie.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"

"""Client connections: a deadline on each request's header, built from aiohttp's public parts.

aiohttp gives a client as long as its keep-alive timeout (an hour) to finish a request
header, so clients that send half a header and wait hold connections, and the sockets under
them, for that long (slowloris). Here a connection has ``header_timeout`` seconds for each
header: for its first request from the moment it opens, for each later one from the first
byte that arrives once the previous request has been answered. One that has not sent the
whole header by then is closed. A body that comes slowly after its header, and a connection
idle between two requests, are aiohttp's business as before. (Bytes of a next request that
arrive while the previous one is being answered start no clock: until more come, that
connection counts as idle.)

aiohttp has no such setting, and its connection handler's state is private; so two public
seams tell the clock what it needs: a protocol that wraps aiohttp's (and sees the bytes
come), and a middleware (which sees each request begin, right after its header was read,
and end).

Connections cannot pile up either. A kept-alive connection idle between two requests is
closed after ``keepalive_timeout`` (aiohttp's own option, set by server.py; its default is an
hour). At most ``max_connections`` are open in all and ``max_connections_per_client`` from one
client address (an IPv6 client is its /64, which one host can fill at will): the connection
that would go over a cap is the one closed, at once, before aiohttp sees it, so the
connections already open go on being served; a warning names the address at most once a
minute per address. Caps are worth something only below the process's limit on open files, so
:func:`fit_file_limit` checks that limit at start (and raises the soft limit to the hard one
where that makes them fit).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import socket
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from deepdockd.host_users import peer_uid

log = logging.getLogger(__name__)


class _Connection(asyncio.Protocol):
    """aiohttp's protocol of one connection, passed every call, with the header clock."""

    def __init__(self, inner: asyncio.Protocol, deadlines: Connections) -> None:
        self._inner = inner
        self._deadlines = deadlines
        self._transport: asyncio.Transport | None = None
        self._client: str | None = None  # counted against this client's cap while open
        self._refused = False  # closed at once, over a cap: aiohttp never saw it
        self._clock: asyncio.TimerHandle | None = None
        self._answering = False  # a request's header was read, and it is not answered yet

    # --- asyncio's calls, passed on ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        client = client_of(transport.get_extra_info("peername")) or local_client_of(transport)
        if not self._deadlines.admit(client):
            self._refused = True
            transport.abort()
            return
        self._client = client
        self._transport = transport
        self._deadlines.connections[transport] = self
        self._inner.connection_made(transport)
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._answering and self._clock is None:  # the first byte of a later request
            self._start_clock()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._stop_clock()
        if self._transport is not None:
            self._deadlines.connections.pop(self._transport, None)
            self._deadlines.release(self._client)
        self._inner.connection_lost(exc)

    # --- the clock ---

    def request_began(self) -> None:
        self._answering = True
        self._stop_clock()

    def request_ended(self) -> None:
        self._answering = False

    def _start_clock(self) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.call_later(self._deadlines.header_timeout, self._too_late)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _too_late(self) -> None:
        self._clock = None
        if self._transport is None:
            return
        log.debug(
            "closing the connection of %s: no whole request header within %g s",
            self._transport.get_extra_info("peername"), self._deadlines.header_timeout,
        )  # fmt: skip
        self._transport.abort()


# How often a warning about one address's closed connections is logged, at most.
WARN_EVERY_S = 60.0


class Connections:
    """The header clock and the caps. Put :meth:`protocol_factory` around the runner's
    server, and :attr:`middleware` first in the app's middlewares."""

    def __init__(
        self, header_timeout: float, max_connections: int, max_connections_per_client: int
    ) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.connections: dict[asyncio.BaseTransport, _Connection] = {}
        self._per_client: dict[str, int] = {}
        self._warned: dict[str, float] = {}  # address -> when its last warning was logged

    def admit(self, client: str | None) -> bool:
        """Count a new connection from ``client`` (None: an address we cannot tell), or say
        no when it would go over a cap."""
        if len(self.connections) >= self.max_connections:
            self._warn(
                client, "max_connections (%d) are open", self.max_connections
            )  # fmt: skip
            return False
        if client is None:
            return True
        held = self._per_client.get(client, 0)
        if held >= self.max_connections_per_client:
            self._warn(
                client, "the address holds max_connections_per_client (%d) already",
                self.max_connections_per_client,
            )  # fmt: skip
            return False
        self._per_client[client] = held + 1
        return True

    def release(self, client: str | None) -> None:
        if client is None:
            return
        held = self._per_client.pop(client, 0) - 1
        if held > 0:
            self._per_client[client] = held

    def _warn(self, client: str | None, why: str, *args: object) -> None:
        now = time.monotonic()
        key = client or "?"
        if now - self._warned.get(key, -WARN_EVERY_S) < WARN_EVERY_S:
            return
        if len(self._warned) > 4096:  # addresses that went quiet are forgotten
            self._warned = {k: t for k, t in self._warned.items() if now - t < WARN_EVERY_S}
        self._warned[key] = now
        log.warning(
            "closing new connections from %s: " + why + " (said once a minute per address)",
            key, *args,
        )  # fmt: skip

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], _Connection]:
        return lambda: _Connection(inner(), self)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self.connections.get(request.transport) if request.transport else None
        if connection is not None:
            connection.request_began()
        try:
            return await handler(request)
        finally:
            if connection is not None:
                connection.request_ended()


def local_client_of(transport: asyncio.BaseTransport) -> str | None:
    """On the local socket, the caps count a connection under its caller's uid, so that one
    host user cannot hold every connection either."""
    connection = transport.get_extra_info("socket")
    if connection is None or connection.family != socket.AF_UNIX:
        return None
    try:
        return f"uid {peer_uid(connection)}"
    except OSError:
        return None


def client_of(peername: object) -> str | None:
    """The address a connection's caps count it under: the IPv4 address (an IPv4-mapped IPv6
    address is that IPv4 address), the /64 of an IPv6 address; None when there is none."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None
    try:
        address = ipaddress.ip_address(peername[0].partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


# Files the daemon needs beside its clients' connections: Docker's connections (quick calls
# and streams), the state files and the usage database, NVML, the log, the listening
# sockets, the files a request reads (/proc for the host's figures), and a margin.
RESERVED_FILES = 1024


def fit_file_limit(max_connections: int) -> None:
    """Check at start that RLIMIT_NOFILE leaves room for ``max_connections`` and
    RESERVED_FILES; raise the soft limit up to the hard one where that makes it fit, and
    warn where nothing does (new connections would then fail with 'Too many open files',
    whoever makes them)."""
    needed = max_connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    raised = hard if hard != resource.RLIM_INFINITY else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the soft limit on open files (RLIMIT_NOFILE): %s", exc)
        raised = soft
    if raised >= needed:
        log.info(
            "raised the soft limit on open files (RLIMIT_NOFILE) from %d to %d, for "
            "max_connections (%d) plus %d for Docker's connections, files and a margin",
            soft, raised, max_connections, RESERVED_FILES,
        )  # fmt: skip
        return
    log.warning(
        "the limit on open files (RLIMIT_NOFILE) is %d (hard limit %d), less than "
        "max_connections (%d) plus %d for Docker's connections, files and a margin (%d): "
        "when that many connections are open, new ones fail with 'Too many open files', a "
        "valid user's too. Raise LimitNOFILE= in the unit (the shipped one sets 65536) or "
        "ulimit -n, or lower max_connections",
        raised, hard, max_connections, RESERVED_FILES, needed,
    )  # fmt: skip

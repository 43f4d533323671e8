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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger(__name__)


class _Connection(asyncio.Protocol):
    """aiohttp's protocol of one connection, passed every call, with the header clock."""

    def __init__(self, inner: asyncio.Protocol, deadlines: HeaderDeadlines) -> None:
        self._inner = inner
        self._deadlines = deadlines
        self._transport: asyncio.Transport | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._answering = False  # a request's header was read, and it is not answered yet

    # --- asyncio's calls, passed on ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._deadlines.connections[transport] = self
        self._inner.connection_made(transport)
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        if not self._answering and self._clock is None:  # the first byte of a later request
            self._start_clock()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        if self._transport is not None:
            self._deadlines.connections.pop(self._transport, None)
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


class HeaderDeadlines:
    """Put :meth:`protocol_factory` around the runner's server, and :attr:`middleware`
    first in the app's middlewares."""

    def __init__(self, header_timeout: float) -> None:
        self.header_timeout = header_timeout
        self.connections: dict[asyncio.BaseTransport, _Connection] = {}

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

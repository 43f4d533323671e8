"""Client connections: aiohttp's, with a deadline on each request's header.

aiohttp gives a client as long as its keep-alive timeout (an hour) to finish a request
header, so clients that send half a header and wait hold connections, and the sockets under
them, for that long (slowloris). Here a connection has ``header_timeout`` seconds for each
header: for its first request from the moment it opens, for each later one from the first
byte that aiohttp reads while it waits for the next request. One that has not sent the
whole header by then is closed. A body that comes slowly after its header, and a connection
idle between two requests, are aiohttp's business as before. (Bytes of a next request that
arrive while the previous one is being answered start no clock: until more come, that
connection counts as idle.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


class HeaderTimeoutHandler(web.RequestHandler):
    """aiohttp's handler of one connection, with the header deadline."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        waiting = self._waiter is not None and not self._waiter.done()
        if waiting and self._header_deadline is None:  # the first byte of a later request
            self._start_header_clock()
        parsed = self._request_count  # requests whose header aiohttp has read
        super().data_received(data)
        if self._request_count != parsed:
            self._stop_header_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        self._header_deadline = self._loop.call_later(self._header_timeout, self._too_late)

    def _stop_header_clock(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_late(self) -> None:
        self._header_deadline = None
        log.debug(
            "closing the connection of %s: no whole request header within %g s",
            self.peername, self._header_timeout,
        )  # fmt: skip
        self.force_close()


class _Server(web.Server):
    """aiohttp's protocol factory, making HeaderTimeoutHandlers."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> web.RequestHandler:
        return HeaderTimeoutHandler(
            self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs
        )


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections have the header deadline."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        # aiohttp's own (which also starts the app) gives the app's request handler, request
        # factory and the connections' settings; ours makes the connections with them.
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            header_timeout=self.header_timeout,
            **server._kwargs,
        )

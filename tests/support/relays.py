"""TCP relays on a free loopback port, for tests that put something between a client and a
server: a slow link (``slow_link``), a link that holds big answers until told (``held_link``),
a relay that keeps a copy of what passed (checking_relay.py). One relay, and what each
direction does with the bytes (a ``Pipe``) is what differs.

``in_thread`` runs any of them on an event loop of its own thread, for synchronous tests
(Playwright's sync API already runs a loop in the test's thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# Copies one direction of a connection from ``reader`` to ``writer`` until it ends.
Pipe = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# A connection's two pipes: (the client's requests, the server's answers), made per connection.
Pipes = Callable[[], tuple[Pipe, Pipe]]
CHUNK = 2**16


async def copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chunk: int = CHUNK,
    each: Callable[[bytes], Awaitable[None]] | None = None,
) -> None:
    """Every byte on, ``chunk`` at a time; ``each`` runs before each chunk is written (to
    pace, hold or keep a copy). The writer is closed at the end, whichever side ended."""
    try:
        while data := await reader.read(chunk):
            if each is not None:
                await each(data)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def plain() -> tuple[Pipe, Pipe]:
    return copy, copy


@contextlib.asynccontextmanager
async def tcp_relay(host: str, port: int, pipes: Pipes = plain) -> AsyncIterator[str]:
    """A relay on a free loopback port to ``host:port``; yields its ``host:port``. A client
    whose server is down is closed at once. On leaving, the connections end by being closed,
    not cancelled (asyncio's stream server logs a cancelled connection's task as an error)."""
    connections: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        writers.append(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            connections.discard(task)
            return
        writers.append(upstream_writer)
        requests, answers = pipes()
        try:
            await asyncio.gather(
                requests(reader, upstream_writer), answers(upstream_reader, writer)
            )
        finally:
            connections.discard(task)

    server = await asyncio.start_server(connect, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()


def slow_link(to: str, *, bytes_per_s: int) -> contextlib.AbstractAsyncContextManager[str]:
    """A relay to ``to`` (``host:port``) that brings the answers back at about
    ``bytes_per_s``: a registry behind a slow network, so that a pull's download lasts
    seconds however fast the machine. A loopback registry is one Docker pulls from without
    TLS."""
    chunk = max(bytes_per_s // 100, 1)

    async def pace(_: bytes) -> None:
        await asyncio.sleep(0.01)  # the link's rate: `chunk` bytes each 10 ms

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await copy(reader, writer, chunk=chunk, each=pace)

    host, port = to.rsplit(":", 1)
    return tcp_relay(host, int(port), lambda: (copy, answers))


@dataclass
class HeldLink:
    """A relay to a registry (``held_link``): its ``host:port``; ``holding`` is set once it
    holds an answer."""

    address: str = ""
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        """Every answer held goes on, and none is held again."""
        self.released.set()


@contextlib.asynccontextmanager
async def held_link(to: str, *, after_bytes: int) -> AsyncIterator[HeldLink]:
    """A relay to ``to`` (``host:port``) that holds each answer once it has brought back
    ``after_bytes`` bytes, until ``release()``: a registry whose big downloads stall mid-way
    for as long as a test needs a pull in flight (its small answers, the ping, a 401, a
    manifest, pass)."""
    link = HeldLink()

    def pipes() -> tuple[Pipe, Pipe]:
        brought = 0

        async def hold(data: bytes) -> None:
            nonlocal brought
            if brought + len(data) > after_bytes and not link.released.is_set():
                link.holding.set()
                await link.released.wait()
            brought += len(data)

        async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await copy(reader, writer, each=hold)

        return copy, answers

    host, port = to.rsplit(":", 1)
    async with tcp_relay(host, int(port), pipes) as address:
        link.address = address
        try:
            yield link
        finally:
            link.release()


@contextlib.contextmanager
def in_thread(manager: contextlib.AbstractAsyncContextManager[T], name: str) -> Iterator[T]:
    """``manager`` entered and left on an event loop that runs in a thread of its own from
    the start, for a synchronous test."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        value = asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result(10)
        try:
            yield value
        finally:
            asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

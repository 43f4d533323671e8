"""A registry on loopback that never answers a pull, for the tests and the bench that hold
pulls in flight (tests/test_streams_starvation.py, bench's noisy-neighbour figure)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

PING = b"GET /v2/ HTTP/1.1"
PONG = (
    b"HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)


@dataclasses.dataclass
class SilentRegistry:
    address: str  # host:port
    asked: list[bytes]  # the request lines it never answered


@contextlib.asynccontextmanager
async def silent_registry() -> AsyncIterator[SilentRegistry]:
    """A registry on loopback that never answers a pull: it answers Docker's ping (``GET
    /v2/``: "I am a registry"), so that Docker asks it for the image, and then never answers
    that, nor anything else. (A server that answered nothing at all Docker gives up on by
    itself, in 25 s: its ping has a time limit, its pull none.) It speaks no TLS, so Docker,
    which tries HTTPS first on loopback, falls back to HTTP at once. Closing it ends every
    connection it holds."""
    seen = SilentRegistry(address="", asked=[])
    held: list[asyncio.StreamWriter] = []
    serving: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        task = asyncio.current_task()
        assert task is not None
        serving.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (start := await reader.readexactly(4)) in (b"GET ", b"HEAD"):
                # (anything else is a TLS handshake: refused at once)
                request = start + await reader.readuntil(b"\r\n\r\n")
                if not request.startswith(PING):
                    seen.asked.append(request.split(b"\r\n")[0])
                    await reader.read()  # and never answered
                    break
                writer.write(PONG)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    seen.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield seen
    finally:
        server.close()
        for writer in held:
            writer.close()
        if serving:  # each ends once its connection is closed: no cancel, which asyncio's
            await asyncio.wait(serving, timeout=5)  # stream server would print as an error
        await server.wait_closed()

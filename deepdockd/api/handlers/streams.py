"""The streaming answers, each protocol written once: a container's output as a text relay
(GET /containers/NAME/logs), changes as Server-Sent Events (GET /events), and a pull's
progress as NDJSON (POST /images with Accept: application/x-ndjson)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aiohttp import web

from deepdockd.api import answers
from deepdockd.api.auth import caller_of
from deepdockd.api.keys import ACCOUNTING, CONFIG, CONTAINERS, DOCKER, STATS, STREAM_CAPS, VIEW
from deepdockd.api.query import bool_query, int_query, last_event_id
from deepdockd.containers.view import Change, Subscription
from deepdockd.docker import PullProgress
from deepdockd.errors import ApiError, ServiceUnavailable
from deepdockd.images.service import PullResult
from deepdockd.tokens import Caller

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
# Event streams: a comment this often keeps proxies from closing an idle one, and the kernel's
# send buffer of each is this small (bytes).
HEARTBEAT_S = 15.0
SSE_SEND_BUFFER = 32 * 1024
# How often a log stream that has nothing to send looks whether its client is still there.
CLIENT_CHECK_S = 2.0


# --- a container's output: a text relay ---


async def container_logs(request: web.Request) -> web.StreamResponse:
    """The container's output as text; with ``follow``, streamed until the client leaves or
    the container stops, as one of the caller's streams (429 at their cap)."""
    tail = int_query(request, "tail")
    follow = bool_query(request, "follow")
    timestamps = bool_query(request, "timestamps")
    caller = caller_of(request)
    slot = request.app[STREAM_CAPS].hold(caller) if follow else contextlib.nullcontext()
    with slot:
        container = await request.app[CONTAINERS].get(request.match_info["name"], caller)
        chunks = request.app[DOCKER].container_output(
            container.id, follow=follow, tail=tail, timestamps=timestamps
        )
        return await _serve_output(request, chunks, follow=follow)


async def _serve_output(
    request: web.Request, chunks: AsyncGenerator[bytes], *, follow: bool
) -> web.StreamResponse:
    async with contextlib.aclosing(chunks):
        # Without follow, the first chunk before answering: a Docker failure is then an
        # ordinary error answer. With follow, the answer starts at once (a quiet container
        # may say nothing for hours).
        first = b"" if follow else await anext(chunks, b"")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            await response.write(first)
            await _relay(request, response, chunks)
        except ConnectionResetError:
            return response
        except ApiError as exc:  # Docker went away mid-stream: say so, in the text
            await response.write(f"\n[deepdockd: the log stream broke: {exc.message}]\n".encode())
    await response.write_eof()
    return response


async def _relay(
    request: web.Request, response: web.StreamResponse, chunks: AsyncGenerator[bytes]
) -> None:
    """Each chunk to the client as it comes; every CLIENT_CHECK_S without one, whether the
    client is still there (aiohttp does not tell a handler that its client left), so that a
    follow nobody reads does not hold a Docker connection for good."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait({pending}, timeout=CLIENT_CHECK_S)
            if not done:
                if request.transport is None or request.transport.is_closing():
                    return  # the client left
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                pending = None
                return
            pending = None
            await response.write(chunk)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, ApiError):
                await pending


# --- changes: Server-Sent Events ---


async def container_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each change of a container the caller may see, as it happens,
    with a heartbeat comment every HEARTBEAT_S; ``Last-Event-ID`` resumes where the view still
    holds the changes after it. A client that leaves CLIENT_BACKLOG changes unread is let go.
    One of the caller's streams (429 at their cap)."""
    if not request.app[CONFIG].live_view:
        raise ServiceUnavailable(
            "GET /events needs the live view, and this daemon runs with live_view = false",
            details={"setting": "live_view"},
        )
    caller = caller_of(request)
    with request.app[STREAM_CAPS].hold(caller):
        return await _events_for(request, caller)


async def _events_for(request: web.Request, caller: Caller) -> web.StreamResponse:
    after = last_event_id(request)
    # Like Kubernetes' watch timeoutSeconds: the stream ends then, and the client comes back
    # with Last-Event-ID.
    timeout_s = int_query(request, "timeout")
    view = request.app[VIEW]
    subscription, missed = view.subscribe(
        lambda change: caller.is_admin or change.owner == caller.user, after=after
    )
    containers, accounting = request.app[CONTAINERS], request.app[ACCOUNTING]
    stats = request.app[STATS]

    def event(change: Change) -> bytes:
        described = containers.describe(change.container)
        data = {
            "type": change.type,
            "container": answers.container(described, accounting, None, stats),
            "time": change.time,
        }
        return f"id: {change.id}\nevent: {change.type}\ndata: {json.dumps(data)}\n\n".encode()

    try:
        return await _serve_events(request, subscription, [event(c) for c in missed], event,
                                   timeout_s)  # fmt: skip
    finally:
        view.unsubscribe(subscription)


async def _serve_events(
    request: web.Request,
    subscription: Subscription,
    missed: list[bytes],
    event: Callable[[Change], bytes],
    timeout_s: int | None,
) -> web.StreamResponse:
    ends = None if timeout_s is None else time.monotonic() + timeout_s
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        await response.prepare(request)
        # A first line at once: proxies pass the answer on, the client knows it is open.
        await response.write(b": deepdockd events\n\n")
        transport = request.transport
        if transport is not None:
            subscription.on_drop = transport.abort
            _small_send_buffer(transport)
        for earlier in missed:
            await response.write(earlier)
        while ends is None or time.monotonic() < ends:
            wait_s = HEARTBEAT_S if ends is None else min(HEARTBEAT_S, ends - time.monotonic())
            try:
                async with asyncio.timeout(wait_s):
                    change = await subscription.changes.get()
            except TimeoutError:
                if ends is None or time.monotonic() < ends:
                    await response.write(b": heartbeat\n\n")
                continue
            if change is None:  # let go: it read too slowly, or the daemon stops
                break
            await response.write(event(change))
        await response.write_eof()
    except ConnectionError:
        pass  # the client left (or was let go)
    return response


def _small_send_buffer(transport: asyncio.BaseTransport) -> None:
    """A client that stops reading is found out after a little kernel buffer, not megabytes
    of it (on loopback the kernel would otherwise take several)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SEND_BUFFER)


# --- a pull's progress: NDJSON ---


async def stream_pull(
    request: web.Request, events: AsyncGenerator[PullProgress | PullResult]
) -> web.StreamResponse:
    """One line per progress event, then the result (or an error object) as the last line."""
    # Wait for the first event before answering, so that a pull that cannot even start
    # (bad registry, Docker down) is an ordinary error answer with its own status.
    item = await anext(events)
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    try:
        while True:
            if isinstance(item, PullResult):
                await _write_line(response, answers.pull_result(item))
                break
            await _write_line(response, answers.pull_progress(item))
            item = await anext(events)
    except ApiError as exc:
        await _write_line(response, answers.error(exc))
    except ConnectionResetError:
        log.info("client of %s %s went away; the pull goes on", request.method, request.path)
        return response
    await response.write_eof()
    return response


async def _write_line(response: web.StreamResponse, obj: dict[str, Any]) -> None:
    await response.write(json.dumps(obj).encode() + b"\n")

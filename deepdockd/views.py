"""Request handlers: each reads its input, calls one service, and answers JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from deepdockd import __version__, docs
from deepdockd.accounting import GpuAccounting
from deepdockd.auth import AUDIT_TARGET, caller_of
from deepdockd.containers.service import ContainerService, CreateRequest, ManagedContainer
from deepdockd.containers.ssh_server import bundled_server
from deepdockd.containers.view import Change
from deepdockd.dashboard import assets
from deepdockd.docker import DockerUnavailable, Image, PullProgress
from deepdockd.errors import (
    ApiError,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)
from deepdockd.exporter.service import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from deepdockd.fairshare.records import iso
from deepdockd.images.service import Credentials, PullResult
from deepdockd.metrics import GpuEntry, VisibleProcess
from deepdockd.schemas import (
    CreateContainerSchema,
    ExtendLeaseSchema,
    PullImageSchema,
    load_body,
)
from deepdockd.tokens import USER_NAME
from deepdockd.typedefs import (
    ACCOUNTING,
    CONFIG,
    CONTAINERS,
    DOCKER,
    EXPORTER,
    GPUS,
    IMAGES,
    METRICS,
    VIEW,
)

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
# Event streams: a comment this often keeps proxies from closing an idle one, and the kernel's
# send buffer of each is this small (bytes).
HEARTBEAT_S = 15.0
# How often a log stream that has nothing to send looks whether its client is still there.
CLIENT_CHECK_S = 2.0
SSE_SEND_BUFFER = 32 * 1024
# Far above any history (24 h of 1 s buckets is 86,400 points), far below what breaks islice.
MAX_QUERY_INT = 10_000_000
# The widest window of GET /metrics/gpus?step=: a leap year, in seconds.
MAX_STEP_S = 86_400 * 366
MIB = 1024 * 1024


async def healthz(request: web.Request) -> web.Response:
    """200 while Docker answers, 503 with the reason while it does not. No GPUs (no NVML)
    is a normal state: ``gpus`` says why, and the status stays 200."""
    sampler = request.app[GPUS]
    gpus: dict[str, Any] = {"ok": sampler.available, "count": len(sampler.gpus)}
    if sampler.available:
        gpus["driver_version"] = sampler.driver_version
    else:
        gpus["error"] = sampler.unavailable_reason
    bundle = bundled_server()
    ssh_server = {
        "setting": request.app[CONFIG].ssh_server,
        "bundled": bundle.version if bundle else None,
    }
    try:
        version = await request.app[DOCKER].version()
    except DockerUnavailable as exc:
        docker: dict[str, Any] = {"ok": False, "error": exc.message}
        body = {
            "status": "unavailable", "version": __version__, "docker": docker, "gpus": gpus,
            "ssh_server": ssh_server,
        }  # fmt: skip
        return web.json_response(body, status=503)
    docker = {"ok": True, "version": version.version, "api_version": version.api_version}
    body = {
        "status": "ok", "version": __version__, "docker": docker, "gpus": gpus,
        "ssh_server": ssh_server,
    }  # fmt: skip
    return web.json_response(body)


# --- documentation ---


async def openapi_yaml(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(docs.spec_yaml)
    return web.Response(body=body, content_type="application/yaml")


async def openapi_json(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(docs.spec_json)
    return web.Response(body=body, content_type="application/json")


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=docs.PAGE, content_type="text/html")


async def docs_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["file"]
    path = docs.swagger_file(name)
    if path is None:
        raise NotFound(f"no documentation file {name!r}")
    return web.FileResponse(path)


# --- the dashboard ---


async def dashboard_page(request: web.Request) -> web.Response:
    return await _dashboard_answer(request, assets.PAGE)


async def dashboard_file(request: web.Request) -> web.Response:
    return await _dashboard_answer(request, request.match_info["file"])


async def _dashboard_answer(request: web.Request, name: str) -> web.Response:
    asset = await asyncio.to_thread(assets.asset, name)
    if asset is None:
        raise NotFound(f"no dashboard file {name!r}")
    headers = {**assets.SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


# --- containers ---


async def list_containers(request: web.Request) -> web.Response:
    containers = await request.app[CONTAINERS].list_all(caller_of(request))
    accounting = request.app[ACCOUNTING]
    return web.json_response({"containers": [_container(c, accounting) for c in containers]})


async def get_container(request: web.Request) -> web.Response:
    container = await request.app[CONTAINERS].get(request.match_info["name"], caller_of(request))
    return web.json_response(_container(container, request.app[ACCOUNTING]))


async def create_container(request: web.Request) -> web.Response:
    body = await load_body(request, CreateContainerSchema())
    request[AUDIT_TARGET] = body["name"]
    caller = caller_of(request)
    create = CreateRequest(**body, owner=caller.user)
    container = await request.app[CONTAINERS].create(create, caller)
    return web.json_response(
        {
            "message": "container created",
            "id": container.short_id,
            "name": container.name,
            "ssh-port": container.ssh_port,
            "ports": _ports(container),
            "expires_at": iso(container.expires_at),
        },
        status=201,
    )


async def start_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CONTAINERS].start(name, caller_of(request))
    return web.json_response({"message": f"container '{name}' started"})


async def stop_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CONTAINERS].stop(name, caller_of(request))
    return web.json_response({"message": f"container '{name}' stopped"})


async def restart_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CONTAINERS].restart(name, caller_of(request))
    return web.json_response({"message": f"container '{name}' restarted"})


async def extend_lease(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await load_body(request, ExtendLeaseSchema())
    container = await request.app[CONTAINERS].extend(name, body["lease_hours"], caller_of(request))
    ends = iso(container.expires_at)
    return web.json_response(
        {
            "message": f"lease of container '{name}' "
            + (f"extended to {ends}" if ends else "removed: it has no end now"),
            "name": name,
            "expires_at": ends,
        }
    )


async def delete_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    force = _bool_query(request, "force")
    await request.app[CONTAINERS].remove(name, caller_of(request), force=force)
    return web.json_response({"message": f"container '{name}' removed"})


def _container(container: ManagedContainer, accounting: GpuAccounting) -> dict[str, Any]:
    running = container.state == "running"
    # What its processes use on the GPUs; unknown (null) without NVML.
    use = accounting.latest.container_use(container.id) if accounting.available else None
    return {
        "id": container.short_id,
        "name": container.name,
        "status": container.state,
        "image": [container.image],
        "image_id": container.image_id,
        "created": container.created,
        "ssh-port": container.published_ssh_port if running else None,
        "gpus": [str(i) for i in container.gpu_indices],
        "gpu_uuids": container.gpu_uuids,
        "owner": container.owner,
        "ssh_user": container.ssh_user,
        "ssh_host_keys": [
            {"type": key.type, "public_key": key.public_key, "fingerprint": key.fingerprint}
            for key in container.ssh_host_keys
        ],
        "ports": _ports(container),
        "memory_mb": container.memory_mb,
        "cpus": container.cpus,
        "shm_size_mb": container.shm_size_mb,
        "home_volume": container.home_volume,
        "gpu_memory_used_mib": use.memory_used_mib if use is not None else None,
        "gpu_utilization": use.utilization if use is not None else None,
        "expires_at": iso(container.expires_at),
        "stopped_reason": container.stopped_reason,
        "idle_reclaim": container.idle_reclaim,
    }


def _ports(container: ManagedContainer) -> dict[str, int]:
    return {str(inside): outside for inside, outside in container.ports.items()}


async def container_logs(request: web.Request) -> web.StreamResponse:
    """The container's output as text; with ``follow``, streamed until the client leaves or
    the container stops."""
    name = request.match_info["name"]
    tail = _int_query(request, "tail")
    follow = _bool_query(request, "follow")
    timestamps = _bool_query(request, "timestamps")
    container = await request.app[CONTAINERS].get(name, caller_of(request))
    chunks = request.app[DOCKER].container_output(
        container.id, follow=follow, tail=tail, timestamps=timestamps
    )
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


# --- events ---


async def container_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each change of a container the caller may see, as it happens,
    with a heartbeat comment every HEARTBEAT_S; ``Last-Event-ID`` resumes where the view still
    holds the changes after it. A client that leaves CLIENT_BACKLOG changes unread is let go."""
    if not request.app[CONFIG].live_view:
        raise ServiceUnavailable(
            "GET /events needs the live view, and this daemon runs with live_view = false",
            details={"setting": "live_view"},
        )
    caller = caller_of(request)
    after = _last_event_id(request)
    # Like Kubernetes' watch timeoutSeconds: the stream ends then, and the client comes back
    # with Last-Event-ID.
    timeout_s = _int_query(request, "timeout")
    ends = None if timeout_s is None else time.monotonic() + timeout_s
    view = request.app[VIEW]
    accounting = request.app[ACCOUNTING]
    containers = request.app[CONTAINERS]
    subscription, missed = view.subscribe(
        lambda change: caller.is_admin or change.owner == caller.user, after=after
    )
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        # A first line at once: proxies pass the answer on, the client knows it is open.
        await response.write(b": deepdockd events\n\n")
        transport = request.transport
        if transport is not None:
            subscription.on_drop = transport.abort
            _small_send_buffer(transport)
        for earlier in missed:
            await response.write(_event(earlier, containers, accounting))
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
            await response.write(_event(change, containers, accounting))
        await response.write_eof()
    except ConnectionError:
        pass  # the client left (or was let go)
    finally:
        view.unsubscribe(subscription)
    return response


def _last_event_id(request: web.Request) -> int | None:
    text = request.headers.get("Last-Event-ID", "")
    if not text:
        return None
    if not text.isdecimal() or len(text) > 18:
        raise InvalidInput(
            "Last-Event-ID: must be the id of an event this stream sent (a whole number)",
            details={"field": "Last-Event-ID"},
        )
    return int(text)


def _event(change: Change, containers: ContainerService, accounting: GpuAccounting) -> bytes:
    data = {
        "type": change.type,
        "container": _container(containers.describe(change.container), accounting),
        "time": change.time,
    }
    return f"id: {change.id}\nevent: {change.type}\ndata: {json.dumps(data)}\n\n".encode()


def _small_send_buffer(transport: asyncio.BaseTransport) -> None:
    """A client that stops reading is found out after a little kernel buffer, not megabytes
    of it (on loopback the kernel would otherwise take several)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SEND_BUFFER)


# --- volumes ---


async def list_volumes(request: web.Request) -> web.Response:
    homes = await request.app[CONTAINERS].homes.list_all(caller_of(request))
    return web.json_response(
        {
            "volumes": [
                {
                    "name": h.name,
                    "owner": h.owner,
                    "user_name": h.user_name,
                    "uid": h.uid,
                    "containers": list(h.containers),
                    "created": h.created,
                }
                for h in homes
            ]
        }
    )


async def delete_volume(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    request[AUDIT_TARGET] = name
    await request.app[CONTAINERS].homes.remove(name, caller_of(request))
    return web.json_response({"message": f"volume '{name}' removed"})


# --- metrics ---


async def get_quota(request: web.Request) -> web.Response:
    caller = caller_of(request)
    user = request.query.get("user", caller.user)
    if not USER_NAME.fullmatch(user):
        raise InvalidInput(f"user: {user!r} is not a user name", details={"field": "user"})
    limits, use = await request.app[CONTAINERS].quota(user, caller)
    return web.json_response(
        {
            "user": user,
            "limits": limits.as_answer(),
            "used": use.as_answer(),
            "caller": {"user": caller.user, "role": caller.role},
        }
    )


async def host_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    host = await metrics.host()
    return web.json_response(
        {
            "gpu_count": metrics.gpu_count,
            "ram_total_mb": host.ram_total_mb,
            "ram_available_mb": host.ram_available_mb,
            "cpu_cores": host.cpu_cores,
            "cpu_logical_cores": host.cpu_logical_cores,
            "load_average": list(host.load_average),
        }
    )


async def gpu_metrics(request: web.Request) -> web.Response:
    """Every GPU's time series: ``{"0": [point, ...], ...}``; ``since`` and ``limit`` cut it,
    ``step`` merges it into windows of that many seconds."""
    since = _time_query(request, "since")
    limit = _int_query(request, "limit")
    step_s = _int_query(request, "step", maximum=MAX_STEP_S)
    history = await request.app[METRICS].gpu_history(since, limit, step_s)
    # The points are stored encoded: the answer is their JSON, joined.
    parts = [
        b'"%d":[%s]' % (index, b",".join(p.json for p in points))
        for index, points in history.items()
    ]
    return web.Response(body=b"{" + b",".join(parts) + b"}", content_type="application/json")


async def prometheus_metrics(request: web.Request) -> web.Response:
    if not caller_of(request).is_admin:
        raise Forbidden(
            "GET /metrics/prometheus names every user's containers and processes: it answers"
            " admin tokens only (give the Prometheus server one, in a credentials_file)"
        )
    body = await request.app[EXPORTER].scrape()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def list_gpus(request: web.Request) -> web.Response:
    entries = await request.app[METRICS].gpus(caller_of(request))
    return web.json_response({"count": len(entries), "gpus": [_gpu(e) for e in entries]})


def _gpu(entry: GpuEntry) -> dict[str, Any]:
    return {
        "index": entry.info.index,
        "uuid": entry.info.uuid,
        "name": entry.info.name,
        "memory_total_mib": entry.info.memory_total_mib,
        "power_limit_w": entry.info.power_limit_w,
        "containers": entry.holders,
        "held": entry.held,
        "health": "ok" if entry.error is None else entry.error,
        "points": entry.points,
        "memory_reserved_mib": entry.memory_reserved_mib,
        "processes": (
            [_gpu_process(p) for p in entry.processes] if entry.processes is not None else None
        ),
    }


def _gpu_process(process: VisibleProcess) -> dict[str, Any]:
    use = process.use
    if not process.whole:
        return {"memory_used_mib": use.memory_used_mib, "kind": use.kind}
    return {
        "pid": use.pid,
        "kind": use.kind,
        "container": use.container,
        "owner": use.owner,
        "command": use.command,
        "memory_used_mib": use.memory_used_mib,
        "sm_utilization": use.sm_utilization,
        "stray": use.stray,
    }


# --- images ---


async def list_images(request: web.Request) -> web.Response:
    images = await request.app[IMAGES].list_images(caller_of(request))
    return web.json_response({"count": len(images), "images": [_image(i) for i in images]})


async def pull_image(request: web.Request) -> web.StreamResponse:
    """The seed's answer at the end; or, for ``Accept: application/x-ndjson``, one line per
    progress event and then that answer (or an error object) as the last line."""
    body = await load_body(request, PullImageSchema())
    request[AUDIT_TARGET] = body["repo_tag"]
    credentials = Credentials(**body["auth"]) if "auth" in body else None
    events = request.app[IMAGES].pull(body["repo_tag"], credentials, caller=caller_of(request))
    async with contextlib.aclosing(events):
        if NDJSON in request.headers.get("Accept", ""):
            return await _stream_pull(request, events)
        async for item in events:
            if isinstance(item, PullResult):
                return web.json_response(_pull_result(item))
    raise ApiError("the pull ended without a result")


async def delete_image(request: web.Request) -> web.Response:
    image_ref = request.match_info["image_ref"]
    force = _bool_query(request, "force")
    answer = await request.app[IMAGES].remove(image_ref, caller_of(request), force=force)
    return web.json_response(
        {
            "message": f"Image '{image_ref}' removed successfully.",
            "untagged": [a["Untagged"] for a in answer if "Untagged" in a],
            "deleted": [a["Deleted"] for a in answer if "Deleted" in a],
        }
    )


def _image(image: Image) -> dict[str, Any]:
    return {
        "id": image.short_id,
        "tag": image.tags[0] if image.tags else "<none>:<none>",
        "digest": image.digests[0] if image.digests else None,
        "size_mb": _mib(image.size_bytes),
        "tags": list(image.tags),
        "created": image.created,
    }


def _pull_result(result: PullResult) -> dict[str, Any]:
    return {
        "message": f"Image '{result.reference}' pulled successfully.",
        "id": result.image.short_id,
        "tags": list(result.image.tags),
        "size_mb": _mib(result.image.size_bytes),
    }


def _progress(event: PullProgress) -> dict[str, Any]:
    return {
        "status": event.status,
        "layer": event.layer,
        "current": event.current,
        "total": event.total,
    }


async def _stream_pull(
    request: web.Request, events: AsyncGenerator[PullProgress | PullResult]
) -> web.StreamResponse:
    # Wait for the first event before answering, so that a pull that cannot even start
    # (bad registry, Docker down) is an ordinary error answer with its own status.
    item = await anext(events)
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    try:
        while True:
            if isinstance(item, PullResult):
                await _write_line(response, _pull_result(item))
                break
            await _write_line(response, _progress(item))
            item = await anext(events)
    except ApiError as exc:
        error = {"code": exc.code, "message": exc.message, "details": exc.details}
        await _write_line(response, {"error": error})
    except ConnectionResetError:
        log.info("client of %s %s went away; the pull goes on", request.method, request.path)
        return response
    await response.write_eof()
    return response


async def _write_line(response: web.StreamResponse, obj: dict[str, Any]) -> None:
    await response.write(json.dumps(obj).encode() + b"\n")


def _bool_query(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput(f"{name}: must be true or false", details={"field": name})
    return value in ("true", "1")


def _time_query(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{name}: {text!r} is not an ISO 8601 timestamp (e.g. 2025-12-01T19:02:30+00:00)",
            details={"field": name},
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _int_query(request: web.Request, name: str, *, maximum: int = MAX_QUERY_INT) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    # The length first: int() refuses (ValueError) a string of more than 4,300 digits.
    if not text.isdecimal() or len(text) > len(str(maximum)) or not 1 <= int(text) <= maximum:
        raise InvalidInput(
            f"{name}: must be a whole number from 1 to {maximum}", details={"field": name}
        )
    return int(text)


def _mib(size_bytes: int) -> float:
    return round(size_bytes / MIB, 2)

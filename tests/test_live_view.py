"""The live view (issue 18) on the rig's real dockerd: lists answered from a view that Docker's
event stream keeps current, read-your-writes through the API, changes made behind deepdockd's
back within a second, a dockerd restart, and GET /events to admins and users."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from deepdockd.api.app import create_app
from deepdockd.api.keys import VIEW
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory, body, created
from tests.support.checking_relay import exchange_problems
from tests.support.daemon import RunningDaemon
from tests.support.rig import Rig
from tests.support.users import users_tokens

# What "shows within a second" allows, measured from the moment the Docker CLI returned.
WITHIN_S = 1.0


@pytest.fixture
def view_config(config: Config, ssh_ports: tuple[int, int]) -> Config:
    return dataclasses.replace(config, ssh_port_range=ssh_ports)


@pytest.fixture
async def client(aiohttp_client: ClientFactory, view_config: Config, cleanup: None) -> Client:
    """A daemon with auth off, its live view running (the app's startup starts it)."""
    return await aiohttp_client(create_app(view_config))


def throwaway(name: str, **extra: Any) -> dict[str, Any]:
    """A create body whose container needs no home volume."""
    return body(name, persistent_home=False, **extra)


async def statuses(client: Client) -> dict[str, str]:
    response = await client.get("/containers")
    assert response.status == 200
    return {c["name"]: c["status"] for c in (await response.json())["containers"]}


async def seconds_until(condition: Callable[[], Awaitable[bool]], limit_s: float = 10) -> float:
    """How long until ``condition`` holds, polled every 10 ms (fails past ``limit_s``)."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"not within {limit_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def wait_fresh(client: Client) -> None:
    view = client.app[VIEW]

    async def fresh() -> bool:
        return view.fresh

    await seconds_until(fresh)


# --- the view ---


async def test_changes_made_behind_deepdockds_back_show_within_a_second(
    client: Client, rig: Rig
) -> None:
    await created(client, **throwaway("behind"))
    await wait_fresh(client)
    lags = {}
    for command, expected in (
        (["stop", "--time", "0", "behind"], "exited"),
        (["start", "behind"], "running"),
        (["rm", "--force", "behind"], None),
    ):
        rig.docker(*command)

        async def shown(expected: str | None = expected) -> bool:
            return (await statuses(client)).get("behind") == expected

        lags[command[0]] = await seconds_until(shown)

    assert all(lag < WITHIN_S for lag in lags.values()), lags


async def test_every_write_through_the_api_shows_in_the_next_read(client: Client) -> None:
    """Read-your-writes: 100 creates, each followed at once by a list and a get; 100 removes,
    each followed by a list; 4 rounds of 25, five at a time."""
    await wait_fresh(client)
    misses: list[str] = []

    async def create_then_read(name: str) -> None:
        await created(client, **throwaway(name))
        listed = await statuses(client)
        got = await client.get(f"/containers/{name}")
        if listed.get(name) != "running" or got.status != 200:
            misses.append(f"create {name}: listed {listed.get(name)}, get {got.status}")

    async def remove_then_read(name: str) -> None:
        removed = await client.delete(f"/containers/{name}?force=true")
        assert removed.status == 200
        if name in await statuses(client):
            misses.append(f"remove {name}: still listed")

    for round_ in range(4):
        names = [f"ryw{round_}-{i:02d}" for i in range(25)]
        for first in range(0, 25, 5):
            await asyncio.gather(*(create_then_read(n) for n in names[first : first + 5]))
        for first in range(0, 25, 5):
            await asyncio.gather(*(remove_then_read(n) for n in names[first : first + 5]))

    assert misses == []
    assert await statuses(client) == {}


async def test_a_container_removed_while_docker_restarts_is_gone_once_docker_answers(
    client: Client, rig: Rig
) -> None:
    await created(client, **throwaway("survivor"))
    await created(client, **throwaway("doomed"))
    await wait_fresh(client)

    rig.stop_docker()
    try:

        async def unavailable() -> bool:  # stale once the stream broke: reads go to Docker
            return (await client.get("/containers")).status == 503

        await seconds_until(unavailable, limit_s=WITHIN_S)
    finally:
        rig.start_docker()
    rig.docker("rm", "--force", "doomed")  # as soon as Docker answers

    async def gone() -> bool:
        response = await client.get("/containers")
        if response.status != 200:  # Docker answers, but the view may still be stale
            return False
        names = [c["name"] for c in (await response.json())["containers"]]
        return "doomed" not in names and "survivor" in names

    lag = await seconds_until(gone)

    assert lag < WITHIN_S, lag

    async def fresh_again() -> bool:
        return client.app[VIEW].fresh

    await seconds_until(fresh_again)


# --- GET /events ---


# The figures an event's container carries as they are when the event is sent (the cgroup's,
# the GPUs', the disk's), not as they were at the change: two subscribers, or a replay with
# Last-Event-ID, may see them move while everything the change is about stays the same.
SAMPLED_KEYS = (
    "cpu_percent", "memory_used_mb", "memory_limit_mb", "pids",
    "gpu_memory_used_mib", "gpu_utilization", "disk_used_mb",
)  # fmt: skip


def without_sampled(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**e, "container": {k: v for k, v in e["container"].items() if k not in SAMPLED_KEYS}}
        for e in events
    ]


class EventReader:
    """A client of GET /events: the changes it received, parsed, as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    event = json.loads(fields["data"])
                    self.events.append({"id": int(fields["id"]), "event": fields["event"], **event})
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value

    def of(self, name: str) -> list[str]:
        return [e["type"] for e in self.events if e["container"]["name"] == name]

    async def close(self) -> None:
        self.task.cancel()
        self.response.close()


async def open_events(
    client: Client, token: str | None = None, last_event_id: int | None = None
) -> EventReader:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await client.get("/events", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    return EventReader(response)


async def test_events_reach_the_admin_all_and_each_user_their_own_once_in_order(
    aiohttp_client: ClientFactory, view_config: Config, cleanup: None
) -> None:
    secured = dataclasses.replace(view_config, auth=True)
    tokens = users_tokens(TokenStore(secured.state_dir))
    client = await aiohttp_client(create_app(secured))
    await wait_fresh(client)
    readers = {who: await open_events(client, tokens[who]) for who in ("admin", "alice", "bob")}

    def as_(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[who]}"}

    for who, name in (("alice", "alices"), ("bob", "bobs")):
        made = await client.post("/containers/create", json=throwaway(name), headers=as_(who))
        assert made.status == 201, await made.text()
    stopped = await client.post("/containers/alices/stop", headers=as_("alice"))
    assert stopped.status == 200

    async def all_told() -> bool:
        return "stopped" in readers["admin"].of("alices") and "started" in readers["bob"].of("bobs")

    await seconds_until(all_told)
    await asyncio.sleep(0.5)  # anything that would come twice would have come by now

    admin, alice, bob = (readers[w].events for w in ("admin", "alice", "bob"))
    for events in (admin, alice, bob):
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids)), ids  # each once, in order
        assert all(e["event"] == e["type"] for e in events)
    assert {e["container"]["name"] for e in alice} == {"alices"}
    assert {e["container"]["name"] for e in bob} == {"bobs"}
    for own, name in ((alice, "alices"), (bob, "bobs")):
        seen_by_admin = [e for e in admin if e["container"]["name"] == name]
        assert without_sampled(seen_by_admin) == without_sampled(own)
    assert readers["alice"].of("alices")[:2] == ["created", "started"]
    # A stop ends in "died" and "stopped", in the Engine's order (docs/api.md): Docker
    # 20.10 (API 1.41) tells "die" first, Docker 26 (API 1.45) "stop".
    assert readers["alice"].of("alices")[-2:] in (["died", "stopped"], ["stopped", "died"])
    assert readers["bob"].of("bobs") == ["created", "started"]
    last_shown = [e["container"] for e in alice][-1]
    assert last_shown["status"] == "exited"
    assert last_shown["owner"] == "alice"

    # Back with Last-Event-ID: what came after it, then the live ones.
    resumed = await open_events(client, tokens["alice"], last_event_id=alice[1]["id"])
    await seconds_until(lambda: _has(resumed, len(alice) - 2))
    assert without_sampled(resumed.events) == without_sampled(alice[2:])
    for reader in (*readers.values(), resumed):
        await reader.close()


async def _has(reader: EventReader, count: int) -> bool:
    return len(reader.events) >= count


async def test_a_client_that_stops_reading_is_let_go(client: Client, rig: Rig) -> None:
    await created(client, **throwaway("busy"))
    await wait_fresh(client)
    view = client.app[VIEW]
    server = client.server
    # A raw client with a small receive window, which reads the answer's head and no more.
    with socket.socket() as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.settimeout(5)
        stuck.connect((server.host, server.port))
        stuck.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")

        async def subscribed() -> bool:
            return view.subscribers == 1

        await seconds_until(subscribed)
        head = stuck.recv(4096)
        # Changes, fast: each update of the container's CPU shares is an event.
        updates = 0
        connector = aiohttp.UnixConnector(path=str(rig.docker_socket))
        async with aiohttp.ClientSession(connector=connector) as docker:
            while view.subscribers and updates < 3000:
                shares = {"CpuShares": 512 + updates % 2}
                async with docker.post("http://docker/containers/busy/update", json=shares) as r:
                    assert r.status == 200, await r.text()
                updates += 1

        async def let_go() -> bool:
            return view.subscribers == 0

        await seconds_until(let_go)
        while _recv(stuck):  # what the kernel had taken for it, then the cut connection
            pass

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert updates < 3000  # let go long before: the daemon holds at most 256 unread changes
    assert (await client.get("/containers/busy")).status == 200  # the others go on


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionResetError, TimeoutError):
        return b""


def test_a_stop_ends_open_event_streams_at_once(
    rig_daemon: Callable[..., RunningDaemon],
) -> None:
    daemon = rig_daemon()
    host, port = daemon.base.removeprefix("http://").split(":")
    asked = b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as stream:
        stream.sendall(asked)
        head = stream.recv(4096)
        started = time.monotonic()
        status, log = daemon.stop()
        took_s = time.monotonic() - started
        rest = stream.recv(4096)

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    problems = exchange_problems(daemon.base, asked, head + rest)
    assert not problems, "\n".join(problems)  # held to the strict spec, frames to Event
    assert status == 0, log[-2000:]
    assert took_s < 5, took_s  # not shutdown_timeout (30 s): the stream ended with the stop
    assert rest.endswith(b"0\r\n\r\n")  # the chunked answer ended properly

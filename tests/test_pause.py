"""Pause and unpause on the rig: a paused container's processes make no progress and go on
after an unpause, it keeps its GPU (another create is refused), it shows `paused` in the list,
the single get and GET /events, it is another user's 404; the idle rule stops a paused
container whose GPU looks busy, warning first (in the audit log: a frozen container runs no
exec); a lease that ends stops a paused container.

No test waits on minutes: the configs give durations of seconds, as fractions of minutes and
hours."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.sync_api import Browser, expect

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests import test_dashboard as dashboard
from tests.support.api import ClientFactory
from tests.support.docker_state import clear_namespace
from tests.support.gpus import sim_gpu
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig
from tests.support.ssh import ssh
from tests.support.users import People, users_tokens

AUDIT = "deepdockd.audit"
DEEPDOCK = Path(sys.executable).parent / "deepdock"
# The image's command: a counter that the container's processes move ten times a second.
COUNTER = [
    "sh",
    "-c",
    'i=0; while :; do i=$((i+1)); echo "count=$i;" >/tmp/counter; sleep 0.1; done',
]

MakePeople = Callable[..., Awaitable[People]]
# The dashboard's daemon and browser (tests/test_dashboard.py), and what its daemon needs.
browser = dashboard.browser
server = dashboard.server
hostile_process = dashboard.hostile_process
slow_registry = dashboard.slow_registry


@pytest.fixture
async def daemon(
    aiohttp_client: ClientFactory,
    config: Config,
    sim_gpus: Callable[..., Path],
    rig: Rig,
    ssh_ports: tuple[int, int],
    gpu_stem: str,
) -> Any:
    """Factory: a daemon with auth on (admin, alice, bob), ``gpus`` simulated GPUs (each at
    100 % utilization in every sample: never idle by its readings) and these config changes."""

    async def make(*, gpus: int = 1, **changes: Any) -> People:
        sim_gpus(*(sim_gpu(i, stem=gpu_stem, utilization=[100]) for i in range(gpus)))
        made = replace(config, auth=True, ssh_port_range=ssh_ports, **changes)
        return People(
            await aiohttp_client(create_app(made)), users_tokens(TokenStore(made.state_dir))
        )

    yield make
    clear_namespace(rig, config.namespace)


def box(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw"} | extra


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def counter_of(rig: Rig, name: str) -> int:
    """The counter's last value, copied out of the container (docker cp works on a paused
    container: it reads the file system, runs nothing inside)."""
    found = re.search(r"count=(\d+);", rig.docker("cp", f"{name}:/tmp/counter", "-"))
    assert found, f"no counter in {name}"
    return int(found[1])


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def status_of(people: People, who: str, name: str) -> dict[str, Any]:
    status, answer = await people.call(who, "GET", f"/containers/{name}")
    assert status == 200, answer
    return dict(answer)


async def until_status(people: People, name: str, wanted: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await status_of(people, "alice", name))
        return bool(seen["status"] == wanted)

    await until(reached, f"{name} never became {wanted}")
    return seen


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == AUDIT]


class Events:
    """alice's GET /events, read as it comes: (type, status) of each change of one container."""

    def __init__(self, response: aiohttp.ClientResponse, name: str) -> None:
        self.response = response
        self.name = name
        self.seen: list[tuple[str, str]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                change = json.loads(line.removeprefix("data: "))
                if change["container"]["name"] == self.name:
                    self.seen.append((change["type"], change["container"]["status"]))

    async def close(self) -> None:
        self.task.cancel()
        self.response.close()


# --- the life cycle ---


async def test_a_paused_container_stops_counting_keeps_its_gpu_and_shows_paused(
    daemon: MakePeople, rig: Rig
) -> None:
    people = await daemon(gpus=1)
    name = unique("paused")
    status, created = await people.call(
        "alice", "POST", "/containers/create", box(name, gpu_ids=[0], command=COUNTER)
    )
    assert status == 201, created
    response = await people.client.get(
        "/events", headers={"Authorization": f"Bearer {people.tokens['alice']}"}
    )
    assert response.status == 200
    events = Events(response, name)
    try:

        async def counting() -> bool:
            return counter_of(rig, name) > 5

        await until(counting, "the counter never moved")

        # Another user may neither pause it nor learn that it exists.
        for action in ("pause", "unpause"):
            status, answer = await people.call("bob", "POST", f"/containers/{name}/{action}")
            assert (status, answer["error"]["code"]) == (404, "not_found"), answer
        status, answer = await people.call("alice", "POST", f"/containers/{name}/pause")
        assert (status, answer) == (200, {"message": f"container '{name}' paused"})

        # Frozen: the counter stays where it was while time passes.
        frozen_at = counter_of(rig, name)
        assert rig.docker("inspect", "--format", "{{.State.Status}}", name).strip() == "paused"
        await asyncio.sleep(1.5)  # fifteen ticks of the counter, were it running
        assert counter_of(rig, name) == frozen_at
        shown = await status_of(people, "alice", name)
        assert shown["status"] == "paused"
        assert shown["ssh-port"] == created["ssh-port"]  # still its own, shown
        _, listed = await people.call("alice", "GET", "/containers")
        assert [(c["name"], c["status"]) for c in listed["containers"]] == [(name, "paused")]
        # Paused again: nothing changes, and the answer says so as a pause.
        assert (await people.call("alice", "POST", f"/containers/{name}/pause"))[0] == 200

        # Its GPU stays held: bob's create that asks for it is refused, the admin sees who.
        status, answer = await people.call(
            "bob", "POST", "/containers/create", box(unique("bob"), gpu_ids=[0])
        )
        assert (status, answer["error"]["code"]) == (409, "gpu_busy"), answer
        _, gpus = await people.call("admin", "GET", "/gpus")
        assert (gpus["gpus"][0]["held"], gpus["gpus"][0]["containers"]) == (True, [name])

        status, answer = await people.call("alice", "POST", f"/containers/{name}/unpause")
        assert (status, answer) == (200, {"message": f"container '{name}' unpaused"})
        assert (await status_of(people, "alice", name))["status"] == "running"
        # Resumed where it was: the user reads it over SSH, and it moves again.
        port = created["ssh-port"]

        async def moved_on() -> bool:
            login = await asyncio.to_thread(ssh, port, "u1", "pw", "cat /tmp/counter")
            assert login.returncode == 0, login.stderr
            value = int(re.fullmatch(r"count=(\d+);\n", login.stdout)[1])  # type: ignore[index]
            return value > frozen_at + 5

        await until(moved_on, "the counter did not go on after the unpause")
        status, answer = await people.call("alice", "POST", f"/containers/{name}/unpause")
        assert (status, answer["error"]["code"]) == (409, "container_not_paused"), answer
        assert answer["error"]["details"] == {"name": name, "state": "running"}

        # The events: paused, then unpaused, each with the container as it was then.
        async def told() -> bool:
            return ("unpaused", "running") in events.seen

        await until(told, f"no unpaused event: {events.seen}", deadline_s=10)
        assert [e for e in events.seen if e[0] in ("paused", "unpaused")] == [
            ("paused", "paused"),
            ("unpaused", "running"),
        ]
    finally:
        await events.close()

    # A paused container stops at a stop, and a stopped one cannot be paused.
    assert (await people.call("alice", "POST", f"/containers/{name}/pause"))[0] == 200
    status, answer = await people.call("alice", "POST", f"/containers/{name}/stop")
    assert status == 200, answer
    assert (await status_of(people, "alice", name))["status"] == "exited"
    status, answer = await people.call("alice", "POST", f"/containers/{name}/pause")
    assert (status, answer["error"]["code"]) == (409, "container_not_running"), answer
    assert "start it first" in answer["error"]["message"]
    # Stopped, it holds its GPU no more.
    status, answer = await people.call(
        "bob", "POST", "/containers/create", box(unique("bob"), gpu_ids=[0])
    )
    assert status == 201, answer


# --- fair share ---


async def test_the_idle_rule_stops_a_paused_container_whose_gpu_looks_busy(
    daemon: MakePeople, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    idle_s = 3
    people = await daemon(
        gpus=2, gpu_sample_interval=0.25,
        idle_gpu_minutes=idle_s / 60, stop_warning_minutes=1.5 / 60,
    )  # fmt: skip
    paused, busy = unique("paused"), unique("busy")
    for name, gpu in ((paused, 0), (busy, 1)):
        status, answer = await people.call(
            "alice", "POST", "/containers/create", box(name, gpu_ids=[gpu])
        )
        assert status == 201, answer
    assert (await people.call("alice", "POST", f"/containers/{paused}/pause"))[0] == 200
    paused_at = time.monotonic()

    stopped = await until_status(people, paused, "exited")

    assert time.monotonic() - paused_at >= idle_s
    assert re.fullmatch(
        r"idle GPUs: paused for \d+ s, holding GPU 0 \(idle_gpu_minutes is 0\.05\)",
        stopped["stopped_reason"],
    ), stopped["stopped_reason"]
    audit = audit_lines(caplog)
    warned = [
        i for i, line in enumerate(audit)
        if line.startswith(f"user=deepdockd action=warn target={paused} outcome=skipped")
        and "paused" in line
    ]  # fmt: skip
    stops = [
        i for i, line in enumerate(audit)
        if line.startswith(f"user=deepdockd action=stop target={paused} outcome=stopped")
    ]  # fmt: skip
    assert warned, audit
    assert stops, audit
    assert warned[0] < stops[0], audit
    # Its GPU at 100 % all along: the running one beside it, on a GPU just as busy, runs on.
    container = await status_of(people, "alice", busy)
    assert (container["status"], container["stopped_reason"]) == ("running", None)


async def test_a_lease_that_ends_stops_a_paused_container(
    daemon: MakePeople, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    people = await daemon(gpus=1, default_lease_hours=1, stop_warning_minutes=0)
    name = unique("lease")
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(name, gpu_ids=[0])
    )
    assert status == 201, answer
    assert (await people.call("alice", "POST", f"/containers/{name}/pause"))[0] == 200
    # Its end brought forward to a second from now, while it is paused.
    status, answer = await people.call(
        "alice", "POST", f"/containers/{name}/extend", {"lease_hours": 1 / 3600}
    )
    assert status == 200, answer

    stopped = await until_status(people, name, "exited")

    assert stopped["stopped_reason"] == f"lease ended at {answer['expires_at']}"
    assert rig.docker("inspect", "--format", "{{.State.Status}}", name).strip() == "exited"
    assert (
        f'user=deepdockd action=stop target={name} outcome=stopped owner=alice reason="lease '
        f'ended at {answer["expires_at"]}"' in audit_lines(caplog)
    )


# --- the terminal client ---


async def test_deepdock_pauses_lists_paused_and_unpauses(
    daemon: MakePeople, tmp_path: Path
) -> None:
    people = await daemon(gpus=0)
    name = unique("cli")
    status, answer = await people.call("alice", "POST", "/containers/create", box(name))
    assert status == 201, answer
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "USER": "alice", "COLUMNS": "200"}

    async def deepdock(*args: str, stdin: str = "") -> tuple[int | None, str, str]:
        """The client as a person runs it, while this test's loop serves the daemon."""
        run = await asyncio.create_subprocess_exec(
            str(DEEPDOCK), *args, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(run.communicate(stdin.encode()), timeout=60)
        return run.returncode, out.decode(), err.decode()

    url = str(people.client.make_url("")).rstrip("/")
    done = await deepdock("login", url, "--name", "here", stdin=f"{people.tokens['alice']}\n")
    assert done[0] == 0, done

    assert await deepdock("pause", name) == (0, f"{name} paused\n", "")
    code, listed, _ = await deepdock("ls")
    assert code == 0
    assert re.search(rf"^{name}\s+paused\s", listed, re.MULTILINE), listed
    code, _, said = await deepdock("ssh", name)
    assert code == 1
    assert f"is paused: unpause it with deepdock unpause {name}" in said
    assert await deepdock("unpause", name) == (0, f"{name} unpaused\n", "")
    code, listed, _ = await deepdock("ls")
    assert re.search(rf"^{name}\s+running\s", listed, re.MULTILINE), listed
    code, _, said = await deepdock("unpause", name)
    assert code == 1
    assert "not paused" in said


# --- the dashboard ---


def test_the_dashboard_pauses_and_resumes_a_container(
    browser: Browser, server: dashboard.Server
) -> None:
    name = unique("ui")
    status, answer = server.api(
        "POST", "/containers/create", "alice",
        {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "alice", "password": "pw-123456"},
    )  # fmt: skip
    assert status == 201, answer
    tab = dashboard.signed_in(browser, server, "alice")
    page = tab.page
    tab.view("Containers")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))

    row.get_by_role("button", name=f"Pause {name}", exact=True).click()

    expect(row.locator(".status")).to_have_text("paused")
    assert server.api("GET", f"/containers/{name}", "alice")[1]["status"] == "paused"
    # Paused, it may be resumed or stopped (not started: it runs, frozen).
    expect(row.get_by_role("button", name=f"Stop {name}", exact=True)).to_be_visible()
    expect(row.get_by_role("button", name=f"Start {name}", exact=True)).to_have_count(0)
    tab.screenshot("paused-container")
    row.get_by_role("button", name=f"Resume {name}", exact=True).click()
    expect(row.locator(".status")).to_have_text("running")
    expect(row.get_by_role("button", name=f"Pause {name}", exact=True)).to_be_visible()
    assert server.api("GET", f"/containers/{name}", "alice")[1]["status"] == "running"
    assert tab.foreign_requests(server.base) == []

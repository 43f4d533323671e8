"""Usage history end to end: containers hold simulated GPUs for known times, and GET /usage
(and the Prometheus counter) say as much, within one sampling interval per container; each
user sees their own rows, an admin everyone's; the numbers survive a SIGKILL and a restart.

The containers are labelled as a create labels them (owner, GPUs), in the test's namespace,
on the rig's Docker; the GPUs are the simulated NVML's, with a constant utilization so that
busy time is known too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore
from deepdockd.usage.store import FILE_NAME

from tests.support.api import Client, ClientFactory
from tests.support.daemon import RunningDaemon, http_json, http_request
from tests.support.docker_state import clear_namespace
from tests.support.gpus import NVML_SIM_LIBRARY, sim_gpu
from tests.support.rig import BUSYBOX_IMAGE, Rig
from tests.support.users import users_tokens

SAMPLE_S = 0.05  # gpu_sample_interval
FLUSH_S = 0.1  # usage_flush_interval
# What the GPU busy fractions are: constant utilizations of the simulated GPUs.
UTILIZATION = {0: 50, 1: 100, 2: 20}
# Beyond one sampling interval: how late a recording pass may come on a loaded machine (its
# interval, billed to whoever runs at its end, is then that much longer). 0.3 s was passed by
# 7 ms on a machine twice as slow as the one it was set on.
PASS_SLACK_S = 0.6
DEEPDOCK = Path(sys.executable).parent / "deepdock"  # the client's console script


@dataclass
class Run:
    """When a container ran, as the test saw it: it started between ``started`` and
    ``up`` and stopped between ``killing`` and ``dead``, where ``up`` and ``dead`` are when
    the daemon's live view (which the usage recorder bills from) showed it running and
    stopped: Docker's events reach it some time after `docker run` and `docker kill` return,
    longer on a loaded machine."""

    started: float
    up: float
    killing: float = 0.0
    dead: float = 0.0

    def held_bounds_s(self) -> tuple[float, float]:
        """The seconds it may have held each GPU: at least (killing - up), at most
        (dead - started), give or take one sampling interval and a late pass."""
        slack = SAMPLE_S + PASS_SLACK_S
        return self.killing - self.up - slack, self.dead - self.started + slack


async def seen_by_the_view(setup: Setup, name: str, *, running: bool) -> float:
    """When the daemon's view first shows the container running (or no longer running)."""
    deadline = time.monotonic() + 30
    while True:
        status, body = await setup.call("admin", f"/containers/{name}")
        if status == 200 and (body["status"] == "running") == running:
            return time.monotonic()
        assert time.monotonic() < deadline, (status, body)
        await asyncio.sleep(0.02)


def run_container(rig: Rig, namespace: str, name: str, owner: str, gpus: str) -> Run:
    started = time.monotonic()
    rig.docker(
        "run", "--detach", "--name", name,
        "--label", f"deepdockd.namespace={namespace}",
        "--label", f"deepdockd.owner={owner}",
        "--label", f"deepdockd.gpu-indices={gpus}",
        BUSYBOX_IMAGE, "sleep", "600",
    )  # fmt: skip
    return Run(started, time.monotonic())


def kill_container(rig: Rig, name: str, run: Run) -> None:
    run.killing = time.monotonic()
    rig.docker("kill", name)
    run.dead = time.monotonic()


def held_s(rows: list[dict[str, Any]], **match: str) -> float:
    return sum(
        r["gpu_hours_held"] * 3600 for r in rows if all(r.get(k) == v for k, v in match.items())
    )


def busy_s(rows: list[dict[str, Any]], **match: str) -> float:
    return sum(
        r["gpu_hours_busy"] * 3600 for r in rows if all(r.get(k) == v for k, v in match.items())
    )


def counter(exposition: str, owner: str, kind: str) -> float:
    found = re.search(
        rf'^deepdockd_gpu_seconds_total\{{kind="{kind}",owner="{owner}"\}} (\S+)$',
        exposition,
        re.MULTILINE,
    )
    assert found, exposition
    return float(found.group(1))


def sim_gpus_file(path: Path, stem: str) -> Path:
    gpus = [sim_gpu(i, stem=stem, utilization=[UTILIZATION[i]]) for i in range(3)]
    path.write_text(json.dumps({"driver_version": "550.54.15", "gpus": gpus}))
    return path


# --- in process, on the rig ---


@dataclass
class Setup:
    client: Client
    tokens: dict[str, str]

    async def call(self, who: str, path: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        response = await self.client.get(path, headers=headers)
        return response.status, await response.json()

    async def usage(self, who: str, query: str = "") -> Any:
        status, body = await self.call(who, f"/usage{query}")
        assert status == 200, body
        return body

    async def settled(self, query: str, condition: Callable[[Any], bool]) -> Any:
        """The admin's answer once it meets ``condition`` and two reads a few flushes apart
        agree (nothing more is being recorded)."""
        deadline = time.monotonic() + 30
        last = None
        while True:
            body = await self.usage("admin", query)
            if condition(body) and body["rows"] == (last or {}).get("rows"):
                return body
            assert time.monotonic() < deadline, f"/usage{query} never settled; last: {body}"
            last = body
            await asyncio.sleep(FLUSH_S * 4)


@pytest.fixture
async def setup(
    aiohttp_client: ClientFactory,
    config: Config,
    rig: Rig,
    tmp_path: Path,
    gpu_stem: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    monkeypatch.setenv("NVML_SIM_CONFIG", str(sim_gpus_file(tmp_path / "gpus.json", gpu_stem)))
    secured = Config(
        **{
            **config.__dict__,
            "auth": True,
            "gpu_sample_interval": SAMPLE_S,
            "gpu_bucket": 0.25,
            "usage_flush_interval": FLUSH_S,
        }
    )
    tokens = users_tokens(TokenStore(secured.state_dir))
    client = await aiohttp_client(create_app(secured))
    yield Setup(client, tokens)
    clear_namespace(rig, config.namespace)


async def test_gpu_hours_match_how_long_containers_held_their_gpus(
    setup: Setup, rig: Rig, namespace: str
) -> None:
    alice_box, bob_box = f"{namespace}-alice", f"{namespace}-bob"
    alice_run = run_container(rig, namespace, alice_box, "alice", "0")
    bob_run = run_container(rig, namespace, bob_box, "bob", "1,2")
    alice_run.up = await seen_by_the_view(setup, alice_box, running=True)
    bob_run.up = await seen_by_the_view(setup, bob_box, running=True)
    await asyncio.sleep(1.5)  # how long they run: what is measured, not a wait for a condition
    kill_container(rig, alice_box, alice_run)
    alice_run.dead = await seen_by_the_view(setup, alice_box, running=False)
    await asyncio.sleep(1.0)
    kill_container(rig, bob_box, bob_run)
    bob_run.dead = await seen_by_the_view(setup, bob_box, running=False)

    body = await setup.settled(
        "?by=container", lambda b: {r["container"] for r in b["rows"]} == {alice_box, bob_box}
    )
    rows = body["rows"]
    assert body["by"] == "container"
    assert all(set(r) == {"owner", "container", "gpu_hours_held", "gpu_hours_busy"} for r in rows)
    low, high = alice_run.held_bounds_s()
    alice_held = held_s(rows, container=alice_box)
    assert low <= alice_held <= high, (low, alice_held, high)
    low, high = bob_run.held_bounds_s()
    bob_held = held_s(rows, container=bob_box)
    assert 2 * low <= bob_held <= 2 * high, (2 * low, bob_held, 2 * high)  # two GPUs
    # Busy: held time weighted by each GPU's utilization (50 % on GPU 0; 100 % and 20 %).
    assert busy_s(rows, container=alice_box) == pytest.approx(alice_held * 0.5, abs=1e-3)
    assert busy_s(rows, container=bob_box) == pytest.approx(bob_held * 0.6, abs=1e-3)

    # By GPU: GPU 0 is alice's time, GPUs 1 and 2 bob's.
    by_gpu = (await setup.usage("admin", "?by=gpu"))["rows"]
    assert {r["gpu"] for r in by_gpu} == {"0", "1", "2"}
    assert held_s(by_gpu, gpu="0") == pytest.approx(alice_held, abs=1e-2)
    assert held_s(by_gpu, gpu="1") + held_s(by_gpu, gpu="2") == pytest.approx(bob_held, abs=1e-2)

    # Each user sees their own rows only; the admin everyone's.
    by_owner = (await setup.usage("admin"))["rows"]
    assert {r["owner"] for r in by_owner} == {"alice", "bob"}
    alices = (await setup.usage("alice", "?by=container"))["rows"]
    assert [(r["owner"], r["container"]) for r in alices] == [("alice", alice_box)]
    bobs = (await setup.usage("bob", "?by=gpu"))["rows"]
    assert {r["gpu"] for r in bobs} == {"1", "2"}

    # The Prometheus counter says the same seconds.
    response = await setup.client.get(
        "/metrics/prometheus", headers={"Authorization": f"Bearer {setup.tokens['admin']}"}
    )
    exposition = await response.text()
    assert counter(exposition, "alice", "held") == pytest.approx(alice_held, abs=1e-2)
    assert counter(exposition, "bob", "busy") == pytest.approx(busy_s(rows, owner="bob"), abs=1e-2)

    # A range that ends before they ran has none of it.
    earlier = (await setup.usage("admin", "?from=2020-01-01&to=2020-02-01"))["rows"]
    assert earlier == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?by=user", "by"),
        ("?from=yesterday", "from"),
        ("?to=2026-13-01", "to"),
        ("?from=2026-11-02&to=2026-11-01", "from"),
    ],
)
async def test_bad_parameters_are_refused_naming_them(setup: Setup, query: str, field: str) -> None:
    status, body = await setup.call("alice", f"/usage{query}")
    assert status == 422
    assert body["error"]["details"]["field"] == field
    assert body["error"]["message"].startswith(f"{field}: ")


# --- a real process, killed ---


@pytest.mark.process  # deepdockd killed with SIGKILL and started again
def test_the_history_survives_a_sigkill_and_a_restart(
    rig_daemon: Callable[..., RunningDaemon],
    rig: Rig,
    namespace: str,
    tmp_path: Path,
    gpu_stem: str,
    cleanup: None,
) -> None:
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(sim_gpus_file(tmp_path / "gpus.json", gpu_stem)),
        "DEEPDOCKD_GPU_SAMPLE_INTERVAL": str(SAMPLE_S),
        "DEEPDOCKD_USAGE_FLUSH_INTERVAL": "0.2",
    }
    first = rig_daemon(env=env, auth=True, name="usage")
    tokens = users_tokens(TokenStore(first.state_dir))
    box = f"{namespace}-kept"
    run_container(rig, namespace, box, "alice", "0")

    def alices_held_s(daemon: RunningDaemon) -> float:
        status, body = http_json("GET", f"{daemon.base}/usage", token=tokens["admin"])
        assert status == 200, body
        return held_s(body["rows"], owner="alice")

    deadline = time.monotonic() + 30
    while (written := alices_held_s(first)) < 1.0:  # a second of it flushed
        assert time.monotonic() < deadline, f"{written} s recorded after 30 s"
        time.sleep(0.1)
    first.daemon.process.kill()  # SIGKILL, mid-run: the container still holds its GPU
    first.daemon.wait_for_exit()

    database = first.state_dir / FILE_NAME
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    second = rig_daemon(env=env, auth=True, name="usage")  # the same state directory
    assert second.state_dir == first.state_dir
    try:
        assert alices_held_s(second) >= written
        # Its users see their own rows only; the counter kept its seconds.
        status, body = http_json("GET", f"{second.base}/usage", token=tokens["alice"])
        assert (status, [r["owner"] for r in body["rows"]]) == (200, ["alice"])
        status, body = http_json("GET", f"{second.base}/usage", token=tokens["bob"])
        assert (status, body["rows"]) == (200, [])
        _, exposition = http_request(
            "GET", f"{second.base}/metrics/prometheus", token=tokens["admin"]
        )
        # (The answer's hours are rounded to 9 places: 3.6 µs.)
        assert counter(exposition.decode(), "alice", "held") >= written - 1e-5

        # The client shows the same rows, once nothing more is recorded.
        rig.docker("kill", box)
        month = datetime.now(UTC).strftime("%Y-%m")
        query = f"/usage?{urlencode({**month_query(month), 'by': 'container'})}"
        answer, deadline = None, time.monotonic() + 30
        while True:  # two reads a few flushes apart agree: nothing more is recorded
            _, now = http_json("GET", second.base + query, token=tokens["alice"])
            if now == answer:
                break
            assert time.monotonic() < deadline, now
            answer = now
            time.sleep(0.5)
        terminal = {
            "HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"], "COLUMNS": "200",
            "DEEPDOCK_URL": second.base, "DEEPDOCK_TOKEN": tokens["alice"],
        }  # fmt: skip
        shown = deepdock(terminal, "usage", "--month", month, "--by", "container", "--json")
        assert json.loads(shown) == answer
        table = deepdock(terminal, "usage", "--month", month, "--by", "container").splitlines()
        assert table[0].split() == [
            "OWNER", "CONTAINER", "GPU-HOURS", "HELD", "GPU-HOURS", "BUSY", "BUSY", "%",
        ]  # fmt: skip
        [(held, busy)] = [(r["gpu_hours_held"], r["gpu_hours_busy"]) for r in answer["rows"]]
        assert table[1].split() == ["alice", box, f"{held:.2f}", f"{busy:.2f}", "50"]
        assert table[2].split() == ["total", f"{held:.2f}", f"{busy:.2f}", "50"]
        refused = subprocess.run(
            [str(DEEPDOCK), "usage", "--month", "2026-13"], env=terminal,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert refused.returncode == 2
        assert "'2026-13' is not a month" in refused.stderr
    finally:
        rig.docker("rm", "--force", box)


def month_query(month: str) -> dict[str, str]:
    year, number = map(int, month.split("-"))
    after = f"{year + 1}-01" if number == 12 else f"{year}-{number + 1:02d}"
    return {"from": f"{month}-01", "to": f"{after}-01"}


def deepdock(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(DEEPDOCK), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout

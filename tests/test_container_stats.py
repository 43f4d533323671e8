"""Per-container resource use on the rig, as people see it: a container that burns one core
shows about 100 % CPU, one that fills 200 MiB of /dev/shm shows its working set grow by about
that, in the list, in ``GET /containers/{name}/stats`` (merged by ``?step=``), in a real
Prometheus under cAdvisor's names, and in ``deepdock top --once``; another user sees none of
it. The rig runs cgroup v1 (cgroupfs driver); v2's files are read in test_cgroup_stats.py."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests.support import users
from tests.support.api import ClientFactory, body
from tests.support.docker_state import clear_namespace
from tests.support.prometheus import PrometheusServer
from tests.support.rig import Rig
from tests.support.users import users_tokens

DEEPDOCK = Path(sys.executable).parent / "deepdock"
BURNER = ["sh", "-c", "while :; do :; done"]
# The tolerances: CPU within 15 points of 100 % per busy core, memory within 20 %.
CPU_TOLERANCE = 15.0
FILL_MIB = 200


@pytest.fixture
async def people(
    aiohttp_client: ClientFactory, config: Config, rig: Rig, ssh_ports: tuple[int, int]
) -> Any:
    """A daemon with auth on (admin, alice, bob) that samples every 0.5 s into 1 s buckets."""
    made = replace(
        config, auth=True, ssh_port_range=ssh_ports, gpu_sample_interval=0.5, gpu_bucket=1.0
    )
    tokens = users_tokens(TokenStore(made.state_dir))
    yield users.People(await aiohttp_client(create_app(made)), tokens)
    clear_namespace(rig, config.namespace)


async def _until(
    read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float, what: str
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s; last: {value}")
        await asyncio.sleep(0.25)


async def test_a_containers_cpu_memory_and_series_show_what_it_uses(
    people: users.People, rig: Rig, tmp_path: Path
) -> None:
    name = f"burn-{uuid.uuid4().hex[:6]}"
    status, answer = await people.call(
        "alice", "POST", "/containers/create",
        body(name, command=BURNER, shm_size_mb=512, memory_mb=2048),
    )  # fmt: skip
    assert status == 201, answer

    async def mine() -> dict[str, Any]:
        status, found = await people.call("alice", "GET", f"/containers/{name}")
        assert status == 200, found
        return dict(found)

    # CPU: one busy core is about 100 % (the median of a few samples: the rig is shared).
    await _until(mine, lambda c: c["cpu_percent"] is not None, 30, "a first CPU figure")
    cpus = []
    for _ in range(6):
        cpus.append((await mine())["cpu_percent"])
        await asyncio.sleep(0.5)
    assert abs(statistics.median(cpus) - 100) <= CPU_TOLERANCE, cpus
    shown = await mine()
    assert shown["memory_limit_mb"] == 2048.0
    assert shown["pids"] >= 2  # the shell that burns, and the SSH server beside it

    # Memory: 200 MiB written to /dev/shm (a tmpfs: memory) is about 200 MiB more in use.
    before = shown["memory_used_mb"]
    rig.docker("exec", name, "dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", f"count={FILL_MIB}")
    grown = await _until(
        mine, lambda c: c["memory_used_mb"] - before >= FILL_MIB * 0.8, 10, "memory growth"
    )
    assert abs(grown["memory_used_mb"] - before - FILL_MIB) <= FILL_MIB * 0.2, (before, grown)

    # The series has points with those figures; ?step= merges them into windows.
    async def series(query: str = "") -> dict[str, Any]:
        status, found = await people.call("alice", "GET", f"/containers/{name}/stats{query}")
        assert status == 200, found
        return dict(found)

    filled = await _until(
        series,
        lambda s: any((p["memory_used_mb"] or 0) - before >= FILL_MIB * 0.8 for p in s["points"]),
        10, "a point with the memory",
    )  # fmt: skip
    assert filled["name"] == name
    assert filled["step"] == 1.0
    busy = [p["cpu_percent"] for p in filled["points"][-4:] if p["cpu_percent"] is not None]
    assert busy, filled["points"]
    assert abs(statistics.median(busy) - 100) <= CPU_TOLERANCE, filled["points"]
    first = urllib.parse.quote(filled["points"][0]["timestamp"])
    raw = (await series(f"?since={first}"))["points"]
    merged = await series(f"?since={first}&step=3600")
    assert merged["step"] == 3600
    assert 1 <= len(merged["points"]) <= 2, merged
    assert sum(p["samples"] for p in merged["points"]) >= sum(p["samples"] for p in raw)
    cpu_means = [p["cpu_percent"] for p in raw if p["cpu_percent"] is not None]
    for point in merged["points"]:
        assert min(cpu_means) - 1 <= point["cpu_percent"] <= max(cpu_means) + 1, (point, raw)

    # Another user: 404 for the series, and the list shows them nothing of it.
    status, refused = await people.call("bob", "GET", f"/containers/{name}/stats")
    assert status == 404, refused
    status, listed = await people.call("bob", "GET", "/containers")
    assert status == 200
    assert listed == {"containers": []}

    # `deepdock top --once` shows the row, burning.
    server = people.client.server
    top = await asyncio.create_subprocess_exec(
        str(DEEPDOCK), "top", "--once",
        env={
            "HOME": str(tmp_path), "PATH": os.environ["PATH"], "COLUMNS": "200",
            "DEEPDOCK_URL": f"http://{server.host}:{server.port}",
            "DEEPDOCK_TOKEN": people.tokens["alice"],
        },
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(top.communicate(), 60)
    assert top.returncode == 0, err.decode()
    row = re.search(rf"^{name}\s+running\s+([\d.]+)%\s+([\d.]+) MiB / 2.00 GiB", out.decode(), re.M)
    assert row, out.decode()
    assert float(row.group(1)) >= 100 - 2 * CPU_TOLERANCE, out.decode()


async def test_a_real_prometheus_scrapes_the_cpu_counter_rising_with_cadvisors_labels(
    people: users.People, rig: Rig, tmp_path: Path
) -> None:
    name = f"scraped-{uuid.uuid4().hex[:6]}"
    status, answer = await people.call(
        "alice", "POST", "/containers/create", body(name, command=BURNER)
    )
    assert status == 201, answer
    full_id = rig.docker("inspect", "--format", "{{.Id}}", name).strip()
    image = rig.docker("inspect", "--format", "{{.Config.Image}}", name).strip()
    server = people.client.server
    query = f'container_cpu_usage_seconds_total{{name="{name}"}}'
    with PrometheusServer(
        tmp_path / "prometheus", f"{server.host}:{server.port}",
        metrics_path="/metrics/prometheus", bearer_token=people.tokens["admin"],
        scrape_interval_s=1.0,
    ) as prometheus:  # fmt: skip
        (first,) = await asyncio.to_thread(prometheus.wait_for_series, query, bool, 30)
        seconds = float(first["value"][1])
        # A busy core: at least 2 s more CPU time within 5 s of scrapes.
        await asyncio.to_thread(
            prometheus.wait_for_series,
            query,
            lambda r: len(r) == 1 and float(r[0]["value"][1]) >= seconds + 2,
            10,
        )
        (working_set,) = await asyncio.to_thread(
            prometheus.wait_for_series, f'container_memory_working_set_bytes{{name="{name}"}}'
        )
    labels = first["metric"]
    assert {k: labels.get(k) for k in ("name", "container", "id", "image", "owner")} == {
        "name": name, "container": name, "id": f"/docker/{full_id}", "image": image,
        "owner": "alice",
    }  # fmt: skip
    assert float(working_set["value"][1]) > 0

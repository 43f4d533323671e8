"""GPU accounting: the processes NVML lists on each GPU, attributed to deepdockd's containers
and owners, to other containers and to the host; stray use; and the Prometheus exposition,
scraped by a real Prometheus server.

The simulated NVML reads its process lists from a file that the tests rewrite while the
daemon runs; the pids in it are real: a container's main process (its host pid, from Docker),
a process this test starts on the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from deepdockd.api.app import create_app
from deepdockd.api.keys import ACCOUNTING
from deepdockd.config import Config
from deepdockd.gpu.procfs import container_id_of, origin_of
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory
from tests.support.docker_state import clear_namespace
from tests.support.gpus import sim_gpu
from tests.support.prometheus import PrometheusServer, promtool_check_metrics
from tests.support.rig import BUSYBOX_IMAGE, DEBIAN_SSH_IMAGE, Rig
from tests.support.users import users_tokens

SimGpus = Callable[..., Path]
ID = "0123456789abcdef" * 4  # a container id: 64 hex digits

# --- where a process comes from: /proc/<pid>/cgroup ---


@pytest.mark.parametrize(
    "cgroup",
    [
        # cgroup v1, Docker's cgroupfs driver (this rig's dockerd writes exactly this)
        f"12:memory:/docker/{ID}\n4:pids:/docker/{ID}\n0::/docker/{ID}\n",
        # cgroup v1, systemd driver
        f"11:cpu,cpuacct:/system.slice/docker-{ID}.scope\n1:name=systemd:/system.slice/docker-{ID}.scope\n",
        # cgroup v2, systemd driver
        f"0::/system.slice/docker-{ID}.scope\n",
        # cgroup v2, cgroupfs driver, a dockerd started with --cgroup-parent
        f"0::/gpu-jobs/{ID}\n",
        # a process in a sub-cgroup of its container (systemd running inside it)
        f"0::/system.slice/docker-{ID}.scope/init.scope\n",
    ],
)  # fmt: skip
def test_the_container_of_a_cgroup_path(cgroup: str) -> None:
    assert container_id_of(cgroup) == ID


@pytest.mark.parametrize(
    "cgroup",
    [
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "12:memory:/\n0::/init.scope\n",
        f"0::/system.slice/containerd-{ID[:-1]}.scope\n",  # 63 digits: no container id
        "",
    ],
)
def test_host_cgroups_name_no_container(cgroup: str) -> None:
    assert container_id_of(cgroup) is None


def started(command: list[str]) -> subprocess.Popen[bytes]:
    """``command`` started, once it runs (until its exec, /proc shows the forked pytest)."""
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 10
    while command_of(process.pid) != " ".join(command):
        assert time.monotonic() < deadline, f"{command} did not start"
        time.sleep(0.01)
    return process


# The user the tests run as: the processes they start are that user's (root under make test;
# make test-fast needs no root).
TEST_USER = pwd.getpwuid(os.geteuid()).pw_name


def test_origin_of_a_host_process_reads_its_user_and_command() -> None:
    with started(["sleep", "30"]) as sleeper:
        try:
            origin = origin_of(sleeper.pid)
        finally:
            sleeper.kill()
    assert origin.container_id is None
    assert origin.user == TEST_USER
    assert origin.command == "sleep 30"


# A process that names itself with bytes that are not UTF-8, and a ")" that /proc/<pid>/stat's
# parser must not take for the end of the name (prctl PR_SET_NAME = 15; any user may).
ODD_NAME = """
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, b"a) b\\xff\\xfe", 0, 0, 0)
print("named", flush=True)
time.sleep(30)
"""


def test_origin_of_a_process_with_any_bytes_in_its_name() -> None:
    with subprocess.Popen([sys.executable, "-c", ODD_NAME], stdout=subprocess.PIPE) as odd:
        try:
            assert odd.stdout is not None
            assert odd.stdout.readline() == b"named\n"
            origin = origin_of(odd.pid)
            created = psutil.Process(odd.pid).create_time()
        finally:
            odd.kill()
    assert origin.user == TEST_USER
    assert origin.command is not None
    assert origin.command.startswith(sys.executable)
    # The start time, counted after the name: what psutil reads as the process's creation.
    assert origin.started is not None
    ticks = os.sysconf("SC_CLK_TCK")
    assert psutil.boot_time() + origin.started / ticks == pytest.approx(created, abs=0.05)


def test_origin_of_a_process_that_is_gone_is_unknown() -> None:
    with subprocess.Popen(["true"]) as done:
        done.wait()
    origin = origin_of(done.pid)
    assert (origin.container_id, origin.user, origin.command) == (None, None, None)


# --- the daemon, its simulated GPUs and their processes ---


@dataclass
class Setup:
    client: Client
    tokens: dict[str, str]
    processes_file: Path
    namespace: str
    rig: Rig

    def put_processes(self, by_gpu: dict[int, list[dict[str, Any]]]) -> None:
        """What the simulated NVML lists from now on: {gpu: [{pid, used_memory_mib, sm}]}."""
        staged = self.processes_file.with_suffix(".new")
        staged.write_text(json.dumps({str(gpu): found for gpu, found in by_gpu.items()}))
        os.replace(staged, self.processes_file)

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        response = await self.client.request(method, path, json=body, headers=headers)
        text = await response.text()
        return response.status, json.loads(text) if response.content_type.endswith("json") else text

    async def get(self, who: str, path: str) -> Any:
        status, body = await self.call(who, "GET", path)
        assert status == 200, body
        return body

    async def wait_for(
        self, who: str, path: str, condition: Callable[[Any], bool], timeout_s: float = 15
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:  # a container made a moment ago may not be known yet (404)
            status, body = await self.call(who, "GET", path)
            if status == 200 and condition(body):
                return body
            assert time.monotonic() < deadline, f"{path} never met the condition; last: {body}"
            await asyncio.sleep(0.05)

    async def passes(self, count: int, timeout_s: float = 15) -> None:
        """Return once the accounting has attributed ``count`` passes of the sampler more:
        each gives it a new attribution (``latest``), so ``count`` changes seen are at least
        ``count`` passes done."""
        accounting = self.client.server.app[ACCOUNTING]
        seen, changes = accounting.latest, 0
        deadline = time.monotonic() + timeout_s
        while changes < count:
            assert time.monotonic() < deadline, f"{changes} of {count} passes in {timeout_s} s"
            await asyncio.sleep(0.01)
            if accounting.latest is not seen:
                seen, changes = accounting.latest, changes + 1

    def container(self, name: str, owner: str, gpus: str) -> int:
        """A running container of this daemon's namespace, labelled as a create labels it
        (owner, GPUs); its main process's host pid."""
        self.rig.docker(
            "run", "--detach", "--name", name,
            "--label", f"deepdockd.namespace={self.namespace}",
            "--label", f"deepdockd.owner={owner}",
            "--label", f"deepdockd.gpu-indices={gpus}",
            BUSYBOX_IMAGE, "sleep", "600",
        )  # fmt: skip
        return host_pid(self.rig, name)


def command_of(pid: int) -> str:
    return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")).strip()


def host_pid(rig: Rig, name: str) -> int:
    return int(rig.docker("inspect", "--format", "{{.State.Pid}}", name).strip())


@pytest.fixture
async def setup(
    aiohttp_client: ClientFactory,
    config: Config,
    sim_gpus: SimGpus,
    rig: Rig,
    tmp_path: Path,
    gpu_stem: str,
    ssh_ports: tuple[int, int],
) -> Any:
    """A daemon with auth on (admin, alice, bob), three simulated GPUs whose processes come
    from a file, and a fast sampler."""
    processes_file = tmp_path / "processes.json"
    path = sim_gpus(*(sim_gpu(i, stem=gpu_stem, memory_reserved_mib=480) for i in range(3)))
    described = json.loads(path.read_text())
    path.write_text(json.dumps({**described, "processes_file": str(processes_file)}))
    secured = Config(
        **{
            **config.__dict__,
            "auth": True,
            "ssh_port_range": ssh_ports,
            "gpu_sample_interval": 0.05,
            "gpu_bucket": 0.25,
        }
    )
    tokens = users_tokens(TokenStore(secured.state_dir))
    client = await aiohttp_client(create_app(secured))
    yield Setup(client, tokens, processes_file, config.namespace, rig)
    clear_namespace(rig, config.namespace)


@pytest.fixture
def host_process() -> Iterator[subprocess.Popen[bytes]]:
    with started(["sleep", "600"]) as sleeper:
        yield sleeper
        sleeper.kill()


def processes_of(body: Any, gpu: int) -> Any:
    return body["gpus"][gpu]["processes"]


def with_pid(pid: int) -> Callable[[Any], bool]:
    return lambda body: any(p.get("pid") == pid for g in body["gpus"] for p in g["processes"] or [])


# --- attribution, visibility and stray use ---


async def test_a_containers_process_is_attributed_to_it_and_its_owner(
    setup: Setup, host_process: subprocess.Popen[bytes]
) -> None:
    name = f"{setup.namespace}-train"
    pid = setup.container(name, "alice", "0")
    command = command_of(pid)
    setup.put_processes({0: [{"pid": pid, "used_memory_mib": 1130, "sm": 35}]})

    body = await setup.wait_for("alice", "/gpus", with_pid(pid))
    assert processes_of(body, 0) == [
        {
            "pid": pid,
            "kind": "deepdockd",
            "container": name,
            "owner": "alice",
            "command": command,
            "memory_used_mib": 1130.0,
            "sm_utilization": 35.0,
            "stray": False,
        }
    ]
    assert processes_of(body, 1) == processes_of(body, 2) == []
    assert [g["memory_reserved_mib"] for g in body["gpus"]] == [480.0] * 3

    # Its container says what it uses; the admin sees it whole, bob only how much and what kind.
    container = await setup.get("alice", f"/containers/{name}")
    assert (container["gpu_memory_used_mib"], container["gpu_utilization"]) == (1130.0, 35.0)
    listed = await setup.get("admin", "/containers")
    assert [(c["name"], c["gpu_memory_used_mib"]) for c in listed["containers"]] == [(name, 1130.0)]
    assert processes_of(await setup.get("admin", "/gpus"), 0) == processes_of(body, 0)
    assert processes_of(await setup.get("bob", "/gpus"), 0) == [
        {"memory_used_mib": 1130.0, "kind": "deepdockd"}
    ]

    # A container's processes on several GPUs add up (SM shares in % of one GPU).
    name2 = f"{setup.namespace}-two"
    pid2 = setup.container(name2, "alice", "1,2")
    setup.put_processes(
        {
            1: [{"pid": pid2, "used_memory_mib": 1000, "sm": 50}],
            2: [{"pid": pid2, "used_memory_mib": 500, "sm": 30}],
        }
    )
    container = await setup.wait_for(
        "alice", f"/containers/{name2}", lambda c: c["gpu_memory_used_mib"] == 1500.0
    )
    assert container["gpu_utilization"] == 80.0


async def test_host_and_foreign_processes_and_stray_use(
    setup: Setup, host_process: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="deepdockd.accounting")
    ours = f"{setup.namespace}-holder"
    our_pid = setup.container(ours, "alice", "0")
    foreign = f"{setup.namespace}-foreign"  # a container deepdockd did not make
    setup.rig.docker("run", "--detach", "--name", foreign, BUSYBOX_IMAGE, "sleep", "600")
    try:
        foreign_pid = host_pid(setup.rig, foreign)
        setup.put_processes(
            {
                # On alice's GPU: her process, and a foreign container's, which is stray.
                0: [
                    {"pid": our_pid, "used_memory_mib": 100, "sm": 10},
                    {"pid": foreign_pid, "used_memory_mib": 200, "sm": 20},
                ],
                # A free GPU: a host process is no one's business but the admin's.
                1: [{"pid": host_process.pid, "used_memory_mib": 300, "sm": 30}],
                # alice's process on a GPU her container does not hold: stray.
                2: [{"pid": our_pid, "used_memory_mib": 400, "sm": 40}],
            }
        )
        body = await setup.wait_for("admin", "/gpus", with_pid(host_process.pid))
        summary = [
            [(p["pid"], p["kind"], p["container"], p["owner"], p["stray"]) for p in g["processes"]]
            for g in body["gpus"]
        ]
        assert summary == [
            [
                (our_pid, "deepdockd", ours, "alice", False),
                (foreign_pid, "container", foreign, None, True),
            ],
            [(host_process.pid, "host", None, "root", False)],
            [(our_pid, "deepdockd", ours, "alice", True)],
        ]
        assert processes_of(body, 1)[0]["command"] == "sleep 600"
        # Her container counts its processes on every GPU, the stray one too.
        container = await setup.get("alice", f"/containers/{ours}")
        assert container["gpu_memory_used_mib"] == 500.0

        # What alice sees: her own whole, the others' memory and kind only.
        mine = await setup.get("alice", "/gpus")
        assert [len(p) for p in processes_of(mine, 0)] == [8, 2]
        assert processes_of(mine, 1) == [{"memory_used_mib": 300.0, "kind": "host"}]

        # Each stray use is logged once, however many passes see it: five more, counted.
        await setup.passes(5)
        strays = [r.getMessage() for r in caplog.records if "stray GPU use" in r.getMessage()]
        assert sorted(strays) == sorted(
            [
                f"stray GPU use: GPU 0: pid {foreign_pid} of container '{foreign}' (not"
                " deepdockd's) uses a GPU that a deepdockd container holds",
                f"stray GPU use: GPU 2: pid {our_pid} of container '{ours}' (owner alice) uses"
                " a GPU that its container does not hold",
            ]
        )
    finally:
        setup.rig.docker("rm", "--force", foreign)


async def test_memory_excludes_what_the_driver_reserves(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    """v2 gives used and reserved apart; an old driver (no v2) counts reserved as used."""
    sim_gpus(
        sim_gpu(0, memory_used_mib=[1000], memory_reserved_mib=480),
        sim_gpu(1, memory_used_mib=[1000], memory_reserved_mib=480, memory_v2=False),
    )
    fast = Config(**{**config.__dict__, "gpu_sample_interval": 0.02, "gpu_bucket": 0.1})
    client = await aiohttp_client(create_app(fast))
    deadline = time.monotonic() + 10
    while True:
        series = await (await client.get("/metrics/gpus?limit=1")).json()
        if all(series.get(k) for k in "01"):
            break
        assert time.monotonic() < deadline, series
        await asyncio.sleep(0.05)
    assert [series[k][0]["memory_used"] for k in "01"] == [1000.0, 1480.0]
    gpus = (await (await client.get("/gpus")).json())["gpus"]
    assert [g["memory_reserved_mib"] for g in gpus] == [480.0, None]


async def test_without_nvml_container_gpu_use_is_unknown(
    aiohttp_client: ClientFactory, config: Config, cleanup: None, ssh_ports: tuple[int, int]
) -> None:
    client = await aiohttp_client(
        create_app(Config(**{**config.__dict__, "ssh_port_range": ssh_ports}))
    )
    name = f"{config.namespace}-cpu"
    body = {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw"}
    response = await client.post("/containers/create", json=body)
    assert response.status == 201, await response.text()
    container = await (await client.get(f"/containers/{name}")).json()
    assert (container["gpu_memory_used_mib"], container["gpu_utilization"]) == (None, None)


# --- Prometheus ---


def samples(exposition: str, name: str) -> dict[str, float]:
    """The samples of metric ``name``: their label text -> value."""
    found = {}
    for line in exposition.splitlines():
        match = re.fullmatch(rf"{name}(\{{.*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


async def test_the_exposition_names_containers_owners_and_routes(setup: Setup) -> None:
    name = f"{setup.namespace}-prom"
    pid = setup.container(name, "alice", "1")
    setup.put_processes({1: [{"pid": pid, "used_memory_mib": 1130, "sm": 35}]})
    await setup.wait_for("admin", "/gpus", with_pid(pid))
    for _ in range(3):  # a route with a name in it: one series, under its template
        assert (await setup.call("alice", "GET", f"/containers/nope-{uuid.uuid4().hex}"))[0] == 404

    status, text = await setup.call("admin", "GET", "/metrics/prometheus")
    assert status == 200, text
    uuid1 = sim_gpu(1, stem=_stem(text))["uuid"]
    util = samples(text, "DCGM_FI_DEV_GPU_UTIL")
    assert len(util) == 3
    held = [labels for labels in util if f'UUID="{uuid1}"' in labels]
    assert len(held) == 1
    for label in (
        'gpu="1"', 'device="nvidia1"', 'modelName="NVIDIA H100 80GB HBM3"',
        'DCGM_FI_DRIVER_VERSION="550.54.15"', f'container="{name}"', 'owner="alice"',
        'Hostname="',
    ):  # fmt: skip
        assert label in held[0], held[0]
    assert list(samples(text, "DCGM_FI_DEV_FB_RESERVED").values()) == [480.0] * 3
    process = samples(text, "deepdockd_gpu_process_memory_used_mib")
    assert list(process.values()) == [1130.0]
    (process_labels,) = process
    for label in (f'pid="{pid}"', 'kind="deepdockd"', f'container="{name}"', 'owner="alice"'):
        assert label in process_labels
    assert samples(text, "deepdockd_containers") == {'{owner="alice",state="running"}': 1.0}
    assert samples(text, "deepdockd_gpus_held") == {'{owner="alice"}': 1.0}
    assert samples(text, "deepdockd_docker_up") == {"": 1.0}
    requests = samples(text, "deepdockd_http_requests_total")
    assert requests['{method="GET",route="/containers/{name}",status="404"}'] == 3.0
    assert not [labels for labels in requests if "nope-" in labels]

    # promtool finds no error; its only lint is dcgm-exporter's own camelCase label
    # (modelName), kept so that dashboards made for dcgm-exporter work unchanged.
    checked = promtool_check_metrics(text)
    problems = checked.stdout + checked.stderr
    assert checked.returncode == 3, problems
    assert set(problems.splitlines()) <= {
        f"{family} label names should be written in 'snake_case' not 'camelCase'"
        for family in re.findall(r"^# TYPE (DCGM_FI_\w+) gauge$", text, re.MULTILINE)
    }, problems
    without_model = re.sub(r',modelName="[^"]*"', "", text)
    clean = promtool_check_metrics(without_model)
    assert clean.returncode == 0, clean.stdout + clean.stderr


def _stem(text: str) -> str:
    match = re.search(r'UUID="GPU-([0-9a-f]{8})-', text)
    assert match, text
    return match.group(1)


async def test_a_real_prometheus_scrapes_every_gpu_with_its_holder(
    setup: Setup, tmp_path: Path
) -> None:
    name = f"{setup.namespace}-scraped"
    setup.container(name, "alice", "2")
    server = setup.client.server
    target = f"{server.host}:{server.port}"
    with PrometheusServer(
        tmp_path / "prometheus", target, metrics_path="/metrics/prometheus",
        bearer_token=setup.tokens["admin"], scrape_interval_s=1.0,
    ) as prometheus:  # fmt: skip
        series = await asyncio.to_thread(
            prometheus.wait_for_series,
            "DCGM_FI_DEV_GPU_UTIL",
            lambda r: len(r) == 3 and any(s["metric"].get("container") == name for s in r),
            30,
        )
    # Prometheus stores an empty label (a free GPU's container and owner) as no label.
    by_gpu = {s["metric"]["gpu"]: s["metric"] for s in series}
    gpus = (await setup.get("admin", "/gpus"))["gpus"]
    assert {
        k: (v["UUID"], v["modelName"], v.get("container", ""), v.get("owner", ""))
        for k, v in by_gpu.items()
    } == {
        str(g["index"]): (
            g["uuid"], "NVIDIA H100 80GB HBM3", name if g["index"] == 2 else "",
            "alice" if g["index"] == 2 else "",
        )
        for g in gpus
    }  # fmt: skip


async def test_prometheus_is_for_admins(setup: Setup) -> None:
    status, body = await setup.call("alice", "GET", "/metrics/prometheus")
    assert status == 403
    assert "admin" in body["error"]["message"]

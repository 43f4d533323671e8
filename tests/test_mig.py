"""MIG slices as GPUs: a GPU in MIG mode is listed with its slices, each slice is asked for as
"GPU:SLICE" in gpu_ids, held and freed as a whole GPU is, and reaches its container as
NVIDIA_VISIBLE_DEVICES=MIG-<uuid>; its memory and processes are its holder's.

The simulated NVML gives the MIG GPU (tests/nvml-sim/nvml_sim.c, "mig"); the containers are
real ones on the rig's dockerd, and the environment is read through a real SSH login."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deepdockd import labels
from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.containers.allocation import Gpu, GpuBusy, check_gpus_free
from deepdockd.containers.gpu_choice import resolve_gpus
from deepdockd.docker import ContainerSummary
from deepdockd.errors import InvalidInput
from deepdockd.fairshare.quotas import usage_of
from deepdockd.gpu import nvml
from deepdockd.gpu.nvml import GpuInfo
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory
from tests.support.docker_state import clear_namespace, inspect
from tests.support.gpus import sim_gpu
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig
from tests.support.ssh import ssh
from tests.support.users import users_tokens

SimGpus = Callable[..., Path]
DEMO_GPUS = Path(__file__).parent / "nvml-sim" / "demo-4gpu.json"


def mig_gpu(index: int, stem: str, **overrides: object) -> dict[str, object]:
    """An A100 in MIG mode: slot 0 empty (NVML's NOT_FOUND), two 3g.40gb slices at 1 and 2."""
    return sim_gpu(
        index,
        stem=stem,
        name="NVIDIA A100-SXM4-80GB",
        utilization=None,  # as on a real GPU in MIG mode: no whole-GPU utilization
        mig={
            "max_count": 7,
            "slices": [
                None,
                {
                    "uuid": f"MIG-{stem}-1111-4000-8000-00000000000{index}",
                    "profile": "3g.40gb",
                    "memory_total_mib": 40192,
                    "memory_used_mib": 2048,
                    "gpu_instance_id": 1,
                    "compute_instance_id": 0,
                },
                {
                    "uuid": f"MIG-{stem}-2222-4000-8000-00000000000{index}",
                    "profile": "3g.40gb",
                    "memory_total_mib": 40192,
                    "memory_used_mib": 512,
                    "gpu_instance_id": 2,
                    "compute_instance_id": 0,
                },
            ],
        },
        **overrides,
    )


@pytest.fixture
def host_gpus(sim_gpus: SimGpus, gpu_stem: str) -> Iterator[tuple[GpuInfo, ...]]:
    """GPU 0 whole, GPU 1 in MIG mode, as deepdockd's NVML layer reads them (the real pynvml
    against the simulated library)."""
    sim_gpus(sim_gpu(0, stem=gpu_stem), mig_gpu(1, gpu_stem))
    inventory = nvml.start()
    try:
        yield inventory.gpus
    finally:
        nvml.stop()


# --- NVML: the MIG GPU and its slices, as read at start ---


def test_nvml_reads_mig_mode_and_each_slice(host_gpus: tuple[GpuInfo, ...], gpu_stem: str) -> None:
    whole, mig = host_gpus
    assert (whole.mig_mode, whole.slices) == (None, ())  # an H100 without "mig": NOT_SUPPORTED
    assert mig.mig_mode is True
    assert [(s.index, s.uuid, s.profile, s.memory_total_mib) for s in mig.slices] == [
        (1, f"MIG-{gpu_stem}-1111-4000-8000-000000000001", "3g.40gb", 40192.0),
        (2, f"MIG-{gpu_stem}-2222-4000-8000-000000000001", "3g.40gb", 40192.0),
    ]
    assert nvml.read(1).mig_memory_used_mib == {1: 2048.0, 2: 512.0}
    assert nvml.read(0).mig_memory_used_mib == {}


def test_a_mig_capable_gpu_with_mig_mode_off_is_given_whole(
    sim_gpus: SimGpus, gpu_stem: str
) -> None:
    sim_gpus(sim_gpu(0, stem=gpu_stem, mig={"mode": False}))
    try:
        (gpu,) = nvml.start().gpus
    finally:
        nvml.stop()
    assert (gpu.mig_mode, gpu.slices) == (False, ())
    assert resolve_gpus([labels.GpuId(0)], (gpu,)) == [Gpu(0, gpu.uuid)]


# --- gpu_ids: "1:1" and what is refused, with the message a user reads ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", labels.GpuId(0)), ("1:2", labels.GpuId(1, 2)), (" 12:0 ", labels.GpuId(12, 0))],
)
def test_gpu_ids_read(text: str, expected: labels.GpuId) -> None:
    assert labels.GpuId.parse(text) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize("text", ["x", "", "1:", ":1", "1:x", "-1", "1:2:3", "1.0", "\u0661"])
def test_gpu_ids_that_are_not_gpus(text: str) -> None:
    with pytest.raises(ValueError, match="is not a GPU index"):
        labels.GpuId.parse(text)


def test_slices_resolve_to_their_mig_uuids(host_gpus: tuple[GpuInfo, ...]) -> None:
    whole, mig = host_gpus
    asked = [labels.GpuId(0), labels.GpuId(1, 2)]
    assert resolve_gpus(asked, host_gpus) == [
        Gpu(0, whole.uuid),
        Gpu(1, mig.slices[1].uuid, slice=2),
    ]
    # Without NVML: pinned by index as asked, which NVIDIA's runtime reads as GPU 1's slice 2.
    assert resolve_gpus(asked, None) == [Gpu(0, None), Gpu(1, None, slice=2)]


@pytest.mark.parametrize(
    ("asked", "message", "details"),
    [
        (
            labels.GpuId(1, 9),
            "gpu_ids: 1:9 is not a MIG slice of GPU 1 (its slices: 1:1 (3g.40gb), 1:2 (3g.40gb))",
            {"field": "gpu_ids", "gpu": "1:9", "mig_slices": ["1:1", "1:2"]},
        ),
        (
            labels.GpuId(0, 1),
            "gpu_ids: 0:1 names a MIG slice, but GPU 0 is not in MIG mode; ask for it whole as 0",
            {"field": "gpu_ids", "gpu": "0:1"},
        ),
        (
            labels.GpuId(1),
            "gpu_ids: GPU 1 is in MIG mode, so it is given out only as its MIG slices, never "
            "whole; ask for one of its slices: 1:1, 1:2 (see GET /gpus)",
            {"field": "gpu_ids", "gpu": 1, "mig_slices": ["1:1", "1:2"]},
        ),
        (
            labels.GpuId(5, 0),
            "gpu_ids: 5:0 is not a GPU of this host (its GPUs: 0: NVIDIA H100 80GB HBM3; "
            "1: NVIDIA A100-SXM4-80GB)",
            {"field": "gpu_ids", "gpus": [0, 1]},
        ),
    ],
    ids=["unknown-slice", "slice-of-a-whole-gpu", "mig-gpu-whole", "unknown-gpu"],
)
def test_what_the_host_cannot_give_is_a_422_that_says_what_to_ask(
    host_gpus: tuple[GpuInfo, ...], asked: labels.GpuId, message: str, details: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput) as refused:
        resolve_gpus([asked], host_gpus)
    assert (refused.value.status, refused.value.message, refused.value.details) == (
        422,
        message,
        details,
    )


@pytest.fixture
async def app_client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    """The app in process, auth off, no Docker: what the schema refuses before any Docker."""
    config = Config(
        docker_host=f"unix://{tmp_path / 'no-docker.sock'}",
        state_dir=tmp_path / "state",
        auth=False,
    )
    return await aiohttp_client(create_app(config))


@pytest.mark.parametrize(
    ("gpu_ids", "message"),
    [
        (["x"], "gpu_ids.0: 'x' is not a GPU: give its index (1, or \"1\") or a MIG slice of it"),
        ([0, "1:"], "gpu_ids.1: '1:' is not a GPU: give its index (1, or \"1\") or a MIG slice"),
        ([True], "gpu_ids.0: True is not a GPU: give its index"),
        (["1:0", "1:0"], "gpu_ids: lists GPU 1:0 more than once"),
        ([1, "1"], "gpu_ids: lists GPU 1 more than once"),
    ],
)
async def test_a_gpu_id_that_is_no_gpu_is_a_422_naming_it(
    app_client: Client, gpu_ids: list[Any], message: str
) -> None:
    body = {"name": "box", "image": "busybox", "user_name": "u1", "password": "pw"}
    response = await app_client.post("/containers/create", json={**body, "gpu_ids": gpu_ids})
    error = (await response.json())["error"]
    assert (response.status, error["code"]) == (422, "invalid_input")
    assert error["message"].startswith(message), error["message"]


# --- held as GPUs are: the checks that allocation and quotas make ---


def holder(name: str, owner: str, gpu_indices: str, gpu_uuids: str = "") -> ContainerSummary:
    return ContainerSummary(
        id=name, name=name, image="", image_id="", state="running", published={},
        labels={labels.OWNER: owner, labels.GPU_INDICES: gpu_indices, labels.GPU_UUIDS: gpu_uuids},
    )  # fmt: skip


def test_a_slice_and_its_whole_gpu_are_never_held_twice() -> None:
    slice_holder = holder("a", "alice", "1:1", "MIG-aaaa")
    with pytest.raises(GpuBusy, match=r"^GPU 1:1 is held by running container 'a'$"):
        check_gpus_free([Gpu(1, "MIG-aaaa", slice=1)], [slice_holder])
    # The other slice is free; GPU 1 whole is not (a container made before MIG mode).
    check_gpus_free([Gpu(1, "MIG-bbbb", slice=2)], [slice_holder])
    with pytest.raises(GpuBusy, match=r"^GPU 1 is held by running container 'a'$"):
        check_gpus_free([Gpu(1, "GPU-1111")], [slice_holder])
    whole_holder = holder("w", "bob", "1", "GPU-1111")
    with pytest.raises(GpuBusy, match=r"^GPU 1:2 is held by another user's running container$"):
        check_gpus_free([Gpu(1, "MIG-bbbb", slice=2)], [whole_holder], viewer="alice")


def test_quotas_count_a_slice_as_one_gpu() -> None:
    running = [holder("a", "alice", "1:1,1:2"), holder("b", "alice", "0"), holder("c", "bob", "1")]
    assert usage_of("alice", running).gpus == 3


# --- the demo GPUs of `make run-sim` ---


def test_the_demo_gpus_have_one_in_mig_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVML_SIM_CONFIG", str(DEMO_GPUS))
    try:
        gpus = nvml.start().gpus
    finally:
        nvml.stop()
    assert [g.mig_mode for g in gpus] == [None, True, None, None]
    assert [(s.index, s.profile) for s in gpus[1].slices] == [
        (0, "3g.40gb"),
        (1, "2g.20gb"),
        (2, "1g.10gb"),
    ]


# --- a real GPU: MIG mode read as it is, never changed ---


@pytest.mark.gpu
def test_mig_mode_and_slices_match_nvidia_smi() -> None:
    """DEEPDOCKD_TEST_REAL_NVML=1 pytest -m gpu tests/test_mig.py, on a GPU host: mig_mode as
    nvidia-smi's mig.mode.current (N/A: None), and the slices as `nvidia-smi -L` lists them."""
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,mig.mode.current", "--format=csv,noheader"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    modes = {"Enabled": True, "Disabled": False}
    expected = [modes.get(line.split(",")[1].strip()) for line in smi.strip().splitlines()]
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True)
    mig_uuids = re.findall(r"\(UUID: (MIG-[^)]+)\)", listed.stdout)
    try:
        gpus = nvml.start().gpus
    finally:
        nvml.stop()
    assert [g.mig_mode for g in gpus] == expected
    assert [s.uuid for g in gpus for s in g.slices] == mig_uuids


# --- on the rig: two users, two slices, real containers ---


@dataclass
class Setup:
    client: Client
    tokens: dict[str, str]
    processes_file: Path
    namespace: str
    rig: Rig
    slices: list[str]  # the MIG UUIDs of GPU 1's slices 1:1 and 1:2
    gpu_0: str  # GPU 0's UUID

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        response = await self.client.request(method, path, json=body, headers=headers)
        return response.status, await response.json()

    async def create(self, who: str, name: str, gpu_ids: list[Any]) -> tuple[int, Any]:
        body = {
            "name": name, "image": DEBIAN_SSH_IMAGE, "password": f"pw-{name}",
            "user_name": "carol" if who == "admin" else who,
            "gpu_ids": gpu_ids,
        }  # fmt: skip
        return await self.call(who, "POST", "/containers/create", body)

    def put_processes(self, by_gpu: dict[int, list[dict[str, Any]]]) -> None:
        staged = self.processes_file.with_suffix(".new")
        staged.write_text(json.dumps({str(gpu): found for gpu, found in by_gpu.items()}))
        os.replace(staged, self.processes_file)

    async def wait_for_gpus(
        self, who: str, condition: Callable[[Any], bool], timeout_s: float = 15
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = await self.call(who, "GET", "/gpus")
            if status == 200 and condition(body):
                return body
            assert time.monotonic() < deadline, f"/gpus never met the condition; last: {body}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def setup(
    aiohttp_client: ClientFactory,
    config: Config,
    sim_gpus: SimGpus,
    rig: Rig,
    tmp_path: Path,
    gpu_stem: str,
    ssh_ports: tuple[int, int],
    request: pytest.FixtureRequest,
) -> Any:
    """A daemon with auth on (admin, alice, bob): GPU 0 whole, GPU 1 in MIG mode with slices
    1:1 and 1:2, processes from a file, a fast sampler. A test's settings of its own come by
    ``@pytest.mark.parametrize("setup", [{...}], indirect=True)``."""
    settings = getattr(request, "param", {})
    processes_file = tmp_path / "processes.json"
    path = sim_gpus(sim_gpu(0, stem=gpu_stem), mig_gpu(1, gpu_stem))
    described = json.loads(path.read_text())
    path.write_text(json.dumps({**described, "processes_file": str(processes_file)}))
    secured = Config(
        **{
            **config.__dict__,
            "auth": True,
            "ssh_port_range": ssh_ports,
            "ssh_ready_timeout": 180.0,
            "gpu_sample_interval": 0.05,
            "gpu_bucket": 0.25,
            **settings,
        }
    )
    tokens = users_tokens(TokenStore(secured.state_dir))
    client = await aiohttp_client(create_app(secured))
    slices = [s["uuid"] for s in described["gpus"][1]["mig"]["slices"][1:]]
    gpu_0 = described["gpus"][0]["uuid"]
    yield Setup(client, tokens, processes_file, config.namespace, rig, slices, gpu_0)
    clear_namespace(rig, config.namespace)


def host_pid(rig: Rig, name: str) -> int:
    return int(rig.docker("inspect", "--format", "{{.State.Pid}}", name).strip())


def gpu_1(body: Any) -> Any:
    return body["gpus"][1]


async def test_two_users_each_hold_a_slice_and_a_third_ask_is_refused(setup: Setup) -> None:
    ns = setup.namespace
    mine, theirs = f"{ns}-alice", f"{ns}-bob"
    status, alice = await setup.create("alice", mine, ["1:1"])
    assert status == 201, alice
    status, bob = await setup.create("bob", theirs, ["1:2", 0])
    assert status == 201, bob

    # A third ask, of either slice or of GPU 1 whole, is refused and says why.
    status, error = await setup.create("alice", f"{ns}-third", ["1:2"])
    assert (status, error["error"]["code"], error["error"]["message"]) == (
        409, "gpu_busy", "GPU 1:2 is held by another user's running container",
    )  # fmt: skip
    status, error = await setup.create("admin", f"{ns}-third", ["1:1"])
    assert (status, error["error"]["message"]) == (
        409, f"GPU 1:1 is held by running container '{mine}'",
    )  # fmt: skip
    assert error["error"]["details"] == {"gpu": "1:1", "holder": mine}
    status, error = await setup.create("admin", f"{ns}-third", [1])
    assert (status, error["error"]["message"]) == (
        422,
        "gpu_ids: GPU 1 is in MIG mode, so it is given out only as its MIG slices, never whole; "
        "ask for one of its slices: 1:1, 1:2 (see GET /gpus)",
    )
    status, error = await setup.create("admin", f"{ns}-third", ["1:5"])
    assert (status, error["error"]["message"]) == (
        422,
        "gpu_ids: 1:5 is not a MIG slice of GPU 1 (its slices: 1:1 (3g.40gb), 1:2 (3g.40gb))",
    )

    # Inside, each sees its own slice, by its MIG UUID, as a user logged in by SSH does.
    seen = ssh(alice["ssh-port"], "alice", f"pw-{mine}", "echo $NVIDIA_VISIBLE_DEVICES")
    assert seen.stdout == f"{setup.slices[0]}\n", seen.stderr
    seen = ssh(bob["ssh-port"], "bob", f"pw-{theirs}", "echo $NVIDIA_VISIBLE_DEVICES")
    assert seen.stdout == f"{setup.slices[1]},{setup.gpu_0}\n", seen.stderr
    container_labels = inspect(setup.rig, mine)["Config"]["Labels"]
    assert container_labels["deepdockd.gpu-indices"] == "1:1"
    assert container_labels["deepdockd.gpu-uuids"] == setup.slices[0]
    status, listed = await setup.call("bob", "GET", f"/containers/{theirs}")
    assert (status, listed["gpus"], listed["gpu_uuids"]) == (
        200, ["1:2", "0"], [setup.slices[1], setup.gpu_0],
    )  # fmt: skip

    # /gpus: GPU 1 in MIG mode, each slice with its memory and, for who may see it, its holder.
    body = await setup.wait_for_gpus(
        "admin", lambda b: gpu_1(b)["mig_slices"][0]["memory_used_mib"]
    )
    assert gpu_1(body)["mig_mode"] is True
    assert body["gpus"][0]["mig_mode"] is None
    assert gpu_1(body)["mig_slices"] == [
        {
            "id": "1:1", "uuid": setup.slices[0], "profile": "3g.40gb", "memory_total_mib": 40192.0,
            "memory_used_mib": 2048.0, "held": True,
            "holders": [{"container": mine, "owner": "alice"}],
        },
        {
            "id": "1:2", "uuid": setup.slices[1], "profile": "3g.40gb", "memory_total_mib": 40192.0,
            "memory_used_mib": 512.0, "held": True,
            "holders": [{"container": theirs, "owner": "bob"}],
        },
    ]  # fmt: skip
    status, as_alice = await setup.call("alice", "GET", "/gpus")
    assert [(s["held"], s["holders"]) for s in gpu_1(as_alice)["mig_slices"]] == [
        (True, [{"container": mine, "owner": "alice"}]),
        (True, []),  # bob's: held, by whom is not hers to know
    ]
    assert gpu_1(as_alice)["containers"] == []  # no one holds GPU 1 whole

    # A process on alice's slice is hers; bob's process on her slice is stray.
    alice_pid, bob_pid = host_pid(setup.rig, mine), host_pid(setup.rig, theirs)
    on_slice_1 = {"gpu_instance_id": 1, "compute_instance_id": 0}
    setup.put_processes(
        {
            1: [
                {"pid": alice_pid, "used_memory_mib": 1500, **on_slice_1},
                {"pid": bob_pid, "used_memory_mib": 100, **on_slice_1},
            ]
        }
    )
    body = await setup.wait_for_gpus("admin", lambda b: len(gpu_1(b)["processes"] or []) == 2)
    attributed = {p["pid"]: (p["kind"], p["container"], p["owner"], p["stray"]) for p in gpu_1(body)["processes"]}  # fmt: skip
    assert attributed == {
        alice_pid: ("deepdockd", mine, "alice", False),
        bob_pid: ("deepdockd", theirs, "bob", True),
    }
    status, listed = await setup.call("alice", "GET", f"/containers/{mine}")
    assert listed["gpu_memory_used_mib"] == 1500.0

    # Removing alice's container frees her slice for the next create.
    status, removed = await setup.call("alice", "DELETE", f"/containers/{mine}?force=true")
    assert status == 200, removed
    status, third = await setup.create("admin", f"{ns}-third", ["1:1"])
    assert status == 201, third
    body = await setup.wait_for_gpus(
        "admin", lambda b: gpu_1(b)["mig_slices"][0]["holders"][0]["container"] == f"{ns}-third"
    )
    assert gpu_1(body)["mig_slices"][0]["holders"] == [
        {"container": f"{ns}-third", "owner": "admin"}
    ]


# --- idle reclaim of slices ---

IDLE_S = 3


@pytest.mark.parametrize(
    "setup",
    [{"idle_gpu_minutes": IDLE_S / 60, "stop_warning_minutes": 1 / 60, "auth": True}],
    indirect=True,
)
async def test_a_slice_with_no_process_is_reclaimed_as_idle_and_one_in_use_is_not(
    setup: Setup,
) -> None:
    """A MIG slice has no utilization of its own: it is idle while no process runs on it."""
    ns = setup.namespace
    idle, busy = f"{ns}-idle", f"{ns}-busy"
    # The idle clock of the idle slice's container starts with it: before bob's create, which
    # may take a second or more on a loaded machine.
    asked = time.monotonic()
    assert (await setup.create("alice", idle, ["1:1"]))[0] == 201
    assert (await setup.create("bob", busy, ["1:2"]))[0] == 201
    made = time.monotonic()
    on_slice_2 = {"gpu_instance_id": 2, "compute_instance_id": 0}
    setup.put_processes(
        {1: [{"pid": host_pid(setup.rig, busy), "used_memory_mib": 64, **on_slice_2}]}
    )

    deadline = made + IDLE_S + 30
    while True:
        status, stopped = await setup.call("alice", "GET", f"/containers/{idle}")
        assert status == 200, stopped
        if stopped["status"] == "exited":
            break
        assert time.monotonic() < deadline, f"the idle slice's container still runs: {stopped}"
        await asyncio.sleep(0.2)
    assert time.monotonic() - asked >= IDLE_S
    assert re.fullmatch(
        r"idle GPUs: MIG slice 1:1 with no process for \d+ s \(idle_gpu_minutes is 0\.05\)",
        stopped["stopped_reason"],
    ), stopped["stopped_reason"]
    # The slice with a process on it has had the idle window too, and more.
    await asyncio.sleep(max(0.0, made + IDLE_S + 2 - time.monotonic()))
    status, running = await setup.call("bob", "GET", f"/containers/{busy}")
    assert (status, running["status"], running["stopped_reason"]) == (200, "running", None)

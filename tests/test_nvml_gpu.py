"""The NVML layer against a real NVIDIA GPU, checked against nvidia-smi.

Run only where a GPU is: DEEPDOCKD_TEST_REAL_NVML=1 pytest -m gpu tests/test_nvml_gpu.py
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from deepdockd.accounting import attribute
from deepdockd.fairshare.idle import IdleClock
from deepdockd.gpu import nvml
from deepdockd.gpu.procfs import origin_of
from deepdockd.gpu.sampler import GpuSampler, ProcessSnapshot

pytestmark = pytest.mark.gpu


def smi(fields: str) -> list[list[str | None]]:
    """nvidia-smi's answer, one row per GPU; "[N/A]" and "[Not Supported]" become None."""
    output = subprocess.run(
        ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [[cell.strip() for cell in line.split(",")] for line in output.strip().splitlines()]
    return [[None if cell.startswith("[") else cell for cell in row] for row in rows]


@pytest.fixture
def inventory() -> Iterator[nvml.NvmlInventory]:
    found = nvml.start()
    try:
        yield found
    finally:
        nvml.stop()


def test_inventory_matches_nvidia_smi(inventory: nvml.NvmlInventory) -> None:
    rows = smi("index,uuid,name,memory.total,enforced.power.limit,driver_version")

    assert len(inventory.gpus) == len(rows) >= 1
    assert inventory.driver_version == rows[0][5]
    for gpu, (index, uuid, name, memory_total, power_limit, _) in zip(
        inventory.gpus, rows, strict=True
    ):
        assert (str(gpu.index), gpu.uuid, gpu.name) == (index, uuid, name)
        assert memory_total is not None
        assert gpu.memory_total_mib == pytest.approx(float(memory_total), abs=1)
        if power_limit is None:
            assert gpu.power_limit_w is None
        else:
            assert gpu.power_limit_w == pytest.approx(float(power_limit), abs=1)


READING_FIELDS = "memory.used,utilization.gpu,power.draw,temperature.gpu,fan.speed"
ROUNDS = 5


def smi_number(cell: str | None) -> float | None:
    return None if cell is None else float(cell)


def bracket(before: float | None, after: float | None, margin: float) -> tuple[float, float]:
    """The range a reading taken between two nvidia-smi readings may honestly fall in."""
    assert before is not None
    assert after is not None
    return min(before, after) - margin, max(before, after) + margin


def test_readings_match_nvidia_smi_read_back_to_back(inventory: nvml.NvmlInventory) -> None:
    """Each round reads nvidia-smi, then NVML, then nvidia-smi again. What is stable on an
    idle GPU (memory, temperature) must agree with nvidia-smi to its rounding; what moves
    (power, utilization, fan) must fall between the two nvidia-smi readings around it. A
    field is None exactly where nvidia-smi says N/A or Not Supported."""
    for _ in range(ROUNDS):
        for gpu in inventory.gpus:
            before = [smi_number(c) for c in smi(READING_FIELDS)[gpu.index]]
            reading = nvml.read(gpu.index)
            after = [smi_number(c) for c in smi(READING_FIELDS)[gpu.index]]
            ours = [
                reading.memory_used_mib, reading.utilization_pct, reading.power_w,
                reading.temperature_c, reading.fan_pct,
            ]  # fmt: skip

            assert reading.error is None
            assert [v is None for v in ours] == [v is None for v in before], (ours, before)
            memory, utilization, power, temperature, fan = zip(before, after, ours, strict=True)
            # nvidia-smi prints whole MiB and °C: the same quantity differs by rounding only.
            assert memory[2] == pytest.approx(memory[0], abs=2), "memory.used"
            assert temperature[2] == pytest.approx(temperature[0], abs=1), "temperature.gpu"
            for name, (first, last, value), margin in (
                ("power.draw", power, 10), ("utilization.gpu", utilization, 10), ("fan.speed", fan, 5),
            ):  # fmt: skip
                if value is not None:
                    low, high = bracket(first, last, margin)
                    assert low <= value <= high, (name, first, value, last)


async def test_sampler_keeps_points_for_every_real_gpu() -> None:
    sampler = GpuSampler(interval_s=0.05, bucket_s=0.25, retention_s=5, retry_interval_s=1)
    await sampler.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if sampler.gpus and all(len(sampler.history(g.index)) >= 2 for g in sampler.gpus):
                break
        assert sampler.gpus
        for gpu in sampler.gpus:
            points = list(sampler.history(gpu.index))
            assert len(points) >= 2
            fields = [p.fields() for p in points]
            assert all(f["memory_used"] is not None for f in fields)
            assert all(f["temperature"] is not None for f in fields)
            assert [s.error for s in sampler.statuses()] == [None] * len(sampler.gpus)
    finally:
        await sampler.stop()


def test_memory_used_leaves_out_what_the_driver_reserves(inventory: nvml.NvmlInventory) -> None:
    """As nvidia-smi shows it: an idle H100 has 0 MiB used and about 480 MiB reserved, which
    NVML's v1 call counts as used."""
    for gpu in inventory.gpus:
        used, reserved = smi("memory.used,memory.reserved")[gpu.index]
        reading = nvml.read(gpu.index)
        assert used is not None
        assert reserved is not None
        assert reading.memory_used_mib == pytest.approx(float(used), abs=16)
        assert reading.memory_reserved_mib == pytest.approx(float(reserved), abs=16)


# A CUDA process: 1 GiB of device memory, then matrix products to keep the SMs busy.
CUDA_WORKER = """
import time, torch
held = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device="cuda")
a = torch.randn(4096, 4096, device="cuda")
print("ready", flush=True)
end = time.time() + 60
while time.time() < end:
    a = a @ a
    a = a / a.norm()
    torch.cuda.synchronize()
"""


@pytest.fixture
def cuda_process() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", CUDA_WORKER], stdout=subprocess.PIPE, text=True
    ) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", "the CUDA worker did not start"
            yield worker
        finally:
            worker.kill()


def test_a_cuda_process_is_listed_with_its_pid_memory_and_sm_share(
    inventory: nvml.NvmlInventory, cuda_process: subprocess.Popen[str]
) -> None:
    pid = cuda_process.pid
    deadline = time.monotonic() + 20
    busy = None
    while time.monotonic() < deadline:
        found = {p.pid: p for p in nvml.processes(0) or []}
        if pid in found and (found[pid].sm_utilization or 0) > 0:
            busy = found[pid]
            break
        time.sleep(0.2)
    assert busy is not None, f"pid {pid} never listed busy on GPU 0: {nvml.processes(0)}"
    apps = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    smi_memory = {int(p): float(m) for p, m in (line.split(",") for line in apps.splitlines())}
    assert busy.memory_used_mib == pytest.approx(smi_memory[pid], abs=16)
    assert busy.memory_used_mib is not None
    assert busy.memory_used_mib >= 1024

    # Where it comes from: no container, this user, its command; so a host process.
    origin = origin_of(pid)
    assert origin.container_id is None
    assert origin.command is not None
    assert origin.command.startswith(sys.executable)
    snapshot = ProcessSnapshot(number=1, processes={0: (busy,)}, origins={pid: origin})
    (use,) = attribute(snapshot, [], {}).by_gpu[0] or ()
    assert (use.kind, use.pid, use.container, use.stray) == ("host", pid, None, False)


async def test_the_idle_clock_sees_a_real_gpu_idle_then_busy() -> None:
    """Idle reclaim's judgement on real samples: an idle GPU counts up; under a CUDA load its
    utilization passes the threshold and the count starts again (fair share, issue 15)."""
    sampler = GpuSampler(interval_s=0.1, bucket_s=1, retention_s=10, retry_interval_s=1)
    clock = IdleClock()

    async def follow() -> None:
        number = 0
        while True:
            number = (await sampler.next_processes(number)).number
            clock.observe(sampler.statuses(), 5, time.monotonic())

    await sampler.start()
    feeding = asyncio.create_task(follow())
    try:
        await asyncio.sleep(3)
        idle_s = clock.idle_for(0, time.monotonic(), max_gap_s=1)
        assert idle_s >= 2, f"GPU 0 not idle: {sampler.statuses()[0].latest}"
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CUDA_WORKER, stdout=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while clock.idle_for(0, time.monotonic(), max_gap_s=1) > 0:
                assert time.monotonic() < deadline, "a CUDA load never broke the idle run"
                await asyncio.sleep(0.1)
            latest = sampler.statuses()[0].latest
            assert latest is not None
            assert (latest.utilization_pct or 0) > 5, latest
        finally:
            worker.kill()
            await worker.wait()
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        await sampler.stop()

"""The NVML layer against a real NVIDIA GPU, checked against nvidia-smi.

Run only where a GPU is: DEEPDOCKD_TEST_REAL_NVML=1 pytest -m gpu tests/test_nvml_gpu.py
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest

from deepdockd.gpu import nvml
from deepdockd.gpu.sampler import GpuSampler

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
        assert gpu.memory_total_mib == pytest.approx(float(memory_total or 0), abs=1)
        if power_limit is not None:
            assert gpu.power_limit_w == pytest.approx(float(power_limit), abs=1)


def test_readings_fall_within_what_nvidia_smi_reports(inventory: nvml.NvmlInventory) -> None:
    for gpu in inventory.gpus:
        reading = nvml.read(gpu.index)
        [[memory_used, utilization, power, temperature, fan]] = [
            smi("memory.used,utilization.gpu,power.draw,temperature.gpu,fan.speed")[gpu.index]
        ]
        assert reading.error is None
        assert reading.memory_used_mib == pytest.approx(float(memory_used or 0), abs=512)
        assert reading.utilization_pct is not None
        assert 0 <= reading.utilization_pct <= 100
        assert utilization is not None
        assert 0 <= float(utilization) <= 100
        if power is not None:
            assert reading.power_w == pytest.approx(float(power), abs=75)
        assert reading.temperature_c == pytest.approx(float(temperature or 0), abs=5)
        assert (reading.fan_pct is None) == (fan is None)


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

"""GPM, the profiling metrics of Hopper and newer GPUs: the real pynvml code against the
simulated NVML (tests/nvml-sim: a GPU's "gpm" readings), then the daemon's answers (GET /gpus,
GET /metrics/gpus, the Prometheus exposition) in dcgm-exporter's units."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.gpu import nvml

from tests.support.api import Client, ClientFactory
from tests.support.gpus import sim_gpu

SimGpus = Callable[..., Path]
MIB = 1024 * 1024

SM_UTIL = [20, 60, 90]  # %, what the simulated GPM gives, one value per GPM sample in turn
GPM = {"sm_util": SM_UTIL, "any_tensor_util": [10], "pcie_tx_per_sec": [100]}


@pytest.fixture
def started() -> Iterator[Callable[[], nvml.NvmlInventory]]:
    """nvml.start, stopped at the test's end."""
    yield nvml.start
    nvml.stop()


# --- nvml.py against the simulated GPM ---


def test_each_read_gives_the_metrics_since_the_previous_one(
    sim_gpus: SimGpus, started: Callable[[], nvml.NvmlInventory]
) -> None:
    sim_gpus(sim_gpu(0, gpm=GPM), sim_gpu(1))
    started()

    # The first read takes the first GPM sample: nothing to compare it with yet.
    first = nvml.read(0)
    assert (first.sm_active, first.tensor_active, first.error) == (None, None, None)
    # Then each read's metrics are those of its new sample (the simulator gives sample n
    # reading n), in dcgm-exporter's units: ratios and bytes/s.
    reads = [nvml.read(0) for _ in range(4)]
    assert [r.sm_active for r in reads] == pytest.approx([0.6, 0.9, 0.2, 0.6])
    assert [r.tensor_active for r in reads] == pytest.approx([0.1] * 4)
    assert [r.pcie_tx_bytes_per_s for r in reads] == pytest.approx([100 * MIB] * 4)
    # A metric the GPU does not give is None, the others are there.
    assert {r.dram_active for r in reads} == {r.nvlink_rx_bytes_per_s for r in reads} == {None}
    assert all(r.error is None for r in reads)

    # A GPU without GPM (an A100, say) reads as before, with no profiling metrics.
    other = nvml.read(1)
    assert other.error is None
    assert other.utilization_pct is not None
    assert (other.sm_active, other.tensor_active, other.pcie_tx_bytes_per_s) == (None,) * 3


def test_a_restart_of_nvml_starts_the_gpm_samples_again(
    sim_gpus: SimGpus, started: Callable[[], nvml.NvmlInventory]
) -> None:
    sim_gpus(sim_gpu(0, gpm=GPM))
    started()
    assert [nvml.read(0).sm_active for _ in range(2)] == [None, pytest.approx(0.6)]
    nvml.stop()  # frees the samples; NVML's last shutdown forgets the simulated GPUs

    started()
    assert [nvml.read(0).sm_active for _ in range(2)] == [None, pytest.approx(0.6)]


def test_a_lost_gpu_is_an_error_and_its_metrics_come_back_with_it(
    sim_gpus: SimGpus, started: Callable[[], nvml.NvmlInventory], tmp_path: Path
) -> None:
    lost = tmp_path / "gpu0.lost"
    sim_gpus(sim_gpu(0, gpm=GPM, lost_if_exists=str(lost)))
    started()
    nvml.read(0)
    lost.touch()
    reading = nvml.read(0)
    assert reading.error == "GPU is lost"
    assert reading.sm_active is None
    lost.unlink()
    # The sample before the loss is still the previous one: the next read has metrics.
    back = nvml.read(0)
    assert back.error is None
    assert back.sm_active == pytest.approx(0.6)


def test_a_pynvml_without_gpm_is_a_gpu_without_gpm(
    sim_gpus: SimGpus, started: Callable[[], nvml.NvmlInventory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvidia-ml-py before 11.520 has no GPM calls: no metrics, and no error."""
    monkeypatch.delattr(pynvml, "nvmlGpmQueryDeviceSupport")
    sim_gpus(sim_gpu(0, gpm=GPM))
    started()
    readings = [nvml.read(0) for _ in range(3)]
    assert [(r.sm_active, r.error) for r in readings] == [(None, None)] * 3


def test_the_simulator_refuses_a_gpm_metric_it_does_not_have(
    sim_gpus: SimGpus, capfd: pytest.CaptureFixture[str]
) -> None:
    sim_gpus(sim_gpu(0, gpm={"sm_utilisation": [1]}))
    with pytest.raises(nvml.NvmlUnavailable):
        nvml.start()
    assert "gpm.sm_utilisation: the simulator has no such GPM metric" in capfd.readouterr().err


# --- what the daemon shows ---


async def get_json(client: Client, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def wait_for(client: Client, path: str, condition: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + 15
    while True:
        body = await get_json(client, path)
        if condition(body):
            return body
        assert time.monotonic() < deadline, f"{path}: never; last: {body}"
        await asyncio.sleep(0.05)


async def test_gpus_the_series_and_the_exporter_show_the_gpm_metrics(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    sim_gpus(sim_gpu(0, gpm=GPM), sim_gpu(1))
    fast = {"gpu_sample_interval": 0.02, "gpu_bucket": 0.1, "gpu_retention": 60.0}
    client = await aiohttp_client(create_app(Config(**{**config.__dict__, **fast})))

    series = await wait_for(
        client, "/metrics/gpus",
        lambda b: len(b.get("0", [])) >= 3 and b["0"][-1]["sm_active"] is not None,
    )  # fmt: skip
    # GPU 0: each point's sm_active is a mean of the simulated values (20, 60, 90 %).
    gpm_points = [p for p in series["0"] if p["sm_active"] is not None]
    assert all(0.2 <= p["sm_active"] <= 0.9 for p in gpm_points)
    assert [p["tensor_active"] for p in gpm_points] == pytest.approx([0.1] * len(gpm_points))
    assert {p["sm_occupancy"] for p in series["0"]} == {p["dram_active"] for p in series["0"]}
    assert {p["sm_occupancy"] for p in series["0"]} == {None}  # not in its "gpm"
    # GPU 1 has no GPM: null, not 0.
    assert all(
        p[key] is None for p in series["1"]
        for key in ("sm_active", "sm_occupancy", "tensor_active", "dram_active")
    )  # fmt: skip
    # Merged into windows, too.
    stepped = await get_json(client, "/metrics/gpus?step=1")
    tensor_windows = [p["tensor_active"] for p in stepped["0"] if p["tensor_active"] is not None]
    assert tensor_windows == pytest.approx([0.1] * len(tensor_windows))
    assert tensor_windows
    assert {p["sm_active"] for p in stepped["1"]} == {None}

    gpus = (await get_json(client, "/gpus"))["gpus"]
    profiling = gpus[0]["profiling"]
    assert profiling["sm_active"] in [pytest.approx(v / 100) for v in SM_UTIL]
    assert profiling == {
        "graphics_active": None,
        "sm_active": profiling["sm_active"],
        "sm_occupancy": None,
        "tensor_active": pytest.approx(0.1),
        "dram_active": None,
        "pcie_tx_bytes_per_s": pytest.approx(100 * MIB),
        "pcie_rx_bytes_per_s": None,
        "nvlink_tx_bytes_per_s": None,
        "nvlink_rx_bytes_per_s": None,
    }
    assert gpus[1]["profiling"] is None

    response = await client.get("/metrics/prometheus")
    text = await response.text()
    assert response.status == 200, text
    samples = exposition(text)
    assert samples["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"] == {"0": pytest.approx(0.1)}
    assert samples["DCGM_FI_PROF_PCIE_TX_BYTES"] == {"0": 100 * MIB}
    assert samples["DCGM_FI_PROF_SM_ACTIVE"]["0"] in [pytest.approx(v / 100) for v in SM_UTIL]
    # The same labels as the other GPU gauges.
    labels = re.findall(r"^(DCGM_FI_(?:DEV_GPU_UTIL|PROF_SM_ACTIVE))(\{.*\}) ", text, re.M)
    gpu0 = [(name, found) for name, found in labels if 'gpu="0"' in found]
    assert dict(gpu0)["DCGM_FI_DEV_GPU_UTIL"] == dict(gpu0)["DCGM_FI_PROF_SM_ACTIVE"]
    # A metric no GPU gives is declared, with no sample (absent, not 0).
    assert "# TYPE DCGM_FI_PROF_DRAM_ACTIVE gauge" in text
    assert not re.search(r"^DCGM_FI_PROF_DRAM_ACTIVE\{", text, re.M)
    assert "DCGM_FI_PROF_DRAM_ACTIVE" not in samples
    assert all(set(by_gpu) == {"0"} for name, by_gpu in samples.items() if "_PROF_" in name)


def exposition(text: str) -> dict[str, dict[str, float]]:
    """The DCGM_FI_* samples of an exposition: name -> {gpu label: value}."""
    found: dict[str, dict[str, float]] = {}
    for name, labels, value in re.findall(r"^(DCGM_FI_\w+)\{(.*)\} (\S+)$", text, re.M):
        gpu = re.search(r'\bgpu="(\d+)"', labels)
        assert gpu, labels
        found.setdefault(name, {})[gpu[1]] = float(value)
    return found


# --- a real GPU (DEEPDOCKD_TEST_REAL_NVML=1 pytest -m gpu tests/test_gpm.py) ---

# GPUs with GPM: Hopper and newer, by the names NVML gives them.
WITH_GPM = re.compile(r"\b(H100|H200|H800|H20|GH200|B100|B200|GB200|B300)\b")

# Half-precision matrix products for a minute: the tensor cores busy.
TENSOR_WORKER = """
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
print("ready", flush=True)
end = time.time() + 60
while time.time() < end:
    b = a @ a
    torch.cuda.synchronize()
"""


@pytest.mark.gpu
def test_a_real_gpu_has_gpm_where_it_is_hopper_or_newer_and_it_moves_under_a_matmul() -> None:
    inventory = nvml.start()
    try:
        for gpu in inventory.gpus:
            nvml.read(gpu.index)  # the first GPM sample
        time.sleep(0.5)
        readings = {gpu.index: nvml.read(gpu.index) for gpu in inventory.gpus}
        for gpu in inventory.gpus:
            has_gpm = readings[gpu.index].sm_active is not None
            assert has_gpm == bool(WITH_GPM.search(gpu.name)), (gpu.name, readings[gpu.index])
        hopper = [gpu for gpu in inventory.gpus if WITH_GPM.search(gpu.name)]
        if not hopper:
            return  # no GPM here, and none reported: all there is to check on this GPU
        index = hopper[0].index
        env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(index)}
        with subprocess.Popen(
            [sys.executable, "-c", TENSOR_WORKER], stdout=subprocess.PIPE, text=True, env=env
        ) as worker:
            try:
                assert worker.stdout is not None
                assert worker.stdout.readline().strip() == "ready"
                loaded = []
                for _ in range(20):
                    time.sleep(0.5)
                    loaded.append(nvml.read(index))
            finally:
                worker.kill()
        assert max(r.sm_active or 0 for r in loaded) > 0.5, loaded
        assert max(r.tensor_active or 0 for r in loaded) > 0.1, loaded
        assert max(r.dram_active or 0 for r in loaded) > 0, loaded
    finally:
        nvml.stop()

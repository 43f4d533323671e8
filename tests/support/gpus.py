"""Simulated GPUs: the NVML library built from tests/nvml-sim, and one GPU's description."""

from __future__ import annotations

from pathlib import Path

# Built by `make nvml-sim` (tests/nvml-sim/nvml_sim.c).
NVML_SIM_LIBRARY = Path(__file__).parents[2] / "build" / "nvml-sim" / "libnvidia-ml.so.1"


def sim_gpu(index: int, *, stem: str = "d0c0d0c0", **overrides: object) -> dict[str, object]:
    """One simulated GPU: an H100 without a fan, readings that move. Its UUID is
    ``GPU-{stem}-0000-4000-8000-{index}``: a test that gives containers GPUs passes the stem of
    its own (the ``gpu_stem`` fixture), so that a container another test left behind, holding
    "GPU 0" by UUID, never holds this test's GPU 0."""
    gpu: dict[str, object] = {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-{stem}-0000-4000-8000-{index:012d}",
        "memory_total_mib": 81559,
        "power_limit_w": 700,
        "memory_used_mib": [1000 + index, 2000, 3000, 4500],
        "utilization": [5, 17, 42, 88, 100, 63],
        "power_w": [70.125, 95.5, 300.25, 650],
        "temperature_c": [35, 41, 58, 66, 70],
        "fan_pct": None,
    }
    gpu.update(overrides)
    return gpu

"""GPU Performance Monitoring (GPM): the profiling metrics that NVML itself gives on Hopper and
newer GPUs, without DCGM. This table names each metric three ways: deepdockd's field (of
GpuReading, the API and the series), nvml.h's metric id, and dcgm-exporter's name, with the
factor from NVML's unit (percent, MiB/s) to dcgm-exporter's (a ratio 0..1, bytes/s). The NVML
calls are in nvml.py, the one door to pynvml."""

from __future__ import annotations

from dataclasses import dataclass

_MIB = 1024 * 1024


@dataclass(frozen=True)
class GpmMetric:
    field: str  # GpuReading's field, and its name in the API
    metric_id: int  # nvml.h's NVML_GPM_METRIC_*
    scale: float  # NVML's unit -> dcgm-exporter's
    dcgm_name: str
    help: str  # dcgm-exporter's (etc/default-counters.csv)


METRICS: tuple[GpmMetric, ...] = (
    GpmMetric(
        "graphics_active",
        1,
        0.01,
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "Ratio of time the graphics engine is active.",
    ),
    GpmMetric(
        "sm_active",
        2,
        0.01,
        "DCGM_FI_PROF_SM_ACTIVE",
        "The ratio of cycles an SM has at least 1 warp assigned.",
    ),
    GpmMetric(
        "sm_occupancy",
        3,
        0.01,
        "DCGM_FI_PROF_SM_OCCUPANCY",
        "The ratio of number of warps resident on an SM.",
    ),
    GpmMetric(
        "tensor_active",
        5,
        0.01,
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
    ),
    GpmMetric(
        "dram_active",
        10,
        0.01,
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
    ),
    GpmMetric(
        "pcie_tx_bytes_per_s",
        20,
        _MIB,
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "The rate of data transmitted over the PCIe bus - including both protocol headers and"
        " data payloads - in bytes per second.",
    ),
    GpmMetric(
        "pcie_rx_bytes_per_s",
        21,
        _MIB,
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "The rate of data received over the PCIe bus - including both protocol headers and"
        " data payloads - in bytes per second.",
    ),
    GpmMetric(
        "nvlink_tx_bytes_per_s",
        61,
        _MIB,
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "The rate of data transmitted over NVLink, not including protocol headers, in bytes"
        " per second.",
    ),
    GpmMetric(
        "nvlink_rx_bytes_per_s",
        60,
        _MIB,
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "The rate of data received over NVLink, not including protocol headers, in bytes per"
        " second.",
    ),
)

# The fields that the time series keeps, as ratios 0..1 (the byte rates: GET /gpus only).
SERIES_FIELDS = ("sm_active", "sm_occupancy", "tensor_active", "dram_active")


def profiling(reading: object | None) -> dict[str, float | None] | None:
    """A reading's GPM metrics by field, as GET /gpus shows them; None where it has none (no
    GPM on that GPU, or no second sample yet)."""
    if reading is None:
        return None
    values: dict[str, float | None] = {m.field: getattr(reading, m.field) for m in METRICS}
    return values if any(v is not None for v in values.values()) else None

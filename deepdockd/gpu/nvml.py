"""Every NVML call deepdockd makes, and the only module that imports pynvml.

All functions block (the driver can take milliseconds per call, or hang on a sick GPU): the
sampler runs them in one worker thread of its own. A field that a device does not support
is None for that field only; any other error on a device is reported as that device's
``error`` and its fields are None, so one sick GPU never stops the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pynvml

from deepdockd.gpu import gpm

T = TypeVar("T")

_BYTES_PER_MIB = 1024 * 1024

# Handles of the devices found by start(), by index.
_handles: list[Any] = []
# Whether each device answers nvmlDeviceGetMemoryInfo_v2 (drivers before r510 do not).
_memory_v2: dict[int, bool] = {}
# Per device, the newest process-utilization sample seen (NVML's microseconds): the next
# read asks only for samples after it.
_last_sample_us: dict[int, int] = {}
# Per GPU in MIG mode, its slices' handles by slice index, and (GPU instance, compute
# instance) -> slice index, to name the slice of each process NVML lists on the parent.
_mig_handles: dict[int, dict[int, Any]] = {}
_mig_by_instance: dict[int, dict[tuple[int, int], int]] = {}


class NvmlUnavailable(Exception):
    """No usable NVML on this host (no library, no driver, no permission); str() says why."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str  # nvidia-smi --query-gpu=uuid
    name: str  # nvidia-smi --query-gpu=name
    memory_total_mib: float | None  # nvidia-smi --query-gpu=memory.total
    power_limit_w: float | None  # nvidia-smi --query-gpu=enforced.power.limit
    # nvidia-smi --query-gpu=mig.mode.current: True/False; None where the GPU has no MIG
    mig_mode: bool | None = None
    slices: tuple[MigSlice, ...] = ()  # its MIG devices (nvidia-smi -L), while in MIG mode


@dataclass(frozen=True)
class MigSlice:
    """A MIG device of a GPU in MIG mode: a GPU of its own to a container."""

    index: int  # of nvmlDeviceGetMigDeviceHandleByIndex: the API names it "<gpu>:<index>"
    uuid: str  # "MIG-...", what NVIDIA_VISIBLE_DEVICES takes
    profile: str  # e.g. "1g.10gb": the end of the name NVML gives the MIG device
    memory_total_mib: float | None
    gpu_instance_id: int | None  # what NVML's process lists on the parent GPU name it by
    compute_instance_id: int | None


@dataclass(frozen=True)
class GpuReading:
    memory_used_mib: float | None  # nvidia-smi --query-gpu=memory.used (reserved excluded)
    utilization_pct: float | None  # nvidia-smi --query-gpu=utilization.gpu
    power_w: float | None  # nvidia-smi --query-gpu=power.draw
    temperature_c: float | None  # nvidia-smi --query-gpu=temperature.gpu
    fan_pct: float | None  # nvidia-smi --query-gpu=fan.speed; None on passively cooled GPUs
    memory_reserved_mib: float | None = None  # nvidia-smi --query-gpu=memory.reserved
    memory_free_mib: float | None = None  # nvidia-smi --query-gpu=memory.free
    sm_clock_mhz: float | None = None  # nvidia-smi --query-gpu=clocks.sm
    memory_clock_mhz: float | None = None  # nvidia-smi --query-gpu=clocks.mem
    # GPM profiling metrics (gpm.py), in dcgm-exporter's units: ratios 0..1 and bytes/s. None
    # where the GPU has no GPM (before Hopper), and at the first read (GPM needs two samples).
    graphics_active: float | None = None
    sm_active: float | None = None
    sm_occupancy: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None
    pcie_tx_bytes_per_s: float | None = None
    pcie_rx_bytes_per_s: float | None = None
    nvlink_tx_bytes_per_s: float | None = None
    nvlink_rx_bytes_per_s: float | None = None
    error: str | None = None  # why the device could not be read (e.g. "GPU is lost")
    # Memory used on each MIG slice, by slice index (nvmlDeviceGetMemoryInfo on its handle)
    mig_memory_used_mib: Mapping[int, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuProcess:
    """A process that NVML sees on a GPU, by its host pid."""

    pid: int
    memory_used_mib: float | None  # None where the driver cannot say (nvidia-smi: N/A)
    sm_utilization: float | None  # % of the GPU's SMs, mean since the last read; None: unknown
    mig_slice: int | None = None  # the MIG slice it runs on (by index); None: none, or unknown


@dataclass(frozen=True)
class NvmlInventory:
    driver_version: str
    gpus: tuple[GpuInfo, ...]


def start() -> NvmlInventory:
    """Initialise NVML and list the GPUs; NvmlUnavailable when that cannot be done."""
    global _handles
    try:
        pynvml.nvmlInit()
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        _mig_handles.clear()
        _mig_by_instance.clear()
        gpus = tuple(_info(index, handle) for index, handle in enumerate(handles))
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML: {exc}") from None
    _handles = handles
    _memory_v2.clear()
    _last_sample_us.clear()
    _gpm_start(handles)
    return NvmlInventory(driver_version=driver, gpus=gpus)


def stop() -> None:
    global _handles
    _handles = []
    _memory_v2.clear()
    _last_sample_us.clear()
    _mig_handles.clear()
    _mig_by_instance.clear()
    _gpm_stop()
    with contextlib.suppress(pynvml.NVMLError):  # never initialised, or already shut down
        pynvml.nvmlShutdown()


def read(index: int) -> GpuReading:
    """One sample of GPU ``index``."""
    handle = _handles[index]
    errors: list[str] = []

    def field(call: Callable[[], T]) -> T | None:
        try:
            return call()
        except pynvml.NVMLError_NotSupported:
            return None
        except pynvml.NVMLError as exc:
            errors.append(str(exc))
            return None

    memory = field(lambda: _memory(index, handle))
    utilization = field(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
    power_mw = field(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
    temperature = field(
        lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
    )
    fan = field(lambda: pynvml.nvmlDeviceGetFanSpeed(handle))
    sm_clock = field(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
    memory_clock = field(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM))
    profiling = field(lambda: _gpm_read(index, handle)) or {}
    return GpuReading(
        **profiling,
        memory_used_mib=memory.used_mib if memory is not None else None,
        utilization_pct=float(utilization.gpu) if utilization is not None else None,
        power_w=power_mw / 1000 if power_mw is not None else None,
        temperature_c=float(temperature) if temperature is not None else None,
        fan_pct=float(fan) if fan is not None else None,
        memory_reserved_mib=memory.reserved_mib if memory is not None else None,
        memory_free_mib=memory.free_mib if memory is not None else None,
        sm_clock_mhz=float(sm_clock) if sm_clock is not None else None,
        memory_clock_mhz=float(memory_clock) if memory_clock is not None else None,
        error=errors[0] if errors else None,
        mig_memory_used_mib=_mig_memory(index),
    )


@dataclass(frozen=True)
class _Memory:
    used_mib: float
    reserved_mib: float | None  # None: a driver without the v2 call cannot tell it apart
    free_mib: float


def _memory(index: int, handle: Any) -> _Memory:
    """Memory as nvidia-smi shows it. The v1 call counts the driver's reserved memory
    (480 MiB on an idle H100) as used; v2 gives it apart. Drivers before r510 have no v2:
    then v1, once found missing, for good."""
    if _memory_v2.get(index, True):
        try:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_NotSupported):
            _memory_v2[index] = False
        else:
            _memory_v2[index] = True
            return _Memory(
                used_mib=memory.used / _BYTES_PER_MIB,
                reserved_mib=memory.reserved / _BYTES_PER_MIB,
                free_mib=memory.free / _BYTES_PER_MIB,
            )
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return _Memory(
        used_mib=memory.used / _BYTES_PER_MIB,
        reserved_mib=None,
        free_mib=memory.free / _BYTES_PER_MIB,
    )


def processes(index: int) -> list[GpuProcess] | None:
    """The compute and graphics processes on GPU ``index`` (a process that is both is listed
    once), each with its SM share since the last call; None when the device cannot list
    them (a lost GPU, or one whose driver does not support it)."""
    handle = _handles[index]
    used: dict[int, float | None] = {}
    on_slice: dict[int, int] = {}  # pid -> MIG slice index
    slices = _mig_by_instance.get(index, {})
    try:
        for listing in (
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            pynvml.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            for process in listing(handle):
                memory = process.usedGpuMemory
                if used.get(process.pid) is None:
                    used[process.pid] = memory / _BYTES_PER_MIB if memory is not None else None
                instance = (process.gpuInstanceId, process.computeInstanceId)
                if instance in slices:
                    on_slice[process.pid] = slices[instance]
    except pynvml.NVMLError:
        return None
    try:
        shares = _sm_shares(index, handle) if used else {}
    except pynvml.NVMLError:  # e.g. a sample that came between pynvml's two calls: next time
        shares = None
    return [
        GpuProcess(
            pid=pid,
            memory_used_mib=mib,
            sm_utilization=None if shares is None else shares.get(pid, 0.0),
            mig_slice=on_slice.get(pid),
        )
        for pid, mib in sorted(used.items())
    ]


def _sm_shares(index: int, handle: Any) -> dict[int, float] | None:
    """Each process's mean SM share over the samples since the last call; None where the
    device keeps no such samples. A process without a sample was idle."""
    try:
        samples = pynvml.nvmlDeviceGetProcessUtilization(handle, _last_sample_us.get(index, 0))
    except pynvml.NVMLError_NotFound:  # no sample since the last call: nothing ran
        return {}
    except pynvml.NVMLError_NotSupported:
        return None
    sums: dict[int, list[float]] = {}
    for sample in samples:
        if sample.timeStamp > _last_sample_us.get(index, 0):
            _last_sample_us[index] = sample.timeStamp
        sums.setdefault(sample.pid, []).append(float(sample.smUtil))
    return {pid: sum(values) / len(values) for pid, values in sums.items()}


def _info(index: int, handle: Any) -> GpuInfo:
    def optional(call: Callable[[], T]) -> T | None:
        try:
            return call()
        except pynvml.NVMLError:
            return None

    memory = optional(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    limit_mw = optional(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    return GpuInfo(
        index=index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_total_mib=memory.total / _BYTES_PER_MIB if memory is not None else None,
        power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
        **_mig(index, handle),
    )


# --- MIG: a GPU in MIG mode is given out as its slices ---


def _mig(index: int, handle: Any) -> dict[str, Any]:
    """GpuInfo's mig_mode and slices. The layout is read here, at start (and at each retry
    of NVML): changing it needs a GPU reset, and deepdockd a restart to see it."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:  # NOT_SUPPORTED: not a MIG-capable GPU
        return {"mig_mode": None, "slices": ()}
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return {"mig_mode": False, "slices": ()}
    slices = []
    handles: dict[int, Any] = {}
    try:
        slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except pynvml.NVMLError:  # its slices cannot be listed: none given out, the rest works
        slots = 0
    for slot in range(slots):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            found = _slice(slot, mig)
        except pynvml.NVMLError:  # NOT_FOUND: an empty slot, normal; else one not given out
            continue
        handles[slot] = mig
        slices.append(found)
        if found.gpu_instance_id is not None and found.compute_instance_id is not None:
            instance = (found.gpu_instance_id, found.compute_instance_id)
            _mig_by_instance.setdefault(index, {})[instance] = slot
    _mig_handles[index] = handles
    return {"mig_mode": True, "slices": tuple(slices)}


def _slice(slot: int, mig: Any) -> MigSlice:
    def optional(call: Callable[[], T]) -> T | None:
        try:
            return call()
        except pynvml.NVMLError:
            return None

    memory = optional(lambda: pynvml.nvmlDeviceGetMemoryInfo(mig))
    name = _text(pynvml.nvmlDeviceGetName(mig))  # "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    return MigSlice(
        index=slot,
        uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),
        profile=name.rpartition(" MIG ")[2] if " MIG " in name else name,
        memory_total_mib=memory.total / _BYTES_PER_MIB if memory is not None else None,
        gpu_instance_id=optional(lambda: pynvml.nvmlDeviceGetGpuInstanceId(mig)),
        compute_instance_id=optional(lambda: pynvml.nvmlDeviceGetComputeInstanceId(mig)),
    )


def _mig_memory(index: int) -> dict[int, float | None]:
    """Memory used on each slice of GPU ``index`` (none for a GPU not in MIG mode)."""
    used: dict[int, float | None] = {}
    for slot, mig in _mig_handles.get(index, {}).items():
        try:
            used[slot] = pynvml.nvmlDeviceGetMemoryInfo(mig).used / _BYTES_PER_MIB
        except pynvml.NVMLError:
            used[slot] = None
    return used


def _text(value: str | bytes) -> str:
    # nvidia-ml-py answers str; older releases answered bytes.
    return value.decode() if isinstance(value, bytes) else value


# --- GPM: profiling metrics on Hopper and newer (gpm.py names them) ---

# Per device with GPM: its two samples, [the previous, the next to take]; absent: no GPM.
_gpm_samples: dict[int, list[Any]] = {}
# The devices whose previous sample is taken: their next read gives metrics.
_gpm_primed: set[int] = set()


def _gpm_start(handles: list[Any]) -> None:
    """Find which devices have GPM, once, and give each two samples. An older driver or
    nvidia-ml-py without GPM, or a GPU before Hopper: no GPM, not an error."""
    _gpm_stop()
    query = getattr(pynvml, "nvmlGpmQueryDeviceSupport", None)
    if query is None:
        return
    for index, handle in enumerate(handles):
        samples: list[Any] = []
        try:
            if not query(handle).isSupportedDevice:
                continue
            for _ in range(2):
                samples.append(pynvml.nvmlGpmSampleAlloc())
        except pynvml.NVMLError:  # FUNCTION_NOT_FOUND on an older driver, NOT_SUPPORTED, ...
            _gpm_free(samples)
            continue
        _gpm_samples[index] = samples


def _gpm_stop() -> None:
    for samples in _gpm_samples.values():
        _gpm_free(samples)
    _gpm_samples.clear()
    _gpm_primed.clear()


def _gpm_free(samples: list[Any]) -> None:
    for sample in samples:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlGpmSampleFree(sample)


def _gpm_read(index: int, handle: Any) -> dict[str, float | None]:
    """A new sample, and the metrics between the previous one and it (GpuReading's fields);
    {} for a device without GPM, or at its first sample. A failed sample leaves the previous
    one in place: the next read spans both intervals."""
    samples = _gpm_samples.get(index)
    if samples is None:
        return {}
    previous, current = samples
    pynvml.nvmlGpmSampleGet(handle, current)
    samples.reverse()  # the sample just taken is the previous one of the next read
    if index not in _gpm_primed:
        _gpm_primed.add(index)
        return {}
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(gpm.METRICS)
    request.sample1 = previous
    request.sample2 = current
    for slot, metric in enumerate(gpm.METRICS):
        request.metrics[slot].metricId = metric.metric_id
    pynvml.nvmlGpmMetricsGet(request)
    values: dict[str, float | None] = {}
    for slot, metric in enumerate(gpm.METRICS):
        result = request.metrics[slot]
        ok = result.nvmlReturn == pynvml.NVML_SUCCESS
        values[metric.field] = float(result.value) * metric.scale if ok else None
    return values

"""Every NVML call deepdockd makes, and the only module that imports pynvml.

All functions block (the driver can take milliseconds per call, or hang on a sick GPU): the
sampler runs them in one worker thread of its own. A field that a device does not support
is None for that field only; any other error on a device is reported as that device's
``error`` and its fields are None, so one sick GPU never stops the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml

T = TypeVar("T")

_BYTES_PER_MIB = 1024 * 1024

# Handles of the devices found by start(), by index.
_handles: list[Any] = []
# Whether each device answers nvmlDeviceGetMemoryInfo_v2 (drivers before r510 do not).
_memory_v2: dict[int, bool] = {}
# Per device, the newest process-utilization sample seen (NVML's microseconds): the next
# read asks only for samples after it.
_last_sample_us: dict[int, int] = {}


class NvmlUnavailable(Exception):
    """No usable NVML on this host (no library, no driver, no permission); str() says why."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str  # nvidia-smi --query-gpu=uuid
    name: str  # nvidia-smi --query-gpu=name
    memory_total_mib: float | None  # nvidia-smi --query-gpu=memory.total
    power_limit_w: float | None  # nvidia-smi --query-gpu=enforced.power.limit


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
    error: str | None = None  # why the device could not be read (e.g. "GPU is lost")


@dataclass(frozen=True)
class GpuProcess:
    """A process that NVML sees on a GPU, by its host pid."""

    pid: int
    memory_used_mib: float | None  # None where the driver cannot say (nvidia-smi: N/A)
    sm_utilization: float | None  # % of the GPU's SMs, mean since the last read; None: unknown


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
        gpus = tuple(_info(index, handle) for index, handle in enumerate(handles))
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML: {exc}") from None
    _handles = handles
    _memory_v2.clear()
    _last_sample_us.clear()
    return NvmlInventory(driver_version=driver, gpus=gpus)


def stop() -> None:
    global _handles
    _handles = []
    _memory_v2.clear()
    _last_sample_us.clear()
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
    return GpuReading(
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
    try:
        for listing in (
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            pynvml.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            for process in listing(handle):
                memory = process.usedGpuMemory
                if used.get(process.pid) is None:
                    used[process.pid] = memory / _BYTES_PER_MIB if memory is not None else None
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
    )


def _text(value: str | bytes) -> str:
    # nvidia-ml-py answers str; older releases answered bytes.
    return value.decode() if isinstance(value, bytes) else value

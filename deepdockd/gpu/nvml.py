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
    memory_used_mib: float | None  # nvidia-smi --query-gpu=memory.used
    utilization_pct: float | None  # nvidia-smi --query-gpu=utilization.gpu
    power_w: float | None  # nvidia-smi --query-gpu=power.draw
    temperature_c: float | None  # nvidia-smi --query-gpu=temperature.gpu
    fan_pct: float | None  # nvidia-smi --query-gpu=fan.speed; None on passively cooled GPUs
    error: str | None = None  # why the device could not be read (e.g. "GPU is lost")


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
    return NvmlInventory(driver_version=driver, gpus=gpus)


def stop() -> None:
    global _handles
    _handles = []
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

    memory = field(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    utilization = field(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
    power_mw = field(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
    temperature = field(
        lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
    )
    fan = field(lambda: pynvml.nvmlDeviceGetFanSpeed(handle))
    return GpuReading(
        memory_used_mib=memory.used / _BYTES_PER_MIB if memory is not None else None,
        utilization_pct=float(utilization.gpu) if utilization is not None else None,
        power_w=power_mw / 1000 if power_mw is not None else None,
        temperature_c=float(temperature) if temperature is not None else None,
        fan_pct=float(fan) if fan is not None else None,
        error=errors[0] if errors else None,
    )


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

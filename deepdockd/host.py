"""The host's resources, and the only module that imports psutil."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

_BYTES_PER_MIB = 1024 * 1024


@dataclass(frozen=True)
class HostMetrics:
    ram_total_mb: int  # MiB, as DeepDock reported it
    ram_available_mb: int
    cpu_cores: int  # physical cores
    cpu_logical_cores: int
    load_average: tuple[float, float, float]  # 1, 5 and 15 minutes


def read_host_metrics() -> HostMetrics:
    """Blocking (reads /proc and /sys): call it in a thread."""
    memory = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or 1
    load = os.getloadavg()
    return HostMetrics(
        ram_total_mb=memory.total // _BYTES_PER_MIB,
        ram_available_mb=memory.available // _BYTES_PER_MIB,
        # psutil answers None where the topology is unknown (some VMs): count logical ones.
        cpu_cores=psutil.cpu_count(logical=False) or logical,
        cpu_logical_cores=logical,
        load_average=(load[0], load[1], load[2]),
    )


def ram_total_mib() -> int:
    return int(psutil.virtual_memory().total // (1024 * 1024))

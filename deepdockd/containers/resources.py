"""What a container may use of the host: its /dev/shm, memory, CPUs and processes. A request
asks; the config gives the defaults and the ceilings; Docker's cgroups hold the answer."""

from __future__ import annotations

import os
from dataclasses import dataclass

from deepdockd.config import Config
from deepdockd.errors import InvalidInput
from deepdockd.host import ram_total_mib

# The default /dev/shm when the config leaves it to us: half the host's RAM, at most this.
MAX_DEFAULT_SHM_MB = 16384


@dataclass(frozen=True)
class Resources:
    shm_size_mb: int  # MiB, like every "_mb" of the API
    memory_mb: int | None  # None: no limit
    cpus: float | None  # None: no limit
    pids_limit: int | None  # None: no limit


def resources_for(
    config: Config, *, shm_size_mb: int | None, memory_mb: int | None, cpus: float | None
) -> Resources:
    """The limits a create gets: what it asked for, else the config's default, else the
    config's ceiling; asking above a ceiling (or for more CPUs than the host has) is a 422
    that names it."""
    memory = _within(
        "memory_mb", memory_mb, config.default_memory_mb, config.max_memory_mb, "max_memory_mb"
    )
    cpu_count = os.cpu_count() or 1
    if cpus is not None and cpus > cpu_count:
        raise InvalidInput(
            f"cpus: {cpus:g} is more than this host's {cpu_count} CPUs",
            details={"fields": {"cpus": f"more than this host's {cpu_count} CPUs"}},
        )
    cpu_limit = _within("cpus", cpus, config.default_cpus, config.max_cpus, "max_cpus")
    return Resources(
        shm_size_mb=shm_size_mb or config.default_shm_size_mb or default_shm_size_mb(),
        memory_mb=int(memory) if memory else None,
        cpus=min(cpu_limit, cpu_count) if cpu_limit else None,
        pids_limit=config.pids_limit or None,
    )


def _within(
    field: str, asked: float | None, default: float, ceiling: float, ceiling_name: str
) -> float:
    if asked is not None and ceiling and asked > ceiling:
        why = f"{asked:g} is above this server's ceiling of {ceiling:g} ({ceiling_name})"
        raise InvalidInput(f"{field}: {why}", details={"fields": {field: why}})
    return asked or default or ceiling


def default_shm_size_mb() -> int:
    return min(ram_total_mib() // 2, MAX_DEFAULT_SHM_MB)

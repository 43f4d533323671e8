"""What a container may use of the host: its /dev/shm, memory, CPUs and processes. A request
asks; the config gives the defaults and the ceilings; Docker's cgroups hold the answer.

Out of the box a container has a memory limit (a quarter of the host's RAM) and its /dev/shm
lies inside it: the tmpfs pages a container writes are charged to its own memory cgroup,
whoever mounted the tmpfs, so a /dev/shm no larger than the limit cannot take more of the
host than the limit does (docs/fair-share.md#sharing-safely)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from deepdockd.config import Config
from deepdockd.errors import InvalidInput
from deepdockd.host import ram_total_mib

# The default /dev/shm of a container without a memory limit: half the host's RAM, at most
# this.
MAX_DEFAULT_SHM_MB = 16384
# The default memory limit ("auto"): this share of the host's RAM. One runaway container
# leaves three quarters to the host and the others; a training job still gets a quarter
# (64 GiB of a 256 GiB server), and asks for more with memory_mb up to max_memory_mb.
DEFAULT_MEMORY_SHARE = 4


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
    config's ceiling; asking above a ceiling (or for more CPUs than the host has, or for a
    /dev/shm larger than the memory limit) is a 422 that names it."""
    memory_default = (
        default_memory_mb() if config.default_memory_mb is None else config.default_memory_mb
    )
    if config.max_memory_mb:  # the default never passes the ceiling
        memory_default = min(memory_default or config.max_memory_mb, config.max_memory_mb)
    memory = _within("memory_mb", memory_mb, memory_default, config.max_memory_mb, "max_memory_mb")
    cpu_count = os.cpu_count() or 1
    if cpus is not None and cpus > cpu_count:
        raise InvalidInput(
            f"cpus: {cpus:g} is more than this host's {cpu_count} CPUs",
            details={"fields": {"cpus": f"more than this host's {cpu_count} CPUs"}},
        )
    cpu_limit = _within("cpus", cpus, config.default_cpus, config.max_cpus, "max_cpus")
    memory_limit = int(memory) if memory else None
    return Resources(
        shm_size_mb=_shm_size_mb(shm_size_mb, config.default_shm_size_mb, memory_limit),
        memory_mb=memory_limit,
        cpus=min(cpu_limit, cpu_count) if cpu_limit else None,
        pids_limit=config.pids_limit or None,
    )


def _shm_size_mb(asked: int | None, configured: int, memory_mb: int | None) -> int:
    """/dev/shm: what the create asked (at most the memory limit), else the config's default
    cut to the memory limit, else half the memory limit (half the host's RAM, at most
    MAX_DEFAULT_SHM_MB, without one)."""
    if asked and memory_mb is not None and asked > memory_mb:
        why = f"{asked} is above this container's memory limit of {memory_mb} MiB (memory_mb)"
        raise InvalidInput(
            f"shm_size_mb: {why}: /dev/shm is memory and counts within it",
            details={"fields": {"shm_size_mb": why}},
        )
    if asked:
        return asked
    if configured:
        return configured if memory_mb is None else min(configured, memory_mb)
    if memory_mb is None:
        return default_shm_size_mb()
    return max(memory_mb // 2, 1)


def _within(
    field: str, asked: float | None, default: float, ceiling: float, ceiling_name: str
) -> float:
    if asked is not None and ceiling and asked > ceiling:
        why = f"{asked:g} is above this server's ceiling of {ceiling:g} ({ceiling_name})"
        raise InvalidInput(f"{field}: {why}", details={"fields": {field: why}})
    return asked or default or ceiling


def default_memory_mb() -> int:
    """The memory limit of ``default_memory_mb = "auto"``: a quarter of the host's RAM."""
    return ram_total_mib() // DEFAULT_MEMORY_SHARE


def default_shm_size_mb() -> int:
    """/dev/shm of a container without a memory limit."""
    return min(ram_total_mib() // 2, MAX_DEFAULT_SHM_MB)

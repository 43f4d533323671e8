"""Per-user quotas: how many GPUs, containers, MiB of memory, CPUs and service ports a user
may hold, and
how much disk (``max_disk_gb``: measured, so a soft limit: checked at create and start).

The config's ``[quotas]`` table gives every user's limits; a ``[quotas.users.NAME]`` table
changes some of them for one user. Without a table every user still has the caps of
``DEFAULT_LIMITS`` (containers, service ports). An admin is not limited unless a table of their
own names limits (then only those). A limit of 0 means none.

Use is counted from Docker's labels of the namespace's containers and the reservations of the
operations in flight, under the allocation lock, so that concurrent creates cannot together
pass a limit that each alone would meet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from deepdockd import labels
from deepdockd.docker import ContainerSummary
from deepdockd.errors import Forbidden
from deepdockd.host import ram_total_mib
from deepdockd.quota_settings import QuotaLimits

# States in which a container holds its GPUs, memory and CPUs.
HOLDING_STATES = frozenset({"running", "restarting", "paused"})


class QuotaExceeded(Forbidden):
    code = "quota_exceeded"


@dataclass(frozen=True)
class Usage:
    gpus: int
    containers: int
    memory_mb: int
    cpus: float
    service_ports: int  # host ports of their containers' "ports", running or not
    running: tuple[str, ...]  # the names of the containers that hold resources
    all: tuple[str, ...]  # the names of all their containers

    def as_answer(self) -> dict[str, float | int]:
        return {
            "gpus": self.gpus,
            "containers": self.containers,
            "memory_mb": self.memory_mb,
            "cpus": round(self.cpus, 3),
            "service_ports": self.service_ports,
        }


@dataclass(frozen=True)
class Ask:
    """What an operation would add to its owner's use."""

    gpus: int
    containers: int
    memory_mb: int | None  # None: no limit, which counts as the whole host's
    cpus: float | None
    service_ports: int = 0  # host ports for its "ports"


def usage_of(
    owner: str, containers: Iterable[ContainerSummary], *, exclude_name: str | None = None
) -> Usage:
    """``owner``'s use among ``containers`` (Docker's list and the reservations of operations
    in flight; a reservation stands for the container of the same name, which it is about to
    be), leaving out ``exclude_name`` (the container a start asks about)."""
    by_name: dict[str, ContainerSummary] = {}
    for container in containers:
        if container.labels.get(labels.OWNER) != owner or container.name == exclude_name:
            continue
        # A reservation says "running"; Docker's entry may still say it was not.
        if container.name not in by_name or container.state in HOLDING_STATES:
            by_name[container.name] = container
    running = [c for c in by_name.values() if c.state in HOLDING_STATES]
    return Usage(
        gpus=sum(len(labels.gpu_ids(c.labels)) for c in running),  # a MIG slice counts as one
        containers=len(by_name),
        memory_mb=sum(_memory_mb(c.labels.get(labels.MEMORY_MB, "")) for c in running),
        cpus=sum(_cpus(c.labels.get(labels.CPUS, "")) for c in running),
        service_ports=sum(len(labels.ports(c.labels)) for c in by_name.values()),
        running=tuple(sorted(c.name for c in running)),
        all=tuple(sorted(by_name)),
    )


def check_quota(user: str, limits: QuotaLimits, use: Usage, ask: Ask) -> None:
    """A 403 ``quota_exceeded`` naming the first limit that ``ask`` would pass, the user's
    use, and what to stop or remove."""
    if (
        ask.containers
        and limits.max_containers
        and use.containers + ask.containers > limits.max_containers
    ):
        raise _exceeded(
            user, "max_containers", limits.max_containers, use.containers, ask.containers,
            "containers", use.all, "remove one (DELETE /containers/NAME)",
        )  # fmt: skip
    if (
        ask.service_ports
        and limits.max_service_ports
        and use.service_ports + ask.service_ports > limits.max_service_ports
    ):
        raise _exceeded(
            user, "max_service_ports", limits.max_service_ports, use.service_ports,
            ask.service_ports, "service ports", use.all,
            "remove a container that holds some (DELETE /containers/NAME), or ask for fewer ports",
        )  # fmt: skip
    if limits.max_gpus and use.gpus + ask.gpus > limits.max_gpus:
        raise _exceeded(
            user, "max_gpus", limits.max_gpus, use.gpus, ask.gpus, "GPUs", use.running,
            "stop one (POST /containers/NAME/stop)",
        )  # fmt: skip
    memory = _memory_mb("" if ask.memory_mb is None else str(ask.memory_mb))
    if limits.max_memory_mb and use.memory_mb + memory > limits.max_memory_mb:
        raise _exceeded(
            user, "max_memory_mb", limits.max_memory_mb, use.memory_mb, memory, "MiB of memory",
            use.running, "stop one (POST /containers/NAME/stop), or ask for less memory_mb",
            unlimited=ask.memory_mb is None,
        )  # fmt: skip
    cpus = _cpus("" if ask.cpus is None else f"{ask.cpus:g}")
    if limits.max_cpus and use.cpus + cpus > limits.max_cpus + 1e-9:
        raise _exceeded(
            user, "max_cpus", limits.max_cpus, use.cpus, cpus, "CPUs", use.running,
            "stop one (POST /containers/NAME/stop), or ask for fewer cpus",
            unlimited=ask.cpus is None,
        )  # fmt: skip


def check_disk(
    user: str, limits: QuotaLimits, used_mb: float | None, containers: tuple[str, ...]
) -> None:
    """A 403 ``quota_exceeded`` naming disk when ``user``'s disk use (as last measured:
    ``used_mb``, None before the first measurement) has reached ``max_disk_gb``."""
    if not limits.max_disk_gb or used_mb is None or used_mb < limits.max_disk_gb * 1024:
        return
    raise QuotaExceeded(
        f"quota exceeded: {user}'s disk quota (max_disk_gb) is {limits.max_disk_gb:g} GiB and "
        f"{user}'s disk use (their containers' writable layers, home volumes and committed "
        f"images, as last measured) is {used_mb / 1024:.3f} GiB: free some disk (delete files "
        "in a home or a container, remove a container or a volume, ask an admin to remove a "
        "committed image), or ask an admin to raise it; no new container is created or "
        "started, and nothing committed, until then",
        details={
            "limit": "max_disk_gb",
            "allowed": limits.max_disk_gb,
            "used": round(used_mb / 1024, 3),
            "requested": 0,
            "containers": list(containers),
        },
    )


def _exceeded(
    user: str,
    limit: str,
    allowed: float,
    used: float,
    asked: float,
    unit: str,
    holders: tuple[str, ...],
    remedy: str,
    *,
    unlimited: bool = False,
) -> QuotaExceeded:
    held = f" ({', '.join(holders)})" if holders else ""
    no_limit = " (a container without a limit counts as the whole host)" if unlimited else ""
    return QuotaExceeded(
        f"quota exceeded: {user}'s {limit} is {allowed:g}; {user} holds {used:g} {unit}{held} "
        f"and this asks for {asked:g} more{no_limit}: {remedy}, or ask an admin to raise it",
        details={
            "limit": limit,
            "allowed": allowed,
            "used": used,
            "requested": asked,
            "containers": list(holders),
        },
    )


def _memory_mb(text: str) -> int:
    """A container's memory limit label; none counts as the host's RAM, all it may take."""
    return int(text) if text.isdecimal() else ram_total_mib()


def _cpus(text: str) -> float:
    try:
        return float(text) if text else float(os.cpu_count() or 1)
    except ValueError:
        return float(os.cpu_count() or 1)

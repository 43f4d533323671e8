"""Who really uses which GPU: the processes NVML lists on each GPU, attributed to the
deepdockd container (and its owner) they run in, to another Docker container, or to the host.

Labels say who *holds* a GPU; processes say who *uses* it. Where the two disagree — a
container's process on a GPU it does not hold, or a host or foreign process on a GPU that a
deepdockd container holds — the use is "stray": shown in the answers, and logged once.

One task follows the sampler: after each pass that found processes it reads the namespace's
containers (from the live view; one Docker list when the view is stale) and keeps the
attribution, so that answers and scrapes only read what is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from deepdockd import labels
from deepdockd.background import cancel_and_wait
from deepdockd.containers.view import ContainerView
from deepdockd.docker import ContainerSummary, Docker, DockerUnavailable
from deepdockd.errors import ApiError
from deepdockd.gpu.nvml import GpuProcess
from deepdockd.gpu.procfs import UNKNOWN, ProcessOrigin
from deepdockd.gpu.sampler import GpuSampler, ProcessSnapshot

log = logging.getLogger(__name__)

Kind = Literal["deepdockd", "container", "host"]


@dataclass(frozen=True)
class ProcessUse:
    gpu: int
    pid: int
    memory_used_mib: float | None
    sm_utilization: float | None
    kind: Kind
    container: str | None  # the deepdockd container's name, or another container's name
    container_id: str | None
    owner: str | None  # the deepdockd container's owner; for a host process, its user
    command: str | None
    stray: bool
    mig_slice: int | None = None  # the MIG slice of ``gpu`` it runs on; None: none


@dataclass(frozen=True)
class ContainerUse:
    memory_used_mib: float  # its processes' GPU memory, on every GPU
    utilization: float  # its processes' SM shares summed, in % of one GPU


@dataclass(frozen=True)
class Attribution:
    by_gpu: Mapping[int, tuple[ProcessUse, ...] | None]  # None: the GPU's list is unknown
    by_container: Mapping[str, ContainerUse]  # by full container id, deepdockd's only

    def container_use(self, container_id: str) -> ContainerUse:
        return self.by_container.get(container_id, ContainerUse(0.0, 0.0))


EMPTY = Attribution(by_gpu={}, by_container={})


def attribute(
    snapshot: ProcessSnapshot,
    containers: Iterable[ContainerSummary],
    foreign_names: Mapping[str, str],
) -> Attribution:
    """Each process of ``snapshot`` named by its origin: ``containers`` are deepdockd's (the
    namespace's), any other container id is a foreign one (named by ``foreign_names``)."""
    ours = {c.id: c for c in containers}
    # GPU or MIG slice -> ids of the running containers that hold it
    holders: dict[labels.GpuId, set[str]] = {}
    for container in ours.values():
        if container.state in ("running", "paused"):  # a paused one keeps its GPU memory
            for gpu_id in labels.gpu_ids(container.labels):
                holders.setdefault(gpu_id, set()).add(container.id)
    by_gpu: dict[int, tuple[ProcessUse, ...] | None] = {}
    totals: dict[str, tuple[float, float]] = {}
    for gpu, processes in snapshot.processes.items():
        if processes is None:
            by_gpu[gpu] = None
            continue
        uses = []
        for process in processes:
            origin = snapshot.origins.get(process.pid, UNKNOWN)
            # A process on a MIG slice is its holder's; elsewhere, the whole GPU's holder's.
            device = labels.GpuId(gpu, process.mig_slice)
            use = _use(gpu, process, origin, ours, holders.get(device, set()), foreign_names)
            uses.append(use)
            if use.kind == "deepdockd" and use.container_id is not None:
                memory, share = totals.get(use.container_id, (0.0, 0.0))
                totals[use.container_id] = (
                    memory + (use.memory_used_mib or 0.0),
                    share + (use.sm_utilization or 0.0),
                )
        by_gpu[gpu] = tuple(uses)
    return Attribution(
        by_gpu=by_gpu,
        by_container={cid: ContainerUse(memory, share) for cid, (memory, share) in totals.items()},
    )


def _use(
    gpu: int,
    process: GpuProcess,
    origin: ProcessOrigin,
    ours: Mapping[str, ContainerSummary],
    holders: set[str],
    foreign_names: Mapping[str, str],
) -> ProcessUse:
    use = functools.partial(
        ProcessUse,
        gpu=gpu,
        pid=process.pid,
        memory_used_mib=process.memory_used_mib,
        sm_utilization=process.sm_utilization,
        command=origin.command,
        mig_slice=process.mig_slice,
    )
    container = ours.get(origin.container_id) if origin.container_id else None
    if container is not None:
        return use(
            kind="deepdockd",
            container=container.name,
            container_id=container.id,
            owner=container.labels.get(labels.OWNER) or None,
            stray=container.id not in holders,  # on a GPU that its container does not hold
        )
    on_held_gpu = bool(holders)  # a GPU that a deepdockd container holds
    if origin.container_id is not None:
        return use(
            kind="container",
            container=foreign_names.get(origin.container_id, origin.container_id[:12]),
            container_id=origin.container_id,
            owner=None,
            stray=on_held_gpu,
        )
    return use(kind="host", container=None, container_id=None, owner=origin.user, stray=on_held_gpu)


class GpuAccounting:
    def __init__(self, sampler: GpuSampler, view: ContainerView, docker: Docker) -> None:
        self._sampler = sampler
        self._view = view
        self._docker = docker
        self._latest = EMPTY
        self._containers: list[ContainerSummary] = []  # the last list read
        self._foreign_names: dict[str, str] = {}
        self._logged: set[tuple[int, int, str | None]] = set()  # strays already warned of
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """False without NVML: then no use is known, not none."""
        return self._sampler.available

    @property
    def latest(self) -> Attribution:
        return self._latest

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="gpu-accounting")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _follow(self) -> None:
        number = 0
        while True:
            snapshot = await self._sampler.next_processes(number)
            number = snapshot.number
            try:
                await self.update(snapshot)
            except Exception:  # never let one pass stop the accounting
                log.exception("GPU accounting failed")

    async def update(self, snapshot: ProcessSnapshot) -> None:
        """Attribute one pass's processes. With none anywhere, Docker is not asked."""
        if any(snapshot.processes.values()):
            with contextlib.suppress(DockerUnavailable):  # keep the last list meanwhile
                self._containers = await self._view.summaries()
            await self._name_foreign(snapshot)
        self._latest = attribute(snapshot, self._containers, self._foreign_names)
        self._warn_of_strays()

    async def _name_foreign(self, snapshot: ProcessSnapshot) -> None:
        ours = {c.id for c in self._containers}
        foreign = {
            o.container_id
            for o in snapshot.origins.values()
            if o.container_id and o.container_id not in ours
        }
        for container_id in foreign - self._foreign_names.keys():
            with contextlib.suppress(ApiError):
                found = await self._docker.container_summary(container_id)
                if found is not None:
                    self._foreign_names[container_id] = found.name
        for gone in self._foreign_names.keys() - foreign:
            del self._foreign_names[gone]

    def _warn_of_strays(self) -> None:
        strays = {
            (use.gpu, use.pid, use.container_id): use
            for uses in self._latest.by_gpu.values()
            if uses
            for use in uses
            if use.stray
        }
        for key in strays.keys() - self._logged:
            log.warning("stray GPU use: %s", describe_stray(strays[key]))
        self._logged = set(strays)


def describe_stray(use: ProcessUse) -> str:
    if use.kind == "deepdockd":
        return (
            f"GPU {use.gpu}: pid {use.pid} of container '{use.container}' (owner"
            f" {use.owner}) uses a GPU that its container does not hold"
        )
    who = (
        f"container '{use.container}' (not deepdockd's)"
        if use.kind == "container"
        else f"the host (user {use.owner}, command {use.command!r})"
    )
    return f"GPU {use.gpu}: pid {use.pid} of {who} uses a GPU that a deepdockd container holds"

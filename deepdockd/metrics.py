"""Host and GPU metrics, as the API shows them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from deepdockd import labels
from deepdockd.accounting import GpuAccounting, ProcessUse
from deepdockd.containers.view import ContainerView
from deepdockd.docker import ContainerSummary, DockerUnavailable
from deepdockd.gpu import gpm
from deepdockd.gpu.nvml import GpuInfo, MigSlice
from deepdockd.gpu.sampler import GpuPoint, GpuSampler, GpuStatus, points_since
from deepdockd.gpu.series import rebucket
from deepdockd.host import HostMetrics, read_host_metrics
from deepdockd.tokens import Caller

# Re-bucketing decodes each point (a few us each): up to this many points it costs less than a
# millisecond or two, and runs on the loop; more (8 GPUs x 24 h is 69,120) run in a thread.
REBUCKET_ON_LOOP_MAX_POINTS = 500


@dataclass(frozen=True)
class VisibleProcess:
    use: ProcessUse
    whole: bool  # False: another user's, of which only its memory and kind are shown


@dataclass(frozen=True)
class SliceEntry:
    """A MIG slice of a GPU, with its holder: held and freed as a GPU is."""

    info: MigSlice
    memory_used_mib: float | None  # the last sample's; None: unknown
    holders: list[tuple[str, str]] | None  # (container, owner) the caller may see; None: ditto
    held: bool | None  # whether anyone's running container holds it; None: Docker is down


@dataclass(frozen=True)
class GpuEntry:
    info: GpuInfo
    error: str | None
    holders: list[str] | None  # running managed containers holding it; None: Docker is down
    held: bool | None  # whether any running managed container, anyone's, holds it; None: ditto
    points: int  # points of its time series held now
    memory_reserved_mib: float | None  # the last sample's; None: unknown
    processes: list[VisibleProcess] | None  # None: not listed (a lost GPU, or none yet)
    mig_slices: tuple[SliceEntry, ...] = ()  # its MIG slices, while in MIG mode
    profiling: dict[str, float | None] | None = None  # GPM metrics (gpu/gpm.py); None: none


class MetricsService:
    def __init__(self, sampler: GpuSampler, view: ContainerView, accounting: GpuAccounting) -> None:
        self._sampler = sampler
        self._view = view
        self._accounting = accounting

    async def host(self) -> HostMetrics:
        return await asyncio.to_thread(read_host_metrics)

    @property
    def gpu_count(self) -> int:
        return len(self._sampler.gpus)

    async def gpu_history(
        self, since: datetime | None, limit: int | None, step_s: int | None = None
    ) -> dict[int, list[GpuPoint]]:
        """Each GPU's points after ``since``; with ``step_s``, merged into windows of that many
        seconds (gpu/series.py); then the last ``limit`` of them."""
        if step_s is None:
            return {
                info.index: points_since(self._sampler.history(info.index), since, limit)
                for info in self._sampler.gpus
            }
        # Copied here, on the loop: the sampler appends to the deques on the loop thread.
        history = {
            info.index: points_since(self._sampler.history(info.index), since, None)
            for info in self._sampler.gpus
        }

        def windows() -> dict[int, list[GpuPoint]]:
            return {index: rebucket(points, step_s, limit) for index, points in history.items()}

        if sum(map(len, history.values())) > REBUCKET_ON_LOOP_MAX_POINTS:
            return await asyncio.to_thread(windows)
        return windows()

    async def gpus(self, caller: Caller) -> list[GpuEntry]:
        """Each GPU with the running containers that hold it: all of them for an admin, the
        caller's own for a user (another user's container names do not leak)."""
        # Both read before the wait for Docker: one answer shows one moment of the sampler.
        statuses = self._sampler.statuses()
        by_gpu = self._accounting.latest.by_gpu
        holders: dict[int, list[str]] | None = {s.info.index: [] for s in statuses}
        held: set[int] | None = set()
        mig: _MigHolders | None = ({}, set())
        if statuses:
            try:
                containers = await self._view.summaries()
            except DockerUnavailable:
                holders = held = None
                mig = None
            else:
                holders, held = _holders(containers, caller, [s.info.index for s in statuses])
                mig = _mig_holders(containers, caller)
        return [
            GpuEntry(
                info=s.info,
                error=s.error,
                holders=sorted(holders[s.info.index]) if holders is not None else None,
                held=s.info.index in held if held is not None else None,
                points=len(self._sampler.history(s.info.index)),
                mig_slices=_mig_slices(s, mig),
                memory_reserved_mib=s.latest.memory_reserved_mib if s.latest else None,
                profiling=gpm.profiling(s.latest),
                processes=_visible(by_gpu.get(s.info.index), caller),
            )
            for s in statuses
        ]


def _holders(
    containers: list[ContainerSummary], caller: Caller, indices: list[int]
) -> tuple[dict[int, list[str]], set[int]]:
    """The running containers holding each GPU that the caller may see by name, and the GPUs
    held by anyone's (a user learns that a GPU is taken, not by whom)."""
    holders: dict[int, list[str]] = {index: [] for index in indices}
    held: set[int] = set()
    for container in containers:
        if container.state not in ("running", "paused"):  # a paused one holds its GPUs
            continue
        gpus = labels.gpu_indices(container.labels)
        held.update(gpus)
        if caller.is_admin or container.labels.get(labels.OWNER) == caller.user:
            for index in gpus:
                holders.setdefault(index, []).append(container.name)
    return holders, held


def _visible(uses: tuple[ProcessUse, ...] | None, caller: Caller) -> list[VisibleProcess] | None:
    """An admin sees every process whole; a user their own containers' processes whole, and
    of anyone else's only the memory and kind (who uses how much, not who or what)."""
    if uses is None:
        return None
    return [
        VisibleProcess(
            use, caller.is_admin or (use.kind == "deepdockd" and use.owner == caller.user)
        )
        for use in uses
    ]


# MIG slices -> the (container, owner) holding each that the caller may see, and every slice
# held by anyone's running container.
_MigHolders = tuple[dict[labels.GpuId, list[tuple[str, str]]], set[labels.GpuId]]


def _mig_holders(containers: list[ContainerSummary], caller: Caller) -> _MigHolders:
    """As _holders, for MIG slices: a user sees their own holders by name, and of anyone
    else's only that the slice is held."""
    holders: dict[labels.GpuId, list[tuple[str, str]]] = {}
    held: set[labels.GpuId] = set()
    for container in containers:
        if container.state not in ("running", "paused"):  # a paused one holds its GPUs
            continue
        owner = container.labels.get(labels.OWNER, "")
        for gpu_id in labels.gpu_ids(container.labels):
            if gpu_id.slice is None:
                continue
            held.add(gpu_id)
            if caller.is_admin or owner == caller.user:
                holders.setdefault(gpu_id, []).append((container.name, owner))
    return holders, held


def _mig_slices(status: GpuStatus, mig: _MigHolders | None) -> tuple[SliceEntry, ...]:
    used = status.latest.mig_memory_used_mib if status.latest else {}
    entries = []
    for found in status.info.slices:
        gpu_id = labels.GpuId(status.info.index, found.index)
        entries.append(
            SliceEntry(
                info=found,
                memory_used_mib=used.get(found.index),
                holders=sorted(mig[0].get(gpu_id, [])) if mig is not None else None,
                held=gpu_id in mig[1] if mig is not None else None,
            )
        )
    return tuple(entries)

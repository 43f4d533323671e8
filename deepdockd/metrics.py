"""Host and GPU metrics, as the API shows them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from deepdockd import labels
from deepdockd.accounting import GpuAccounting, ProcessUse
from deepdockd.containers.view import ContainerView
from deepdockd.docker import DockerUnavailable
from deepdockd.gpu.nvml import GpuInfo
from deepdockd.gpu.sampler import GpuPoint, GpuSampler, points_since
from deepdockd.host import HostMetrics, read_host_metrics
from deepdockd.tokens import Caller


@dataclass(frozen=True)
class VisibleProcess:
    use: ProcessUse
    whole: bool  # False: another user's, of which only its memory and kind are shown


@dataclass(frozen=True)
class GpuEntry:
    info: GpuInfo
    error: str | None
    holders: list[str] | None  # running managed containers holding it; None: Docker is down
    points: int  # points of its time series held now
    memory_reserved_mib: float | None  # the last sample's; None: unknown
    processes: list[VisibleProcess] | None  # None: not listed (a lost GPU, or none yet)


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

    def gpu_history(self, since: datetime | None, limit: int | None) -> dict[int, list[GpuPoint]]:
        return {
            info.index: points_since(self._sampler.history(info.index), since, limit)
            for info in self._sampler.gpus
        }

    async def gpus(self, caller: Caller) -> list[GpuEntry]:
        """Each GPU with the running containers that hold it: all of them for an admin, the
        caller's own for a user (another user's container names do not leak)."""
        # Both read before the wait for Docker: one answer shows one moment of the sampler.
        statuses = self._sampler.statuses()
        by_gpu = self._accounting.latest.by_gpu
        holders: dict[int, list[str]] | None = {s.info.index: [] for s in statuses}
        if statuses:
            try:
                containers = await self._view.summaries()
            except DockerUnavailable:
                holders = None
            else:
                assert holders is not None
                for container in containers:
                    if container.state != "running":
                        continue
                    if not caller.is_admin and container.labels.get(labels.OWNER) != caller.user:
                        continue
                    for index in labels.gpu_indices(container.labels):
                        holders.setdefault(index, []).append(container.name)
        return [
            GpuEntry(
                info=s.info,
                error=s.error,
                holders=sorted(holders[s.info.index]) if holders is not None else None,
                points=len(self._sampler.history(s.info.index)),
                memory_reserved_mib=s.latest.memory_reserved_mib if s.latest else None,
                processes=_visible(by_gpu.get(s.info.index), caller),
            )
            for s in statuses
        ]


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

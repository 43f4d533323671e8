"""Disk use: each container's writable layer and each home volume, as Docker's ``system/df``
measures them, on a slow cadence (``disk_usage_interval``), never in a request.

Docker walks every layer and volume to answer ``system/df``, so a measurement can take seconds
on a big host: one task asks, every interval, and keeps the latest answer in memory. Everything
that shows or enforces disk use reads that answer: the answers' ``disk_used_mb`` (null until
the first measurement), ``GET /quota``, the exporter, ``max_disk_gb``'s refusals and the
reaper's warnings. A user's use is the writable layers of their containers, their home
volumes and the images they committed (each by what only it holds: the commit's own layer).
Nothing here removes or limits anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime

from deepdockd import labels
from deepdockd.background import cancel_and_wait
from deepdockd.clock import now_utc
from deepdockd.docker import DiskEntry, Docker
from deepdockd.errors import ApiError

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class DiskMeasurement:
    """One measurement of the namespace's containers and volumes."""

    containers: dict[str, DiskEntry]  # container id ->
    volumes: dict[str, DiskEntry]  # volume name ->
    measured_at: datetime
    images: dict[str, DiskEntry] = field(default_factory=dict)  # committed image id ->

    def owner_bytes(self, owner: str, container_ids: Collection[str] | None = None) -> int:
        """``owner``'s containers' writable layers and volumes; ``container_ids``: count only
        these containers (those that still exist), where given."""
        containers = sum(
            entry.size_bytes
            for entry in self.containers.values()
            if entry.labels.get(labels.OWNER) == owner
            and (container_ids is None or entry.id in container_ids)
        )
        volumes = sum(
            entry.size_bytes
            for entry in self.volumes.values()
            if entry.labels.get(labels.OWNER) == owner
        )
        images = sum(
            entry.size_bytes
            for entry in self.images.values()
            if entry.labels.get(labels.COMMITTED_BY) == owner
        )
        return containers + volumes + images


class DiskMeter:
    def __init__(
        self,
        docker: Docker,
        namespace: str,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._docker = docker
        self._namespace = namespace
        self.interval_s = interval_s
        self._clock = clock
        self.latest: DiskMeasurement | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="disk-meter")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        deadline = self._clock()
        while True:
            try:
                await self.measure()
                if self._failing:
                    log.info("disk use: measured again")
                self._failing = False
            except ApiError as exc:  # Docker down, say: the last measurement stands
                if not self._failing:
                    log.warning("disk use: cannot measure: %s", exc.message)
                self._failing = True
            except Exception:
                log.exception("disk use: a measurement failed")
            # Drift-free; a measurement that took longer than the interval is not repeated
            # at once, so a slow Docker is asked at most once an interval.
            deadline = max(deadline + self.interval_s, self._clock())
            await asyncio.sleep(deadline - self._clock())

    async def measure(self) -> DiskMeasurement:
        usage = await self._docker.disk_usage()
        measurement = DiskMeasurement(
            containers={e.id: e for e in usage.containers if self._ours(e)},
            volumes={e.id: e for e in usage.volumes if self._ours(e)},
            measured_at=now_utc(),
            images={
                e.id: e
                for e in usage.images
                if e.labels.get(labels.COMMITTED_IN) == self._namespace
            },
        )
        self.latest = measurement
        return measurement

    def _ours(self, entry: DiskEntry) -> bool:
        return entry.labels.get(labels.NAMESPACE) == self._namespace

    def container_mb(self, container_id: str) -> float | None:
        """Its writable layer as last measured; None before its first measurement."""
        entry = self.latest.containers.get(container_id) if self.latest else None
        return mib(entry.size_bytes) if entry is not None else None

    def volume_mb(self, name: str) -> float | None:
        entry = self.latest.volumes.get(name) if self.latest else None
        return mib(entry.size_bytes) if entry is not None else None

    def owner_mb(self, owner: str, container_ids: Collection[str] | None = None) -> float | None:
        """``owner``'s whole use as last measured; None before the first measurement."""
        if self.latest is None:
            return None
        return mib(self.latest.owner_bytes(owner, container_ids))


def mib(size_bytes: int) -> float:
    return round(size_bytes / MIB, 2)

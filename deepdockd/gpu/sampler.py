"""The GPU sampler: one asyncio task that reads every GPU each interval, averages each bucket
into one point, and keeps the points in one bounded deque per GPU. Each tick also lists the
processes on every GPU (with where each new pid comes from, read from /proc): the snapshot
that the GPU accounting attributes to containers.

Every NVML call runs in one worker thread of the sampler's own, so the event loop never
waits on the driver. The ticks do not drift: the next tick is the previous deadline plus
the interval, on the monotonic clock (as nvitop's sampling loop does). No NVML is a normal
state, tried again every ``retry_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deepdockd.background import cancel_and_wait
from deepdockd.gpu import gpm, nvml, procfs
from deepdockd.gpu.nvml import GpuInfo, GpuProcess, GpuReading, NvmlInventory, NvmlUnavailable
from deepdockd.gpu.procfs import ProcessOrigin

log = logging.getLogger(__name__)

# The fields that the time series keeps (the rest are read for the latest values only).
_READING_FIELDS = (
    "memory_used_mib", "utilization_pct", "power_w", "temperature_c", "fan_pct",
    *gpm.SERIES_FIELDS,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GpuPoint:
    """The mean of the samples of one bucket, kept as the JSON object the API sends, encoded
    once when the bucket closes: 8 GPUs x 24 h of 10 s buckets are 69,120 points to hold and
    to send, so neither a dict each nor an encoding per request (bench/: GET /metrics/gpus)."""

    timestamp: float  # when the bucket closed, seconds since the epoch
    json: bytes  # {"timestamp", "memory_used", "utilization", "power_usage", "temperature",
    #               "fan_speed", gpm.SERIES_FIELDS, "samples"}; null when no sample had it

    def fields(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.json)
        return decoded


def _encode_point(closed: datetime, bucket: _Bucket) -> GpuPoint:
    document = {
        "timestamp": closed.isoformat(),
        "memory_used": bucket.mean("memory_used_mib"),  # MiB
        "utilization": bucket.mean("utilization_pct"),  # %
        "power_usage": bucket.mean("power_w"),  # W
        "temperature": bucket.mean("temperature_c"),  # °C
        "fan_speed": bucket.mean("fan_pct"),  # %
        **{name: bucket.mean(name) for name in gpm.SERIES_FIELDS},  # GPM: ratios 0..1
        "samples": bucket.samples,
    }
    return GpuPoint(timestamp=closed.timestamp(), json=json.dumps(document).encode())


@dataclass
class _Bucket:
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_READING_FIELDS, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_READING_FIELDS, 0))
    samples: int = 0

    def add(self, reading: GpuReading) -> None:
        self.samples += 1
        for name in _READING_FIELDS:
            value = getattr(reading, name)
            if value is not None:
                self.sums[name] += value
                self.counts[name] += 1

    def mean(self, name: str) -> float | None:
        count = self.counts[name]
        return self.sums[name] / count if count else None


@dataclass(frozen=True)
class GpuStatus:
    info: GpuInfo
    error: str | None  # what the last sample met; None: healthy
    latest: GpuReading | None  # the last sample; None before the first


@dataclass(frozen=True)
class ProcessSnapshot:
    """The processes on every GPU as one sampler pass found them."""

    number: int  # counts the passes; 0: none yet
    processes: Mapping[int, tuple[GpuProcess, ...] | None]  # by GPU; None: could not be listed
    origins: Mapping[int, ProcessOrigin]  # by pid, for every pid listed


@dataclass(frozen=True)
class _Pass:
    """What one tick read, in the worker thread."""

    readings: list[GpuReading]
    processes: list[tuple[GpuProcess, ...] | None]
    origins: dict[int, ProcessOrigin]  # of the pids this pass saw first


class GpuSampler:
    def __init__(
        self,
        *,
        interval_s: float,
        bucket_s: float,
        retention_s: float,
        retry_interval_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.interval_s = interval_s
        self.bucket_s = bucket_s
        self.retry_interval_s = retry_interval_s
        self.max_points = max(1, math.ceil(retention_s / bucket_s))
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._inventory: NvmlInventory | None = None
        self.unavailable_reason: str | None = "NVML not tried yet"
        self._errors: dict[int, str | None] = {}
        self._latest: dict[int, GpuReading] = {}
        self._snapshot = ProcessSnapshot(number=0, processes={}, origins={})
        self._new_snapshot = asyncio.Condition()
        self.ticks = 0  # ticks sampled, and the seconds they took all together
        self.tick_seconds = 0.0
        self._history: dict[int, deque[GpuPoint]] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._bucket_ends = 0.0  # loop time at which the open buckets close
        self._tried = asyncio.Event()  # set once NVML has been tried

    # --- what the API reads ---

    @property
    def available(self) -> bool:
        return self._inventory is not None

    @property
    def driver_version(self) -> str | None:
        return self._inventory.driver_version if self._inventory else None

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return self._inventory.gpus if self._inventory else ()

    def statuses(self) -> list[GpuStatus]:
        return [
            GpuStatus(info, self._errors.get(info.index), self._latest.get(info.index))
            for info in self.gpus
        ]

    @property
    def processes(self) -> ProcessSnapshot:
        return self._snapshot

    async def next_processes(self, after: int) -> ProcessSnapshot:
        """The first snapshot of a pass numbered above ``after``, once there is one."""
        async with self._new_snapshot:
            await self._new_snapshot.wait_for(lambda: self._snapshot.number > after)
            return self._snapshot

    async def wait_until_tried(self) -> None:
        """Return once NVML has been tried, so that callers read a settled inventory."""
        await self._tried.wait()

    def history(self, index: int) -> deque[GpuPoint]:
        return self._history.get(index, deque())

    # --- life cycle ---

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self._task = asyncio.create_task(self._run(), name="gpu-sampler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._executor is not None:
            if self._inventory is not None:
                await self._in_worker(nvml.stop)
            self._executor.shutdown(wait=True)
            self._executor = None
        self._inventory = None

    async def _in_worker(self, call: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    # --- the loop ---

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        next_try = next_tick
        while True:
            if self._inventory is None and loop.time() >= next_try:
                await self._try_start()
                self._tried.set()
                next_try = loop.time() + self.retry_interval_s
            if self._inventory is not None:
                started = loop.time()
                try:
                    await self._sample_once(started)
                except Exception:  # never let one bad tick stop the sampler
                    log.exception("GPU sample failed")
                self.ticks += 1
                self.tick_seconds += loop.time() - started
            next_tick += self.interval_s
            now = loop.time()
            if next_tick < now:  # late (a slow driver): skip the missed ticks, keep the phase
                next_tick += math.ceil((now - next_tick) / self.interval_s) * self.interval_s
            await asyncio.sleep(next_tick - now)

    async def _try_start(self) -> None:
        """Find NVML and list the GPUs; on any failure, say why and leave it for the next
        try. Never raises: the sampler must outlive whatever the driver does."""
        try:
            inventory: NvmlInventory = await self._in_worker(nvml.start)
        except NvmlUnavailable as exc:
            if self.unavailable_reason != str(exc):
                log.info(
                    "no GPU metrics: %s (looking again every %g s)", exc, self.retry_interval_s
                )
            self.unavailable_reason = str(exc)
            return
        except Exception as exc:  # e.g. a name that is not UTF-8, which pynvml cannot decode
            reason = f"NVML: listing the GPUs failed: {type(exc).__name__}: {exc}"
            if self.unavailable_reason != reason:
                log.exception(
                    "no GPU metrics: %s (looking again every %g s)", reason, self.retry_interval_s
                )
            self.unavailable_reason = reason
            with contextlib.suppress(Exception):  # nvmlInit may have worked: undo it
                await self._in_worker(nvml.stop)
            return
        self._inventory = inventory
        self.unavailable_reason = None
        for info in inventory.gpus:
            self._history.setdefault(info.index, deque(maxlen=self.max_points))
            self._buckets[info.index] = _Bucket()
        self._bucket_ends = asyncio.get_running_loop().time() + self.bucket_s
        names = ", ".join(f"{g.index}: {g.name}" for g in inventory.gpus) or "none"
        log.info("NVML %s: %d GPU(s) (%s)", inventory.driver_version, len(inventory.gpus), names)

    async def _sample_once(self, now: float) -> None:
        known = {pid: origin.started for pid, origin in self._snapshot.origins.items()}
        sampled: _Pass = await self._in_worker(_read_all, len(self.gpus), known)
        readings = sampled.readings
        if now >= self._bucket_ends:
            self._close_buckets()
            self._bucket_ends += (
                math.floor((now - self._bucket_ends) / self.bucket_s + 1) * self.bucket_s
            )
        for index, reading in enumerate(readings):
            if reading.error != self._errors.get(index):
                if reading.error:
                    log.warning("GPU %d: %s", index, reading.error)
                else:
                    log.info("GPU %d: healthy again", index)
            self._errors[index] = reading.error
            self._latest[index] = reading
            self._buckets[index].add(reading)
        await self._publish(sampled)

    async def _publish(self, sampled: _Pass) -> None:
        origins = {**self._snapshot.origins, **sampled.origins}
        listed = {p.pid for found in sampled.processes if found for p in found}
        self._snapshot = ProcessSnapshot(
            number=self._snapshot.number + 1,
            processes=dict(enumerate(sampled.processes)),
            origins={pid: origins[pid] for pid in listed},
        )
        async with self._new_snapshot:
            self._new_snapshot.notify_all()

    def _close_buckets(self) -> None:
        closed = self._clock()
        for index, bucket in self._buckets.items():
            if bucket.samples:
                self._history[index].append(_encode_point(closed, bucket))
            self._buckets[index] = _Bucket()


def _read_all(count: int, known: Mapping[int, int | None]) -> _Pass:
    """Every GPU's reading and processes, and where each process comes from: read from /proc
    for a pid first seen, or one whose start time changed (the pid went to another process)."""
    readings = [nvml.read(index) for index in range(count)]
    processes: list[tuple[GpuProcess, ...] | None] = []
    for index in range(count):
        found = nvml.processes(index)
        processes.append(tuple(found) if found is not None else None)
    origins = {}
    for pid in {p.pid for found in processes if found for p in found}:
        if pid in known and procfs.start_time(pid) == known[pid]:
            continue
        try:
            origins[pid] = procfs.origin_of(pid)
        except Exception:  # whatever a process did to its /proc entries: unknown, not a lost tick
            log.exception("reading /proc/%d failed", pid)
            origins[pid] = procfs.UNKNOWN
    return _Pass(readings, processes, origins)


def points_since(
    points: deque[GpuPoint], since: datetime | None, limit: int | None
) -> list[GpuPoint]:
    """The points after ``since``, the last ``limit`` of them. Points are in time order, so
    both are read from the newest end (a client polling for new points reads few)."""
    newest_first: Iterable[GpuPoint] = reversed(points)
    if since is not None:
        after = since.timestamp()
        newest_first = itertools.takewhile(lambda p: p.timestamp > after, newest_first)
    if limit is not None:
        newest_first = itertools.islice(newest_first, limit)
    selected = list(newest_first)
    selected.reverse()
    return selected

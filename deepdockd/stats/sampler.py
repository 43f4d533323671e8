"""The container sampler: one asyncio task that reads every running container's cgroup each
``gpu_sample_interval`` (the GPU sampler's cadence and buckets), keeps the latest figures for
the lists and the Prometheus scrape, and one bounded deque of bucket means per container, like
the GPU series (the same ``GpuPoint``, so ``?step=`` merges them with the same code).

Its own task, not a step of the GPU sampler's: the GPU sampler ticks only while NVML is there,
and a host without a GPU driver still wants its containers' figures.

Cheap by construction (bench/run.py ``container_stats``): each container's files are opened
once, when it is first seen running (its pid from one Docker inspect), and read with one
``pread`` each; every tick reads only CPU time and memory usage (two small integers); pids and
the files that are long or are counters (memory.stat, the block I/O, /proc/PID/net/dev) are
read once a bucket, which gives the counters' exact mean rate over the bucket. Every read runs
in the sampler's own worker thread; the loop only swaps the results in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from deepdockd.background import cancel_and_wait
from deepdockd.containers.view import ContainerView
from deepdockd.docker import ContainerSummary, Docker
from deepdockd.errors import ApiError
from deepdockd.gpu.sampler import GpuPoint
from deepdockd.stats.cgroup import CgroupReader, SlowReading, locate

log = logging.getLogger(__name__)

# How long each container's series is kept. Shorter than the GPUs' 24 h on purpose: 300
# containers x 24 h of 10 s buckets would be 2.6 million points (about 1 GB); 1 h is 360
# points a container (about 45 MB for 300: a point is about 400 bytes).
RETENTION_S = 3600.0
# The fields of a point that are means (the others: timestamp, samples).
SERIES_FIELDS = (
    "cpu_percent", "memory_used_mb", "pids",
    "block_read_bytes_per_s", "block_write_bytes_per_s",
    "network_receive_bytes_per_s", "network_transmit_bytes_per_s",
)  # fmt: skip
# A container whose cgroup could not be found is tried again after this long.
RETRY_S = 10.0
# While the live view is stale, the containers are listed from Docker at most this often.
STALE_LIST_S = 10.0
# Inspects at once when many containers are new (a daemon start with hundreds running).
_INSPECTS_AT_ONCE = 16
_MIB = 1024 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ContainerReading:
    """One container's latest figures (None: that file is not there, or not read yet)."""

    cpu_percent: float | None  # % of one core over the last tick (2 busy cores: 200)
    cpu_seconds: float | None  # CPU time used since it started, all cores
    memory_usage_bytes: int | None  # page cache included
    memory_working_set_bytes: int | None  # usage - inactive file cache
    memory_limit_bytes: int | None  # None: unlimited
    pids: int | None
    block_read_bytes: int | None  # since it started
    block_write_bytes: int | None
    network_receive_bytes: int | None  # on every interface of its namespace but lo
    network_transmit_bytes: int | None


class _Bucket:
    """The sums of one bucket, by field (SERIES_FIELDS' order): lists, not dicts, since each
    of 300 containers adds to one every tick."""

    __slots__ = ("counts", "samples", "sums")

    def __init__(self) -> None:
        self.sums = [0.0] * len(SERIES_FIELDS)
        self.counts = [0] * len(SERIES_FIELDS)
        self.samples = 0

    def add(self, field: int, value: float) -> None:
        self.sums[field] += value
        self.counts[field] += 1

    def point(self, closed: datetime) -> GpuPoint:
        document: dict[str, object] = {"timestamp": closed.isoformat()}
        for index, name in enumerate(SERIES_FIELDS):
            count = self.counts[index]
            document[name] = round(self.sums[index] / count, 3) if count else None
        document["samples"] = self.samples
        return GpuPoint(timestamp=closed.timestamp(), json=json.dumps(document).encode())


_CPU, _MEMORY, _PIDS = 0, 1, 2  # indices into SERIES_FIELDS; the rates follow


@dataclass(slots=True)
class _Tracked:
    """One running container's open files and last figures: changed by the worker during a
    pass and by the loop between passes, never both at once. Plain fields, no object made
    per tick: the answers build a ContainerReading from them when they ask."""

    reader: CgroupReader
    bucket: _Bucket = field(default_factory=_Bucket)
    cpu_ns: int | None = None
    read_at: float = 0.0  # monotonic
    cpu_percent: float | None = None
    memory_usage_bytes: int | None = None
    slow: SlowReading | None = None
    slow_at: float = 0.0
    gone: bool = False

    def reading(self) -> ContainerReading | None:
        slow = self.slow
        if slow is None:
            return None
        usage = self.memory_usage_bytes
        return ContainerReading(
            cpu_percent=self.cpu_percent,
            cpu_seconds=self.cpu_ns / 1e9 if self.cpu_ns is not None else None,
            memory_usage_bytes=usage,
            memory_working_set_bytes=_working_set(usage, slow),
            memory_limit_bytes=slow.memory_limit_bytes,
            pids=slow.pids,
            block_read_bytes=slow.block_read_bytes,
            block_write_bytes=slow.block_write_bytes,
            network_receive_bytes=slow.network_receive_bytes,
            network_transmit_bytes=slow.network_transmit_bytes,
        )


def _working_set(usage: int | None, slow: SlowReading) -> int | None:
    return None if usage is None else max(0, usage - (slow.inactive_file_bytes or 0))


class ContainerStats:
    def __init__(
        self,
        view: ContainerView,
        docker: Docker,
        *,
        interval_s: float,
        bucket_s: float,
        retention_s: float = RETENTION_S,
        proc: str = "/proc",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._view = view
        self._docker = docker
        self.interval_s = interval_s
        self.bucket_s = bucket_s
        self.max_points = max(1, math.ceil(retention_s / bucket_s))
        # Files read once a bucket: every this many ticks.
        self._slow_every = max(1, round(bucket_s / interval_s))
        self._proc = proc
        self._clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._retry_at: dict[str, float] = {}
        self._history: dict[str, deque[GpuPoint]] = {}
        self._containers: list[ContainerSummary] = []
        self._listed_at = -math.inf
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0  # passes made, and the seconds they took all together
        self.tick_seconds = 0.0

    # --- what the API reads ---

    def latest(self, container_id: str) -> ContainerReading | None:
        tracked = self._tracked.get(container_id)
        return tracked.reading() if tracked is not None else None

    def all_latest(self) -> dict[str, ContainerReading]:
        readings = {i: t.reading() for i, t in self._tracked.items()}
        return {i: r for i, r in readings.items() if r is not None}

    def history(self, container_id: str) -> deque[GpuPoint]:
        return self._history.get(container_id, deque())

    # --- life cycle ---

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgroup")
        self._task = asyncio.create_task(self._run(), name="container-stats")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._executor is not None:  # a pass under way ends before its files are closed
            self._executor.shutdown(wait=True)
            self._executor = None
        for tracked in self._tracked.values():
            tracked.reader.close()
        self._tracked.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        bucket_ends = next_tick + self.bucket_s
        while True:
            started = loop.time()
            try:
                await self.sample_once()
                if started >= bucket_ends:
                    self._close_buckets()
                    bucket_ends += math.floor((started - bucket_ends) / self.bucket_s + 1) * (
                        self.bucket_s
                    )
            except Exception:  # never let one bad pass stop the sampler
                log.exception("container stats pass failed")
            self.ticks += 1
            self.tick_seconds += loop.time() - started
            next_tick += self.interval_s
            now = loop.time()
            if next_tick < now:  # late: skip the missed ticks, keep the phase
                next_tick += math.ceil((now - next_tick) / self.interval_s) * self.interval_s
            await asyncio.sleep(next_tick - now)

    async def sample_once(self) -> None:
        """One pass: follow the running containers, then read each one's files."""
        await self._follow(await self._list())
        slow = self.ticks % self._slow_every == 0
        await self._in_worker(_read_all, list(self._tracked.values()), slow)
        for container_id, tracked in list(self._tracked.items()):
            if tracked.gone:  # stopped (the view will say so) or restarted: found afresh
                tracked.reader.close()
                del self._tracked[container_id]
                self._retry_at[container_id] = time.monotonic() + self.interval_s

    def _close_buckets(self) -> None:
        closed = self._clock()
        for container_id, tracked in self._tracked.items():
            if tracked.bucket.samples:
                history = self._history.setdefault(container_id, deque(maxlen=self.max_points))
                history.append(tracked.bucket.point(closed))
            tracked.bucket = _Bucket()

    async def _list(self) -> list[ContainerSummary]:
        """The namespace's containers: from the live view while it is fresh; else from
        Docker, at most every ``STALE_LIST_S`` (the last list meanwhile)."""
        now = time.monotonic()
        if self._view.fresh or now - self._listed_at >= STALE_LIST_S:
            self._listed_at = now
            try:
                self._containers = await self._view.summaries()
            except ApiError as exc:
                log.debug("container stats: no list (%s)", exc.message)
        return self._containers

    async def _follow(self, containers: Iterable[ContainerSummary]) -> None:
        """Open the files of containers newly running; close those of the others; forget
        the series of the removed."""
        listed = {c.id for c in containers}
        running = {c.id for c in containers if c.state == "running"}
        for container_id in [i for i in self._tracked if i not in running]:
            self._tracked.pop(container_id).reader.close()
        for container_id in [i for i in self._history if i not in listed]:
            del self._history[container_id]
        now = time.monotonic()
        self._retry_at = {i: t for i, t in self._retry_at.items() if i in running and t > now}
        new = [i for i in running if i not in self._tracked and i not in self._retry_at]
        for start in range(0, len(new), _INSPECTS_AT_ONCE):
            batch = new[start : start + _INSPECTS_AT_ONCE]
            states = await asyncio.gather(
                *(self._docker.container_state(i) for i in batch), return_exceptions=True
            )
            pids = {
                i: s.pid
                for i, s in zip(batch, states, strict=True)
                if not isinstance(s, BaseException) and s is not None and s.pid
            }
            opened = await self._in_worker(_open_all, pids, self._proc)
            for container_id in batch:
                reader = opened.get(container_id)
                if reader is None:
                    self._retry_at[container_id] = now + RETRY_S
                else:
                    self._tracked[container_id] = _Tracked(reader)

    async def _in_worker(self, call: Callable[..., _T], *args: object) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)


def _open_all(pids: Mapping[str, int], proc: str) -> dict[str, CgroupReader]:
    opened = {}
    for container_id, pid in pids.items():
        files = locate(pid, proc=proc)
        if files is None:
            continue
        try:
            opened[container_id] = CgroupReader(files)
        except OSError as exc:
            log.info("container %s: cgroup files not opened: %s", container_id[:12], exc)
    return opened


def _read_all(tracked: list[_Tracked], slow: bool) -> None:
    now = time.monotonic()  # one clock read a pass: the reads of a pass take milliseconds
    for entry in tracked:
        try:
            _read(entry, slow, now)
        except (OSError, ValueError):  # its cgroup is gone (ENODEV), or half-written
            entry.gone = True


def _read(entry: _Tracked, slow: bool, now: float) -> None:
    """Read one container's files into its fields and its bucket."""
    cpu_ns, usage = entry.reader.fast()
    bucket = entry.bucket
    bucket.samples += 1
    if cpu_ns is not None and entry.cpu_ns is not None and now > entry.read_at:
        # ns over s: % of one core is ns / s / 1e7
        percent = max(0.0, (cpu_ns - entry.cpu_ns) / (now - entry.read_at) / 1e7)
        entry.cpu_percent = percent
        bucket.add(_CPU, percent)
    else:
        entry.cpu_percent = None
    entry.cpu_ns, entry.read_at, entry.memory_usage_bytes = cpu_ns, now, usage
    if slow or entry.slow is None:
        reading = entry.reader.slow()
        if entry.slow is not None and now > entry.slow_at:
            _rates(bucket, entry.slow, reading, now - entry.slow_at)
        if reading.pids is not None:
            bucket.add(_PIDS, reading.pids)
        entry.slow, entry.slow_at = reading, now
    working_set = _working_set(usage, entry.slow)
    if working_set is not None:
        bucket.add(_MEMORY, working_set / _MIB)


def _rates(bucket: _Bucket, before: SlowReading, after: SlowReading, seconds: float) -> None:
    """The counters' rates between two slow reads, into the bucket (once a bucket)."""
    pairs = (
        (before.block_read_bytes, after.block_read_bytes),
        (before.block_write_bytes, after.block_write_bytes),
        (before.network_receive_bytes, after.network_receive_bytes),
        (before.network_transmit_bytes, after.network_transmit_bytes),
    )
    for index, (old, new) in enumerate(pairs, start=_PIDS + 1):
        if old is not None and new is not None:
            bucket.add(index, max(0.0, (new - old) / seconds))

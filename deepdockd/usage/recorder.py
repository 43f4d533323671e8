"""Turns the sampler's passes into usage history.

After each pass: the time since the pass before (monotonic, capped so that a suspended host
or a stalled loop bills no hours) is held by every running or paused deepdockd container on
each GPU or MIG slice its labels name (none while Docker does not answer: unknown, so not
billed), and is busy in proportion to that GPU's activity — GPM's SM activity where the
reading has it (``sm_active``), else NVML's utilization. The seconds gather in memory per
(hour, owner, container, GPU) and go to the store in one transaction per flush interval;
SQLite runs in one thread of the recorder's own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from deepdockd import labels
from deepdockd.background import cancel_and_wait
from deepdockd.containers.view import ContainerView
from deepdockd.docker import ContainerSummary
from deepdockd.errors import ApiError
from deepdockd.gpu.nvml import GpuReading
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.usage.store import (
    FILE_NAME,
    HOUR_S,
    By,
    Key,
    UsageRow,
    UsageStore,
    UsageStoreError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Container states that hold their GPUs.
HOLDING = frozenset({"running", "paused"})
# The longest gap between two passes that is billed, in sampler intervals (and at least this
# many seconds): a longer one is a suspended host or a stalled loop, billed as this much.
GAP_INTERVALS = 3
GAP_MIN_S = 2.0
# How often old rows are pruned.
PRUNE_EVERY_S = 3600.0


def activity(reading: GpuReading | None) -> float:
    """The GPU's busy fraction, 0 to 1: GPM's SM activity where the reading has it
    (``sm_active``, a ratio as DCGM_FI_PROF_SM_ACTIVE: "a warp was resident", a truer idle
    signal), else NVML's utilization ("a kernel was running", a percentage); 0 where neither
    is known."""
    if reading is None:
        return 0.0
    ratio = reading.sm_active
    if ratio is None and reading.utilization_pct is not None:
        ratio = reading.utilization_pct / 100
    return min(max(float(ratio or 0.0), 0.0), 1.0)


def holdings(containers: list[ContainerSummary]) -> list[tuple[str, str, labels.GpuId]]:
    """(owner, container name, GPU or MIG slice) for each one a holding container holds."""
    held = []
    for container in containers:
        if container.state not in HOLDING:
            continue
        owner = container.labels.get(labels.OWNER) or "unknown"
        for gpu in labels.gpu_ids(container.labels):
            held.append((owner, container.name, gpu))
    return held


class UsageRecorder:
    def __init__(
        self,
        sampler: GpuSampler,
        view: ContainerView,
        state_dir: Path,
        *,
        flush_interval_s: float,
        retention_days: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sampler = sampler
        self._view = view
        self.store = UsageStore(state_dir / FILE_NAME)
        self.flush_interval_s = flush_interval_s
        self.retention_s = retention_days * 86400.0
        self._wall_clock = wall_clock
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[Key, tuple[float, float]] = {}
        self._totals: dict[tuple[str, str], float] = {}  # (owner, kind): written and pending
        self._last_pass: float | None = None  # loop time of the last pass
        self.open = False
        self.unavailable_reason: str | None = "the usage history is not open yet"

    # --- life cycle ---

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-db")
        try:
            await self._in_thread(self.store.open)
        except (OSError, UsageStoreError) as exc:  # the daemon runs on; GET /usage says why
            self.unavailable_reason = f"the usage history cannot be opened: {exc}"
            log.error("%s (no GPU-hours are recorded)", self.unavailable_reason)
            return
        self._totals = self.store.totals()
        self.open = True
        self.unavailable_reason = None
        self._tasks = [
            asyncio.create_task(self._follow(), name="usage-recorder"),
            asyncio.create_task(self._keep(), name="usage-writer"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._executor is None:
            return
        if self.open:
            try:  # the last seconds: a clean stop loses none
                await self.flush()
            except Exception:
                log.exception("writing the usage history at the stop failed")
            await self._in_thread(self.store.close)
            self.open = False
        self._executor.shutdown(wait=True)
        self._executor = None

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    # --- recording ---

    async def _follow(self) -> None:
        number = 0
        while True:
            snapshot = await self._sampler.next_processes(number)
            number = snapshot.number
            try:
                await self.record_pass()
            except Exception:  # never let one pass stop the recording
                log.exception("usage recording failed")

    async def record_pass(self) -> None:
        now = asyncio.get_running_loop().time()
        last, self._last_pass = self._last_pass, now
        try:
            containers = await self._view.summaries()
        except ApiError:  # who held what is unknown: this interval is not billed
            return
        if last is None:
            return  # the first pass starts the clock
        cap = max(GAP_INTERVALS * self._sampler.interval_s, GAP_MIN_S)
        self.add(min(now - last, cap), holdings(containers))

    def add(self, elapsed_s: float, held: list[tuple[str, str, labels.GpuId]]) -> None:
        if elapsed_s <= 0 or not held:
            return
        readings = {s.info.index: s.latest for s in self._sampler.statuses()}
        hour = int(self._wall_clock() // HOUR_S * HOUR_S)
        for owner, container, gpu in held:
            # A MIG slice is as busy as its GPU's reading says (NVML's utilization is not
            # given in MIG mode: then 0, unless GPM's SM activity is read).
            busy_s = elapsed_s * activity(readings.get(gpu.gpu))
            key = Key(hour, owner, container, str(gpu))
            held_before, busy_before = self._pending.get(key, (0.0, 0.0))
            self._pending[key] = (held_before + elapsed_s, busy_before + busy_s)
            self._totals[owner, "held"] = self._totals.get((owner, "held"), 0.0) + elapsed_s
            self._totals[owner, "busy"] = self._totals.get((owner, "busy"), 0.0) + busy_s

    # --- writing ---

    async def _keep(self) -> None:
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
                if loop.time() >= next_prune:
                    before = self._wall_clock() - self.retention_s
                    removed = await self._in_thread(self.store.prune, before)
                    if removed:
                        log.info("usage history: pruned %d rows older than the retention", removed)
                    next_prune = loop.time() + PRUNE_EVERY_S
            except Exception:  # a full disk, a locked file: kept in memory, tried again
                log.exception("writing the usage history failed")

    async def flush(self) -> None:
        """Write what gathered since the last flush, in one transaction. On a failure it is
        kept, and added to the next."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self._in_thread(self.store.add, batch)
        except BaseException:
            for key, (held, busy) in self._pending.items():
                held_before, busy_before = batch.get(key, (0.0, 0.0))
                batch[key] = (held_before + held, busy_before + busy)
            self._pending = batch
            raise

    # --- reading ---

    def totals(self) -> dict[tuple[str, str], float]:
        """GPU-seconds per (owner, kind) since the database began, including those not yet
        written: a counter that survives restarts (less what a crash lost)."""
        return dict(self._totals)

    async def query(self, start: float, end: float, by: By, owner: str | None) -> list[UsageRow]:
        """What the database holds (the last flush interval's seconds are not in it yet)."""
        return await self._in_thread(self.store.query, start, end, by, owner)

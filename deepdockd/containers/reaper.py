"""The reaper: a task that stops containers whose lease ended or whose GPUs stayed idle, and
warns their users first; a second task feeds the idle clock from the sampler. It never removes
a container or a volume: a stopped container keeps its home and its files, and starts again
(within its quota, with a lease that has not ended). It also tells the terminals of a user
whose measured disk use reached max_disk_gb (containers/disk.py), once; it stops nothing then.

Every second it looks at the running and paused containers (from the live view) and the idle
clock. A paused container's time paused counts as idle whatever its GPUs show (its processes
cannot run); its warnings go to the audit log only, since a frozen container runs no exec.
When one is due, the stop is decided again by :meth:`ContainerService.reclaim` under the
allocation lock, from Docker's own labels and state and the sampler's data at that moment, so
that a start, a restart or an extension in between wins and no GPU is ever held twice.

Idle is judged from every sample the sampler takes (not one reading): a GPU is idle since the
first of an unbroken run of samples at or under ``idle_gpu_utilization``. A sample without a
utilization (an error, no NVML) breaks the run, and so does a gap in the samples. The clock
lives in memory: after a restart of the daemon it starts again from zero, so that a container
is never stopped early.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from deepdockd.background import cancel_and_wait
from deepdockd.clock import iso, now_utc
from deepdockd.containers.service import ContainerService, ManagedContainer
from deepdockd.containers.view import ContainerView
from deepdockd.docker import Docker
from deepdockd.errors import ApiError
from deepdockd.fairshare.idle import GpuKey, IdleClock
from deepdockd.fairshare.policy import Policy, PolicyHolder
from deepdockd.fairshare.records import EMPTY
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.logfmt import logfmt

log = logging.getLogger(__name__)
audit_log = logging.getLogger("deepdockd.audit")

# How often the reaper looks: a lease ends at most this late.
REAPER_TICK_S = 1.0
# Docker's states of a container that the reaper looks at: both hold GPUs, and a lease runs.
LIVE_STATES = frozenset({"running", "paused"})
# Writes a line to each of the container's terminals (best effort, like wall(1)). The message
# is an argument, never part of the script.
_TELL_TERMINALS = (
    'for t in /dev/pts/[0-9]*; do [ -c "$t" ] && printf "\\r\\n%s\\r\\n" "$1" >"$t"; done '
    "2>/dev/null; true"
)


class Reaper:
    def __init__(
        self,
        containers: ContainerService,
        view: ContainerView,
        sampler: GpuSampler,
        policy: PolicyHolder,
        docker: Docker,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._containers = containers
        self._view = view
        self._sampler = sampler
        self._policy = policy
        self._docker = docker
        self._clock = clock
        self.idle = IdleClock()
        self._running_since: dict[str, float] = {}  # container id -> when first seen running
        self._paused_since: dict[str, float] = {}  # container id -> when first seen paused
        self._idle_warned: set[str] = set()  # warned of an idle stop, in this idle run
        self._disk_warned: set[str] = set()  # warned that its owner is over max_disk_gb
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        self._records_readable = True  # as check_once last read it

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow_samples(), name="reaper-idle-clock"),
            asyncio.create_task(self._run(), name="reaper"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    # --- the loops ---

    async def _follow_samples(self) -> None:
        number = 0
        while True:
            snapshot = await self._sampler.next_processes(number)
            number = snapshot.number
            threshold = self._policy.current.idle_gpu_utilization
            now = self._clock()
            self.idle.observe(self._sampler.statuses(), threshold, now)
            self.idle.observe_slices(snapshot, self._sampler.gpus, now)

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
                if self._failing:
                    log.info("reaper: working again")
                self._failing = False
            except ApiError as exc:  # Docker down, say: the next tick tries again
                if not self._failing:
                    log.warning("reaper: cannot look at the containers: %s", exc.message)
                self._failing = True
            except Exception:
                log.exception("reaper: a check failed")
            await asyncio.sleep(REAPER_TICK_S)

    async def check_once(self) -> None:
        # What creates left while Docker was away goes first, once it answers again.
        await self._containers.leftovers.undo()
        now = self._clock()
        running = []
        summaries = await self._view.summaries()
        # One read of the records for the pass, not one per container: 300 running containers
        # would otherwise stat the file (and its state directory's manifest) 600 times a second.
        records = self._containers.records.snapshot()
        self._records_readable = self._containers.records.readable
        for summary in summaries:
            # A paused container holds its GPUs and its lease runs: it is looked at too.
            if summary.state in LIVE_STATES:
                record = records.get(summary.id, EMPTY)
                running.append(self._containers.describe(summary, record))
        ids = {c.id for c in running}
        for gone in set(self._running_since) - ids:
            del self._running_since[gone]
        self._note_paused(running, now)
        self._idle_warned &= ids
        self._disk_warned &= ids
        for container in running:
            self._running_since.setdefault(container.id, now)
        policy = self._policy.current
        for container in running:
            await self._consider(container, policy)
        over: dict[str, tuple[float, float] | None] = {}  # by owner, measured once a pass
        for container in running:
            if container.owner not in over:
                over[container.owner] = self._containers.over_disk_quota(container.owner, ids)
            await self._warn_if_over_disk(container, over[container.owner])

    # --- one container ---

    async def _consider(self, container: ManagedContainer, policy: Policy) -> None:
        if self._lease_reason(container, self._records_readable) is not None:
            await self._reclaim(container, self._lease_reason)
            return
        if self._idle_reason(container) is not None:
            await self._reclaim(container, self._idle_reason)
            return
        await self._warn_if_due(container, policy)

    def _note_paused(self, live: list[ManagedContainer], now: float) -> None:
        """Since when each paused container has been seen paused (in memory, as the idle
        clock: after a restart of the daemon it counts from zero, never stopping early)."""
        paused = {c.id for c in live if c.state == "paused"}
        for unpaused in set(self._paused_since) - paused:
            del self._paused_since[unpaused]
        for container_id in paused:
            self._paused_since.setdefault(container_id, now)

    def _paused_seconds(self, container: ManagedContainer) -> float:
        """How long the container has been paused: 0 when it is not (as Docker's state for
        it, read by the caller, says)."""
        if container.state != "paused" or container.id not in self._paused_since:
            return 0.0
        return self._clock() - self._paused_since[container.id]

    def _lease_reason(
        self, container: ManagedContainer, records_readable: bool | None = None
    ) -> str | None:
        """``records_readable``: the pass's reading of it; None (the decision under the lock,
        just before a stop) reads it again."""
        if records_readable is None:
            records_readable = self._containers.records.readable
        if not records_readable:
            return None  # the lease may be one that was extended: never stop early
        expires = container.expires_at
        if expires is None or now_utc() < expires:
            return None
        return f"lease ended at {iso(expires)}"

    def _idle_reason(self, container: ManagedContainer) -> str | None:
        policy = self._policy.current
        limit_s = policy.idle_gpu_minutes * 60
        if not limit_s or not container.gpu_indices or not container.idle_reclaim:
            return None
        idle_s = self._idle_seconds(container)
        if idle_s < limit_s:
            return None
        if self._gpus_idle_seconds(container) < limit_s:  # idle for being paused
            held = ", ".join(str(g) for g in container.gpu_indices)
            return (
                f"idle GPUs: paused for {_duration(self._paused_seconds(container))}, "
                f"holding GPU {held} "
                f"(idle_gpu_minutes is {policy.idle_gpu_minutes:g})"
            )
        whole = [str(g) for g in container.gpu_indices if g.slice is None]
        slices = [str(g) for g in container.gpu_indices if g.slice is not None]
        idle = []
        if whole:
            idle.append(
                f"GPU {', '.join(whole)} at or under {policy.idle_gpu_utilization:g}% utilization"
            )
        if slices:
            idle.append(f"MIG slice {', '.join(slices)} with no process")
        return (
            f"idle GPUs: {' and '.join(idle)} for {_duration(idle_s)} "
            f"(idle_gpu_minutes is {policy.idle_gpu_minutes:g})"
        )

    def _idle_seconds(self, container: ManagedContainer) -> float:
        """How long all the container's GPUs and MIG slices have been idle while it ran (0
        without NVML), or how long it has been paused if that is longer: a paused container's
        processes cannot run, so paused time is idle whatever its GPUs show."""
        return max(self._gpus_idle_seconds(container), self._paused_seconds(container))

    def _gpus_idle_seconds(self, container: ManagedContainer) -> float:
        if not self._sampler.available:
            return 0.0
        now = self._clock()
        max_gap_s = 3 * self._sampler.interval_s + 2
        by_uuid: dict[str, GpuKey] = {}
        for info in self._sampler.gpus:
            by_uuid[info.uuid] = info.index
            by_uuid.update({s.uuid: (info.index, s.index) for s in info.slices})
        keys = [by_uuid.get(u) for u in container.gpu_uuids] or [
            g.gpu if g.slice is None else (g.gpu, g.slice) for g in container.gpu_indices
        ]
        running_s = now - max(
            self._running_since.get(container.id, now),
            self._containers.started_at.get(container.id, float("-inf")),
        )
        idle = [
            self.idle.idle_for(key, now, max_gap_s=max_gap_s) if key is not None else 0.0
            for key in keys
        ]
        return min([running_s, *idle])

    async def _reclaim(
        self, container: ManagedContainer, reason_to_stop: Callable[[ManagedContainer], str | None]
    ) -> None:
        reasons: list[str] = []

        def decide(fresh: ManagedContainer) -> str | None:
            reason = reason_to_stop(fresh)
            if reason is not None:
                reasons.append(reason)
            return reason

        stopped = await self._containers.reclaim(container.id, decide)
        if stopped is None:
            return
        reason = reasons[-1]
        log.info("reaper: stopped container %s of %s: %s", stopped.name, stopped.owner, reason)
        _audit("stop", stopped, "stopped", reason)

    # --- warnings ---

    async def _warn_if_due(self, container: ManagedContainer, policy: Policy) -> None:
        warning_s = policy.stop_warning_minutes * 60
        if not warning_s:
            return
        expires, set_at = container.expires_at, container.lease_set_at
        records = self._containers.records
        if (
            self._records_readable
            and expires is not None
            and expires - timedelta(seconds=warning_s) <= now_utc()
            # Only where the lease was longer than the warning: a short one is no surprise.
            and (set_at is None or expires - set_at > timedelta(seconds=warning_s))
            and records.get(container.id).warned_for != expires
        ):
            records.warned(container.id, expires)
            await self._tell(
                container,
                f"its lease ends at {_clock_time(expires)}",
                f"deepdockd: this container stops at {_clock_time(expires)}, when its lease "
                f"ends; extend it with POST /containers/{container.name}/extend",
            )
        limit_s = policy.idle_gpu_minutes * 60
        if not limit_s or limit_s <= warning_s:
            return
        if not container.gpu_indices or not container.idle_reclaim:
            return
        idle_s = self._idle_seconds(container)
        if idle_s < limit_s - warning_s:
            self._idle_warned.discard(container.id)  # busy again: the next idle run is warned
        elif container.id not in self._idle_warned:
            self._idle_warned.add(container.id)
            left = _duration(limit_s - idle_s)
            paused = self._paused_seconds(container) >= idle_s
            await self._tell(
                container,
                f"it has been paused for {_duration(idle_s)}"
                if paused
                else f"its GPUs have been idle for {_duration(idle_s)}",
                f"deepdockd: this container's GPUs have been idle for {_duration(idle_s)}; "
                f"it stops in {left} unless they are used",
            )

    async def _warn_if_over_disk(
        self, container: ManagedContainer, over: tuple[float, float] | None
    ) -> None:
        """Once while its owner stays over max_disk_gb (as last measured; ``over``: (MiB used,
        GiB allowed), None when not): nothing is stopped or deleted, but no container of
        theirs is created or started until they free some."""
        if over is None:
            self._disk_warned.discard(container.id)  # under again: the next time is warned
            return
        if container.id in self._disk_warned:
            return
        self._disk_warned.add(container.id)
        used_mb, allowed_gb = over
        await self._tell(
            container,
            f"{container.owner}'s disk use is over max_disk_gb",
            f"deepdockd: {container.owner}'s disk use ({used_mb / 1024:.2f} GiB: containers' "
            f"writable layers and home volumes) is over the disk quota (max_disk_gb "
            f"{allowed_gb:g} GiB); free some disk: until then no container of "
            f"{container.owner}'s can be created or started (nothing is deleted)",
        )

    async def _tell(self, container: ManagedContainer, why: str, message: str) -> None:
        if container.state == "paused":
            # A frozen container runs no exec, and unpausing it to warn would change the
            # user's state: the warning goes to the audit log (and the daemon's log) only.
            log.info("reaper: %s is paused; its terminals are not told: %s", container.name, why)
            _audit("warn", container, "skipped", f"{why} (paused: its terminals not written)")
            return
        try:
            await self._docker.exec_detached(
                container.id, ["/bin/sh", "-c", _TELL_TERMINALS, "deepdockd-warning", message]
            )
            outcome = "sent"
        except ApiError as exc:
            log.warning("reaper: could not warn the terminals of %s: %s", container.name, exc)
            outcome = "failed"
        _audit("warn", container, outcome, why)


def _audit(action: str, container: ManagedContainer, outcome: str, reason: str) -> None:
    fields = {
        "user": "deepdockd", "action": action, "target": container.name, "outcome": outcome,
        "owner": container.owner, "reason": reason,
    }  # fmt: skip
    audit_log.info("%s", logfmt(fields), extra=fields)  # logfmt, as the API's audit lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _clock_time(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S UTC")

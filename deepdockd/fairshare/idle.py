"""The idle clock: per GPU, since when every sample of the sampler has been idle. Idle is
judged from every sample (not one reading), and an unknown sample breaks the run, as does a gap
in the samples. The clock lives in memory, so after a restart of the daemon it starts again
from zero and a container is never stopped early. The reaper (containers/reaper.py) reads it.

- A whole GPU is idle in a sample at or under the utilization threshold; a sample without a
  utilization (an error, no NVML) is unknown.
- A MIG slice has no utilization of its own in NVML (the parent GPU's is not supported in MIG
  mode), so it is idle in a sample that lists no process on it; a GPU whose processes could
  not be listed is unknown. A process that holds a slice without computing keeps it busy: the
  rule never stops work that merely waits.
"""

from __future__ import annotations

from collections.abc import Iterable

from deepdockd.gpu.nvml import GpuInfo
from deepdockd.gpu.sampler import GpuStatus, ProcessSnapshot

# A whole GPU by its index, or a MIG slice by (GPU index, slice index).
GpuKey = int | tuple[int, int]


class IdleClock:
    """Per GPU or MIG slice, since when every sample has been idle."""

    def __init__(self) -> None:
        self._idle_since: dict[GpuKey, float | None] = {}
        self._sampled_at: dict[GpuKey, float] = {}

    def observe(self, statuses: Iterable[GpuStatus], threshold_pct: float, now: float) -> None:
        for status in statuses:
            reading = status.latest
            utilization = None if reading is None or reading.error else reading.utilization_pct
            self._sample(
                status.info.index,
                None if utilization is None else utilization <= threshold_pct,
                now,
            )

    def observe_slices(
        self, snapshot: ProcessSnapshot, gpus: Iterable[GpuInfo], now: float
    ) -> None:
        """One pass's processes, for the MIG slices of ``gpus``."""
        for info in gpus:
            if not info.slices:
                continue
            processes = snapshot.processes.get(info.index)
            for found in info.slices:
                idle = (
                    None
                    if processes is None
                    else not any(p.mig_slice == found.index for p in processes)
                )
                self._sample((info.index, found.index), idle, now)

    def _sample(self, key: GpuKey, idle: bool | None, now: float) -> None:
        """``idle`` None: unknown, which breaks the run like a busy sample."""
        self._sampled_at[key] = now
        if not idle:
            self._idle_since[key] = None
        elif self._idle_since.get(key) is None:
            self._idle_since[key] = now

    def idle_for(self, key: GpuKey, now: float, *, max_gap_s: float) -> float:
        """Seconds the GPU or slice has been idle; 0 when it is not, or its samples stopped
        coming."""
        since, sampled = self._idle_since.get(key), self._sampled_at.get(key)
        if since is None or sampled is None or now - sampled > max_gap_s:
            return 0.0
        return now - since

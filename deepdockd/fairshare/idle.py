"""The idle clock: per GPU, since when every sample of the sampler has been at or under the
idle threshold. Idle is judged from every sample (not one reading): a sample without a
utilization (an error, no NVML) breaks the run, and so does a gap in the samples. The clock
lives in memory, so after a restart of the daemon it starts again from zero and a container
is never stopped early. The reaper (containers/reaper.py) reads it."""

from __future__ import annotations

from collections.abc import Iterable

from deepdockd.gpu.sampler import GpuStatus


class IdleClock:
    """Per GPU index, since when every sample has been at or under the threshold."""

    def __init__(self) -> None:
        self._idle_since: dict[int, float | None] = {}
        self._sampled_at: dict[int, float] = {}

    def observe(self, statuses: Iterable[GpuStatus], threshold_pct: float, now: float) -> None:
        for status in statuses:
            index = status.info.index
            reading = status.latest
            utilization = None if reading is None or reading.error else reading.utilization_pct
            self._sampled_at[index] = now
            if utilization is None or utilization > threshold_pct:
                self._idle_since[index] = None
            elif self._idle_since.get(index) is None:
                self._idle_since[index] = now

    def idle_for(self, index: int, now: float, *, max_gap_s: float) -> float:
        """Seconds the GPU has been idle; 0 when it is not, or its samples stopped coming."""
        since, sampled = self._idle_since.get(index), self._sampled_at.get(index)
        if since is None or sampled is None or now - sampled > max_gap_s:
            return 0.0
        return now - since

"""The GPU time series in coarser windows, for ``GET /metrics/gpus?step=``: a dashboard that
shows a day asks for a few hundred points, not the 8,640 buckets of 10 s that the sampler keeps.

The rules (openapi.yaml says the same to clients):

- The windows are the intervals (k*step, (k+1)*step] of Unix time: open at their start, closed
  at their end. A bucket that closed exactly at k*step belongs to the window that ends there,
  so ``since=<a window's start>`` (strictly after) gets that whole window again: how a
  dashboard refreshes the last, still-growing window.
- A window's point is stamped with the ``timestamp`` of its newest input point (when its newest
  bucket closed), the same ISO 8601 text.
- Each field is the mean of the input points' values weighted by their ``samples``, over the
  points that have that field; null where none has it. ``samples`` is the sum of theirs.
- ``limit`` keeps the last windows, not the last input points (``since`` is the caller's to
  apply first: it cuts the input points).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from deepdockd.gpu import gpm
from deepdockd.gpu.sampler import GpuPoint

# The fields of a point that are means (the others: timestamp, samples).
_MEAN_FIELDS = (
    "memory_used", "utilization", "power_usage", "temperature", "fan_speed", *gpm.SERIES_FIELDS,
)  # fmt: skip
_US_PER_S = 1_000_000


def rebucket(
    points: Sequence[GpuPoint],
    step_s: int,
    limit: int | None = None,
    *,
    mean_fields: Sequence[str] = _MEAN_FIELDS,
) -> list[GpuPoint]:
    """``points`` (in time order, as the sampler keeps them) merged into windows of ``step_s``
    seconds, oldest first; with ``limit``, the last ``limit`` windows only. Windows are read
    from the newest end, so only the points of the windows kept are decoded, each once.
    ``mean_fields``: the fields that are means (a container's series has its own)."""
    step_us = step_s * _US_PER_S
    newest_first: Iterable[tuple[int, Iterable[GpuPoint]]] = itertools.groupby(
        reversed(points), key=lambda p: _window_end_us(p.timestamp, step_us)
    )
    if limit is not None:
        newest_first = itertools.islice(newest_first, limit)
    windows = [_merge(list(group), mean_fields) for _, group in newest_first]
    windows.reverse()
    return windows


def _window_end_us(timestamp: float, step_us: int) -> int:
    """The end of the window (k*step, (k+1)*step] that holds ``timestamp``, in whole
    microseconds: in integers, a point exactly at k*step falls on the right side, whatever
    the float's last bits (the timestamps come from datetimes, to the microsecond)."""
    timestamp_us = round(timestamp * _US_PER_S)
    return -(-timestamp_us // step_us) * step_us


def _merge(newest_first: list[GpuPoint], mean_fields: Sequence[str]) -> GpuPoint:
    decoded = [point.fields() for point in reversed(newest_first)]
    document: dict[str, Any] = {"timestamp": decoded[-1]["timestamp"]}
    for name in mean_fields:
        total = weight = 0.0
        for fields in decoded:
            value = fields[name]
            if value is not None:
                total += value * fields["samples"]
                weight += fields["samples"]
        # The sampler keeps no empty bucket: a weight of 0 is a field no point had.
        document[name] = total / weight if weight else None
    document["samples"] = sum(fields["samples"] for fields in decoded)
    return GpuPoint(timestamp=newest_first[0].timestamp, json=json.dumps(document).encode())

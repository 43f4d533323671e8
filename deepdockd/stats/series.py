"""A container's series for ``GET /containers/{name}/stats``: the points after ``since``, merged
into windows of ``step`` seconds with the GPU series' rules (deepdockd/gpu/series.py), the last
``limit`` of them."""

from __future__ import annotations

from datetime import datetime

from deepdockd.gpu.sampler import GpuPoint, points_since
from deepdockd.gpu.series import rebucket
from deepdockd.stats.sampler import SERIES_FIELDS, ContainerStats


def container_series(
    stats: ContainerStats,
    container_id: str,
    since: datetime | None,
    limit: int | None,
    step_s: int | None,
) -> list[GpuPoint]:
    """One container's points (at most ``RETENTION_S`` / bucket: 360 by default, so merging
    them stays on the loop, well under a millisecond)."""
    history = stats.history(container_id)
    if step_s is None:
        return points_since(history, since, limit)
    points = points_since(history, since, None)
    return rebucket(points, step_s, limit, mean_fields=SERIES_FIELDS)

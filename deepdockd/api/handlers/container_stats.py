"""A container's resource use over time: ``GET /containers/{name}/stats``, its owner's and the
admins' only (404 for anyone else, as every container route)."""

from __future__ import annotations

import json

from aiohttp import web

from deepdockd.api.auth import caller_of
from deepdockd.api.handlers.gpus import MAX_STEP_S
from deepdockd.api.keys import CONTAINERS, STATS
from deepdockd.api.query import int_query, time_query
from deepdockd.stats.series import container_series


async def container_stats(request: web.Request) -> web.Response:
    """``{"name", "step", "points": [...]}``; ``since``, ``limit`` and ``step`` as for
    ``GET /metrics/gpus``; ``step`` says the window asked for, else the bucket's length."""
    since = time_query(request, "since")
    limit = int_query(request, "limit")
    step_s = int_query(request, "step", maximum=MAX_STEP_S)
    container = await request.app[CONTAINERS].get(request.match_info["name"], caller_of(request))
    stats = request.app[STATS]
    points = container_series(stats, container.id, since, limit, step_s)
    step = step_s if step_s is not None else stats.bucket_s
    head = json.dumps({"name": container.name, "step": step}).encode()[:-1]
    # The points are stored encoded: the answer is their JSON, joined.
    body = head + b', "points": [' + b",".join(p.json for p in points) + b"]}"
    return web.Response(body=body, content_type="application/json")

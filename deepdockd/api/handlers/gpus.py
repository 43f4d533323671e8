"""The host and its GPUs: the host's figures, every GPU's time series, who uses which GPU,
and the Prometheus exposition under dcgm-exporter's names."""

from __future__ import annotations

from aiohttp import web

from deepdockd.api import answers
from deepdockd.api.auth import caller_of
from deepdockd.api.keys import EXPORTER, METRICS
from deepdockd.api.query import int_query, time_query
from deepdockd.errors import Forbidden
from deepdockd.exporter.service import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE

# The widest window of GET /metrics/gpus?step=: a leap year, in seconds.
MAX_STEP_S = 86_400 * 366


async def host_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    host = await metrics.host()
    return web.json_response(
        {
            "gpu_count": metrics.gpu_count,
            "ram_total_mb": host.ram_total_mb,
            "ram_available_mb": host.ram_available_mb,
            "cpu_cores": host.cpu_cores,
            "cpu_logical_cores": host.cpu_logical_cores,
            "load_average": list(host.load_average),
        }
    )


async def gpu_metrics(request: web.Request) -> web.Response:
    """Every GPU's time series: ``{"0": [point, ...], ...}``; ``since`` and ``limit`` cut it,
    ``step`` merges it into windows of that many seconds."""
    since = time_query(request, "since")
    limit = int_query(request, "limit")
    step_s = int_query(request, "step", maximum=MAX_STEP_S)
    history = await request.app[METRICS].gpu_history(since, limit, step_s)
    # The points are stored encoded: the answer is their JSON, joined.
    parts = [
        b'"%d":[%s]' % (index, b",".join(p.json for p in points))
        for index, points in history.items()
    ]
    return web.Response(body=b"{" + b",".join(parts) + b"}", content_type="application/json")


async def prometheus_metrics(request: web.Request) -> web.Response:
    if not caller_of(request).is_admin:
        raise Forbidden(
            "GET /metrics/prometheus names every user's containers and processes: it answers"
            " admin tokens only (give the Prometheus server one, in a credentials_file)"
        )
    body = await request.app[EXPORTER].scrape()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def list_gpus(request: web.Request) -> web.Response:
    entries = await request.app[METRICS].gpus(caller_of(request))
    return web.json_response({"count": len(entries), "gpus": [answers.gpu(e) for e in entries]})

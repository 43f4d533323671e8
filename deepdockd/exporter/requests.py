"""HTTP requests, counted by route and status, with a latency histogram."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

# Up to a pull or a create (seconds); a list answers in milliseconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "deepdockd_http_requests",
            "HTTP requests answered, by method, route and status.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "deepdockd_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of a streamed answer), by method and"
            " route.",
            ("method", "route"),
            buckets=_BUCKETS,
            registry=registry,
        )

    def middleware(self) -> Middleware:
        @web.middleware
        async def request_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500  # unless the handler answers (the error middleware answers errors)
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                route = _route(request)
                self.duration.labels(request.method, route).observe(time.perf_counter() - started)
                self.requests.labels(request.method, route, str(status)).inc()

        return request_metrics


def _route(request: web.Request) -> str:
    """The route's template ("/containers/{name}"), never the path itself: one series per
    route, whatever names the clients send."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"

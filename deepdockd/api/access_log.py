"""The access log: one line per request, in the daemon's log format (logs.py)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from deepdockd.api.keys import REQUEST_USER

ACCESS_LOGGER = "deepdockd.access"


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, duration, user, client."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        user = request.get(REQUEST_USER, "-")
        self.logger.info(
            "%s %s %d %.1fms user=%s client=%s",
            request.method, request.path_qs, response.status, time * 1000, user, request.remote,
            extra={
                "method": request.method, "path": request.path_qs, "status": response.status,
                "duration_ms": round(time * 1000, 3), "user": user, "client": request.remote,
            },
        )  # fmt: skip

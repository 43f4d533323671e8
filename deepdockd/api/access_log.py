"""The access log: one line per request, in the daemon's log format (logs.py)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from deepdockd.api.keys import REQUEST_USER
from deepdockd.logfmt import logfmt

ACCESS_LOGGER = "deepdockd.access"


class AccessLogger(AbstractAccessLogger):
    """One line per request, in logfmt (logfmt.py): method, path, status, duration, user,
    client. A path is the client's text: quoted, it stays one value."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        fields = {
            "method": request.method, "path": request.path_qs, "status": response.status,
            "duration_ms": round(time * 1000, 3), "user": request.get(REQUEST_USER, "-"),
            "client": request.remote,
        }  # fmt: skip
        self.logger.info("%s", logfmt(fields), extra=fields)

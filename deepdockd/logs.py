"""Logging to stderr (journald takes it from there), as text or as one JSON object a line
for log shippers: the daemon's lines, and one access line per request."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

ACCESS_LOGGER = "deepdockd.access"
# Where authentication puts the user's name, for the access log.
REQUEST_USER = web.RequestKey("user", str)

# The attributes every LogRecord has; anything else was passed in `extra`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a NUL in a header, say) with a traceback; that
    is the client's fault, worth one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name == "aiohttp.server" and isinstance(error, HttpProcessingError):
            one_line = " ".join(str(error).split())
            record.msg, record.args, record.exc_info = "malformed request: %s", (one_line,), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MalformedRequestFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""Logging to stderr (journald takes it from there): the daemon's lines and one access line
per request."""

from __future__ import annotations

import logging
import sys

from aiohttp.http_exceptions import HttpProcessingError

ACCESS_LOGGER = "deepdockd.access"
# remote address, request line, status, response size, seconds taken
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


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


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MalformedRequestFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

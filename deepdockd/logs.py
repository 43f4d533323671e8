"""Logging to stderr (journald takes it from there): the daemon's lines and one access line
per request."""

from __future__ import annotations

import logging
import sys

ACCESS_LOGGER = "deepdockd.access"
# remote address, request line, status, response size, seconds taken
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

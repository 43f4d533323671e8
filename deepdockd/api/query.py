"""Query parameters and headers, each read once and checked: a bad value is a 400 that
names it."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from deepdockd.errors import InvalidInput
from deepdockd.tokens import USER_NAME

# Far above any history (24 h of 1 s buckets is 86,400 points), far below what breaks islice.
MAX_QUERY_INT = 10_000_000


def bool_query(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput(f"{name}: must be true or false", details={"field": name})
    return value in ("true", "1")


def int_query(request: web.Request, name: str, *, maximum: int = MAX_QUERY_INT) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    # The length first: int() refuses (ValueError) a string of more than 4,300 digits.
    if not text.isdecimal() or len(text) > len(str(maximum)) or not 1 <= int(text) <= maximum:
        raise InvalidInput(
            f"{name}: must be a whole number from 1 to {maximum}", details={"field": name}
        )
    return int(text)


def time_query(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{name}: {text!r} is not an ISO 8601 timestamp (e.g. 2025-12-01T19:02:30+00:00)",
            details={"field": name},
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def user_query(request: web.Request, name: str, default: str) -> str:
    user = request.query.get(name, default)
    if not USER_NAME.fullmatch(user):
        raise InvalidInput(f"{name}: {user!r} is not a user name", details={"field": name})
    return user


def last_event_id(request: web.Request) -> int | None:
    """The ``Last-Event-ID`` header of a client that resumes an event stream."""
    text = request.headers.get("Last-Event-ID", "")
    if not text:
        return None
    if not text.isdecimal() or len(text) > 18:
        raise InvalidInput(
            "Last-Event-ID: must be the id of an event this stream sent (a whole number)",
            details={"field": "Last-Event-ID"},
        )
    return int(text)

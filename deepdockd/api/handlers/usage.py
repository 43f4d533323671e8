"""GET /usage: GPU-hours held and busy from the usage history (docs/usage.md); a user's own,
an admin's everyone's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from aiohttp import web

from deepdockd.api.auth import caller_of
from deepdockd.api.keys import USAGE
from deepdockd.api.query import time_query
from deepdockd.clock import now_utc
from deepdockd.errors import InvalidInput, ServiceUnavailable
from deepdockd.usage.store import By, UsageRow

DEFAULT_DAYS = 30
BY = ("owner", "container", "gpu")


async def get_usage(request: web.Request) -> web.Response:
    by = request.query.get("by", "owner")
    if by not in BY:
        raise InvalidInput(
            f"by: {by!r} is not one of owner, container, gpu", details={"field": "by"}
        )
    end = _utc(request, "to") or now_utc()
    start = _utc(request, "from")
    if start is None:
        try:
            start = end - timedelta(days=DEFAULT_DAYS)
        except OverflowError:
            start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        raise InvalidInput(
            f"from: {_iso(start)} is not before to ({_iso(end)})", details={"field": "from"}
        )
    usage = request.app[USAGE]
    if not usage.open:
        raise ServiceUnavailable(usage.unavailable_reason or "the usage history is not open")
    caller = caller_of(request)
    owner = None if caller.is_admin else caller.user
    rows = await usage.query(start.timestamp(), end.timestamp(), cast(By, by), owner)
    return web.json_response(
        {"from": _iso(start), "to": _iso(end), "by": by, "rows": [_row(r, by) for r in rows]}
    )


def _utc(request: web.Request, name: str) -> datetime | None:
    moment = time_query(request, name)
    try:
        return None if moment is None else moment.astimezone(UTC)
    except OverflowError:  # an offset that takes it past year 1 or 9999
        raise InvalidInput(
            f"{name}: {request.query[name]!r} is out of range in UTC", details={"field": name}
        ) from None


def _iso(moment: datetime) -> str:
    # isoformat, not strftime: year 1 is "0001" (the default "from" of a "to" in year 1).
    return moment.isoformat().replace("+00:00", "Z")


def _row(row: UsageRow, by: str) -> dict[str, object]:
    answer: dict[str, object] = {}
    if by in ("owner", "container"):
        answer["owner"] = row.owner
    if by == "container":
        answer["container"] = row.container
    if by == "gpu":
        answer["gpu"] = row.gpu
    answer["gpu_hours_held"] = round(row.held_s / 3600, 9)
    answer["gpu_hours_busy"] = round(row.busy_s / 3600, 9)
    return answer

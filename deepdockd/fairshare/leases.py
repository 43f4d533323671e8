"""Leases: a container may run until its end, then the reaper stops it (never removes it).

A create asks for ``lease_hours`` (else the config's ``default_lease_hours``), up to
``max_lease_hours``; the end goes into a label, and an extension into the container's record
(labels cannot change).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from deepdockd import labels
from deepdockd.clock import parse_iso
from deepdockd.errors import Conflict, InvalidInput
from deepdockd.fairshare.policy import Policy
from deepdockd.fairshare.records import Lease, Record


class LeaseExpired(Conflict):
    code = "lease_expired"


def lease_hours_for(asked: float | None, policy: Policy) -> float:
    """The hours a lease gets: ``asked``, else the default; 0 means none. Above the ceiling
    (and "none" under a ceiling) is a 422 that names it."""
    hours = policy.default_lease_hours if asked is None else asked
    ceiling = policy.max_lease_hours
    if ceiling and (hours == 0 or hours > ceiling):
        asked_text = "no lease (0)" if hours == 0 else f"{hours:g} hours"
        raise InvalidInput(
            f"lease_hours: {asked_text} is above max_lease_hours ({ceiling:g} hours): ask for "
            f"{ceiling:g} or less, and extend it later (POST /containers/NAME/extend)",
            details={"field": "lease_hours", "max_lease_hours": ceiling},
        )
    return hours


def lease_from(hours: float, now: datetime) -> Lease:
    if hours == 0:
        return Lease(expires_at=None, set_at=now)
    return Lease(expires_at=now + timedelta(seconds=round(hours * 3600)), set_at=now)


def lease_of(container_labels: Mapping[str, str], record: Record) -> Lease:
    """The container's lease: its record's (an extension) when there is one, else its
    labels' (as made)."""
    if record.lease is not None:
        return record.lease
    expires = _parse(container_labels.get(labels.LEASE_EXPIRES, ""))
    return Lease(expires_at=expires, set_at=_parse(container_labels.get(labels.CREATED, "")))


def _parse(text: str) -> datetime | None:
    try:
        # Docker's nanoseconds (CREATED) are more than fromisoformat reads: cut to seconds.
        return parse_iso(text[:19] + "+00:00") if len(text) >= 19 else None
    except ValueError:
        return None

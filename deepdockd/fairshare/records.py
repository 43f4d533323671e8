"""What fair share must remember about a container that Docker cannot keep for it.

A container's labels are fixed when it is made, so a lease that is extended, and the reason
the reaper stopped a container, live in ``STATE_DIR/containers.json``, a state file that fails
closed (``state_files.py``; read again whenever it changes), keyed by container id:

    {"containers": {"<id>": {"lease": {"expires_at": "2026-11-28T09:00:00Z",
                                       "set_at": "2026-11-27T09:00:00Z"},
                             "stopped_reason": "…", "stopped_at": "…",
                             "warned_for": "2026-11-28T09:00:00Z"}}}

``lease`` (when present) replaces the lease of the container's labels; its ``expires_at`` is
null for a lease taken away. A record whose container is gone decides nothing, and is dropped
when the container is removed through the API.

A file that cannot be read, or that was written before and is gone, makes :attr:`readable`
false: the reaper then stops nothing for a lease, since the lease it would read from the labels
may be one that was extended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from deepdockd.clock import iso, parse_iso
from deepdockd.errors import ServiceUnavailable
from deepdockd.state_files import StateDirectory, StateFileMissing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    expires_at: datetime | None  # None: no lease
    set_at: datetime | None  # when it was given its end (None: unknown)


@dataclass(frozen=True)
class Record:
    lease: Lease | None = None  # None: the labels' lease
    stopped_reason: str | None = None
    stopped_at: datetime | None = None
    warned_for: datetime | None = None  # the end the user was last warned of


EMPTY = Record()


class RecordsUnreadable(ServiceUnavailable):
    """The file cannot be read: writing it now would lose what it holds."""

    code = "container_records_unreadable"


class ContainerRecords:
    def __init__(self, state: StateDirectory | Path) -> None:
        # The state directory, whose other files (the ports' release times) fail closed alike.
        self.directory = state if isinstance(state, StateDirectory) else StateDirectory(state)
        self._file = self.directory.file("containers.json")
        self.path = self._file.path
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) last read
        self._records: dict[str, Record] = {}
        self._readable = True
        self._problem: str | None = None  # why it cannot be read, as last logged
        self._refusal = ""  # what a change is told while it cannot be read

    @property
    def readable(self) -> bool:
        """Whether the file can be read now (or was never written)."""
        self._refresh()
        return self._readable

    def get(self, container_id: str) -> Record:
        self._refresh()
        return self._records.get(container_id, EMPTY)

    def snapshot(self) -> Mapping[str, Record]:
        """Every record, by container id, read once (one ``stat`` of the file, and a read
        only when it changed): for a pass over many containers, a list or the reaper's.
        A record is a new object whenever it changes, so a caller may cache by identity;
        the mapping is the live one, to read at once, not to keep across an await."""
        self._refresh()
        return self._records

    def set_lease(self, container_id: str, lease: Lease) -> None:
        self._change(container_id, lease=lease, warned_for=None)

    def stopped(self, container_id: str, reason: str, at: datetime) -> None:
        self._change(container_id, stopped_reason=reason, stopped_at=at)

    def started(self, container_id: str) -> None:
        """It runs again: the reason it was stopped no longer describes it."""
        if self.readable and self.get(container_id).stopped_reason is not None:
            self._change(container_id, stopped_reason=None, stopped_at=None)

    def warned(self, container_id: str, deadline: datetime) -> None:
        self._change(container_id, warned_for=deadline)

    def forget(self, container_id: str) -> None:
        self._refresh()
        if self._readable and self._records.pop(container_id, None) is not None:
            self._save()

    def _change(self, container_id: str, **changes: Any) -> None:
        """Write the change through; refused while the file cannot be read, so that what it
        holds (an extended lease) is never written over."""
        self._refresh()
        if not self._readable:
            raise RecordsUnreadable(self._refusal, details={"path": str(self.path)})
        record = replace(self._records.get(container_id, EMPTY), **changes)
        if record == EMPTY:
            self._records.pop(container_id, None)
        else:
            self._records[container_id] = record
        self._save()

    # --- the file ---

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._records = None, {}
            try:
                self._file.check_absent()
            except StateFileMissing as exc:
                self._unreadable(
                    f"{exc}: until {exc.until}, no container is stopped for its lease, leases "
                    "show as they were made, and extending one is refused (writing it anew as "
                    "{} forgets every extended lease and stop reason)"
                )
            except OSError as exc:  # the state directory itself unreadable
                self._unreadable(f"{self.path} cannot be read ({exc})")
            else:
                self._readable, self._problem = True, None
            return
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self._records = _parse(self._file.read() or "{}")
            self._readable, self._problem = True, None
        except StateFileMissing:  # removed between the stat and the read: asked again
            self._seen = None
            self._refresh()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._records = {}
            self._unreadable(
                f"{self.path} cannot be read ({exc}): until it is mended no container is "
                "stopped for its lease, leases show as they were made, and extending one is "
                "refused",
                refusal=f"{self.path} cannot be read: mend it (or write it anew as {{}}, which "
                "forgets every extended lease and stop reason) and ask again",
            )

    def _unreadable(self, problem: str, *, refusal: str | None = None) -> None:
        """Logged once, until the problem changes; ``refusal`` is what a change is told."""
        if problem != self._problem:
            log.error("%s", problem)
        self._readable, self._problem, self._refusal = False, problem, refusal or problem

    def _save(self) -> None:
        document = {"containers": {i: _encode(r) for i, r in sorted(self._records.items())}}
        self._file.write(json.dumps(document, indent=2) + "\n")
        info = self.path.stat()
        self._seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        self._readable = True


def _encode(record: Record) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if record.lease is not None:
        document["lease"] = {
            "expires_at": iso(record.lease.expires_at),
            "set_at": iso(record.lease.set_at),
        }
    for key in ("stopped_reason", "stopped_at", "warned_for"):
        value = getattr(record, key)
        if value is not None:
            document[key] = iso(value) if isinstance(value, datetime) else value
    return document


def _parse(text: str) -> dict[str, Record]:
    records = {}
    for container_id, entry in json.loads(text).get("containers", {}).items():
        lease = entry.get("lease")
        records[str(container_id)] = Record(
            lease=Lease(parse_iso(lease["expires_at"]), parse_iso(lease.get("set_at")))
            if lease is not None
            else None,
            stopped_reason=entry.get("stopped_reason"),
            stopped_at=parse_iso(entry.get("stopped_at")),
            warned_for=parse_iso(entry.get("warned_for")),
        )
    return records

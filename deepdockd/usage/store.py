"""The usage history: GPU-seconds held and busy per owner, container, GPU and hour, in one
SQLite file of the state directory (``usage.db``, mode 0600, WAL).

Rows are hourly buckets, upserted: 8 GPUs and 50 users for a month are at most a few
thousand rows per active container-GPU pair. ``totals`` counts every second ever added, per
owner and kind, pruning aside: the Prometheus counter reads it, so it survives restarts.

Every method is blocking: the recorder calls them in its one thread (a connection stays on
the thread that opened it), never on the event loop.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FILE_NAME = "usage.db"
HOUR_S = 3600

By = Literal["owner", "container", "gpu"]
Kind = Literal["held", "busy"]

# One entry per schema version: the statements that bring version n-1 to n. A database newer
# than the last entry is refused (a downgraded daemon must not write into it).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE usage (
            hour INTEGER NOT NULL,      -- the bucket's start, seconds since the epoch (UTC)
            owner TEXT NOT NULL,
            container TEXT NOT NULL,    -- the container's name
            gpu TEXT NOT NULL,          -- the GPU's index, as the API names it
            held_s REAL NOT NULL,       -- seconds the container held the GPU
            busy_s REAL NOT NULL,       -- held seconds weighted by the GPU's activity
            PRIMARY KEY (hour, owner, container, gpu)
        ) WITHOUT ROWID""",
        "CREATE INDEX usage_by_owner ON usage (owner, hour)",
        """CREATE TABLE totals (
            owner TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('held', 'busy')),
            seconds REAL NOT NULL,
            PRIMARY KEY (owner, kind)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class UsageStoreError(Exception):
    """A usage database that cannot be used (newer than this daemon, not SQLite)."""


@dataclass(frozen=True)
class Key:
    hour: int
    owner: str
    container: str
    gpu: str


@dataclass(frozen=True)
class UsageRow:
    owner: str | None  # None in by=gpu rows
    container: str | None  # by=container only
    gpu: str | None  # by=gpu only
    held_s: float
    busy_s: float


class UsageStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._totals: dict[tuple[str, str], float] = {}

    # --- life cycle ---

    def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made 0600 before SQLite writes a byte; its -wal and -shm files take the same mode.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, isolation_level=None)  # transactions by hand
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint
            db.execute("PRAGMA busy_timeout=5000")
            self._migrate(db)
            self._totals = {
                (owner, kind): seconds
                for owner, kind, seconds in db.execute("SELECT owner, kind, seconds FROM totals")
            }
        except sqlite3.DatabaseError as exc:
            db.close()
            raise UsageStoreError(f"{self.path}: {exc}") from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def schema_version(self) -> int:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        return int(version)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise UsageStoreError(f"{self.path} is not open")
        return self._db

    def _migrate(self, db: sqlite3.Connection) -> None:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise UsageStoreError(
                f"{self.path} has schema version {version}; this deepdockd knows up to"
                f" {SCHEMA_VERSION}"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number - 1]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # --- writing ---

    def add(self, seconds: Mapping[Key, tuple[float, float]]) -> None:
        """Add (held, busy) seconds to each bucket, and to the totals, in one transaction."""
        if not seconds:
            return
        totals: dict[tuple[str, str], float] = {}
        for key, (held, busy) in seconds.items():
            totals[key.owner, "held"] = totals.get((key.owner, "held"), 0.0) + held
            totals[key.owner, "busy"] = totals.get((key.owner, "busy"), 0.0) + busy
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO usage (hour, owner, container, gpu, held_s, busy_s)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hour, owner, container, gpu) DO UPDATE"
                " SET held_s = held_s + excluded.held_s, busy_s = busy_s + excluded.busy_s",
                [(k.hour, k.owner, k.container, k.gpu, h, b) for k, (h, b) in seconds.items()],
            )
            db.executemany(
                "INSERT INTO totals (owner, kind, seconds) VALUES (?, ?, ?)"
                " ON CONFLICT (owner, kind) DO UPDATE SET seconds = seconds + excluded.seconds",
                [(owner, kind, value) for (owner, kind), value in totals.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for key_, value in totals.items():
            self._totals[key_] = self._totals.get(key_, 0.0) + value

    def prune(self, before: float) -> int:
        """Remove the buckets that ended before ``before`` (seconds since the epoch); the
        totals keep them."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = db.execute("DELETE FROM usage WHERE hour + ? <= ?", (HOUR_S, before)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return removed

    # --- reading ---

    def totals(self) -> dict[tuple[str, str], float]:
        """Seconds per (owner, kind) since the database began, as written."""
        return dict(self._totals)

    def query(self, start: float, end: float, by: By, owner: str | None = None) -> list[UsageRow]:
        """The buckets that overlap [start, end), summed by ``by``; ``owner`` None: everyone's."""
        columns = {"owner": "owner", "container": "owner, container", "gpu": "gpu"}[by]
        where = "hour + ? > ? AND hour < ?"
        parameters: list[object] = [HOUR_S, start, end]
        if owner is not None:
            where += " AND owner = ?"
            parameters.append(owner)
        cursor = self._conn.execute(
            f"SELECT {columns}, SUM(held_s), SUM(busy_s) FROM usage WHERE {where}"
            f" GROUP BY {columns} ORDER BY SUM(held_s) DESC, {columns}",
            parameters,
        )
        rows = []
        for found in cursor:
            if by == "owner":
                rows.append(UsageRow(found[0], None, None, found[1], found[2]))
            elif by == "container":
                rows.append(UsageRow(found[0], found[1], None, found[2], found[3]))
            else:
                rows.append(UsageRow(None, None, found[0], found[1], found[2]))
        return rows

    def integrity(self) -> str:
        (result,) = self._conn.execute("PRAGMA integrity_check").fetchone()
        return str(result)

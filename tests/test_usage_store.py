"""The usage history's SQLite store, on a temporary directory: what is written is what a
query reads, by owner, container and GPU, over a range; old rows are pruned; the schema is
versioned; the file is private. And the recorder's rules: what holds a GPU, how busy it is."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepdockd import labels
from deepdockd.docker import ContainerSummary
from deepdockd.gpu.nvml import GpuReading
from deepdockd.usage.recorder import activity, holdings
from deepdockd.usage.store import (
    FILE_NAME,
    HOUR_S,
    SCHEMA_VERSION,
    Key,
    UsageStore,
    UsageStoreError,
)

# 2026-11-01T00:00:00Z
NOV_1 = 1793491200


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UsageStore]:
    opened = UsageStore(tmp_path / "state" / FILE_NAME)
    opened.open()
    yield opened
    opened.close()


def _fill(store: UsageStore) -> None:
    store.add(
        {
            Key(NOV_1, "alice", "alice-train", "0"): (3600.0, 1800.0),
            Key(NOV_1, "alice", "alice-train", "1"): (3600.0, 3600.0),
            Key(NOV_1 + HOUR_S, "alice", "alice-eval", "2"): (1800.0, 0.0),
            Key(NOV_1, "bob", "bob-nb", "2"): (900.0, 90.0),
        }
    )


def test_by_owner_sums_each_owners_buckets(store: UsageStore) -> None:
    _fill(store)
    rows = store.query(NOV_1, NOV_1 + 2 * HOUR_S, "owner")
    assert [(r.owner, r.held_s, r.busy_s) for r in rows] == [
        ("alice", 9000.0, 5400.0),
        ("bob", 900.0, 90.0),
    ]
    assert all(r.container is None and r.gpu is None for r in rows)


def test_by_container_and_by_gpu(store: UsageStore) -> None:
    _fill(store)
    by_container = store.query(NOV_1, NOV_1 + 2 * HOUR_S, "container")
    assert [(r.owner, r.container, r.held_s) for r in by_container] == [
        ("alice", "alice-train", 7200.0),
        ("alice", "alice-eval", 1800.0),
        ("bob", "bob-nb", 900.0),
    ]
    by_gpu = store.query(NOV_1, NOV_1 + 2 * HOUR_S, "gpu")
    assert [(r.gpu, r.held_s, r.busy_s) for r in by_gpu] == [
        ("0", 3600.0, 1800.0),
        ("1", 3600.0, 3600.0),
        ("2", 2700.0, 90.0),
    ]
    assert all(r.owner is None for r in by_gpu)


def test_one_owners_rows_only(store: UsageStore) -> None:
    _fill(store)
    rows = store.query(NOV_1, NOV_1 + 2 * HOUR_S, "gpu", owner="bob")
    assert [(r.gpu, r.held_s) for r in rows] == [("2", 900.0)]
    assert store.query(NOV_1, NOV_1 + 2 * HOUR_S, "owner", owner="carol") == []


def test_a_range_takes_the_buckets_it_overlaps(store: UsageStore) -> None:
    _fill(store)
    second_hour = store.query(NOV_1 + HOUR_S, NOV_1 + 2 * HOUR_S, "container")
    assert [(r.container, r.held_s) for r in second_hour] == [("alice-eval", 1800.0)]
    # Half of the first hour: its bucket overlaps, so it counts.
    inside = store.query(NOV_1 + 60, NOV_1 + 120, "owner")
    assert [(r.owner, r.held_s) for r in inside] == [("alice", 7200.0), ("bob", 900.0)]
    # A range that ends where the first bucket starts takes none of it.
    assert store.query(NOV_1 - HOUR_S, NOV_1, "owner") == []


def test_writes_to_one_bucket_add_up(store: UsageStore) -> None:
    key = Key(NOV_1, "alice", "alice-train", "0")
    store.add({key: (5.0, 2.5)})
    store.add({key: (5.0, 5.0)})
    (row,) = store.query(NOV_1, NOV_1 + HOUR_S, "container")
    assert (row.held_s, row.busy_s) == (10.0, 7.5)
    assert store.totals() == {("alice", "held"): 10.0, ("alice", "busy"): 7.5}


def test_prune_removes_old_buckets_and_keeps_the_totals(store: UsageStore) -> None:
    _fill(store)
    removed = store.prune(NOV_1 + HOUR_S)  # every bucket that ended by then
    assert removed == 3
    rows = store.query(0, NOV_1 + 10 * HOUR_S, "container")
    assert [(r.container, r.held_s) for r in rows] == [("alice-eval", 1800.0)]
    assert store.totals()[("alice", "held")] == 9000.0


def test_totals_and_rows_survive_a_reopen(tmp_path: Path, store: UsageStore) -> None:
    _fill(store)
    store.close()
    again = UsageStore(store.path)
    again.open()
    try:
        assert again.totals() == {
            ("alice", "held"): 9000.0,
            ("alice", "busy"): 5400.0,
            ("bob", "held"): 900.0,
            ("bob", "busy"): 90.0,
        }
        assert len(again.query(NOV_1, NOV_1 + 2 * HOUR_S, "container")) == 3
        assert again.integrity() == "ok"
    finally:
        again.close()


def test_the_file_is_private_wal_and_versioned(store: UsageStore) -> None:
    _fill(store)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    wal = store.path.with_name(FILE_NAME + "-wal")
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert store.schema_version == SCHEMA_VERSION == 1
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_database_from_a_newer_deepdockd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with sqlite3.connect(path) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = UsageStore(path)
    with pytest.raises(UsageStoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        store.open()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"not a database, " * 100)
    with pytest.raises(UsageStoreError, match=str(path)):
        UsageStore(path).open()


def reading(**fields: float | None) -> GpuReading:
    base: dict[str, float | None] = dict.fromkeys(
        ("memory_used_mib", "utilization_pct", "power_w", "temperature_c", "fan_pct")
    )
    return GpuReading(**{**base, **fields})  # type: ignore[arg-type]


def test_busy_is_sm_activity_where_gpm_gives_it_else_utilization() -> None:
    assert activity(reading(utilization_pct=40.0)) == 0.4
    assert activity(reading(utilization_pct=100.0, sm_active=0.25)) == 0.25  # GPM's ratio
    assert activity(reading()) == 0.0  # nothing known: not busy
    assert activity(None) == 0.0  # no reading yet
    assert activity(reading(utilization_pct=130.0)) == 1.0


def container(name: str, state: str, **extra: str) -> ContainerSummary:
    return ContainerSummary(
        id=name, name=name, image="busybox", image_id="sha256:0", state=state,
        labels={labels.OWNER: "alice", **extra}, published={},
    )  # fmt: skip


def test_running_and_paused_containers_hold_their_gpus_and_slices() -> None:
    held = holdings(
        [
            container("a", "running", **{labels.GPU_INDICES: "0,1"}),
            container("b", "paused", **{labels.GPU_INDICES: "2"}),
            container("c", "exited", **{labels.GPU_INDICES: "3"}),
            container("d", "running"),  # no GPU
            container("e", "running", **{labels.GPU_INDICES: "1:0"}),  # a MIG slice
        ]
    )
    assert [(owner, name, str(gpu)) for owner, name, gpu in held] == [
        ("alice", "a", "0"), ("alice", "a", "1"), ("alice", "b", "2"), ("alice", "e", "1:0"),
    ]  # fmt: skip

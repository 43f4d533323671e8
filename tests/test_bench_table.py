"""The benchmark table of docs/benchmarks.md is the output of the run that bench/results.json
holds, and that run measured the code of this tree: the table is rendered again here and must
equal what the page has between the markers, and none of the files the bench measures
(bench/measured.txt) may differ from the commit the run names. No rig needed: git only."""

# ruff: noqa: RUF001  (the table's ratios use the multiplication sign, on purpose)

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE_PAGE = ROOT / "docs" / "benchmarks.md"


def load(name: str) -> ModuleType:
    """bench/<name>.py, which is no package's module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load("report")
measured = load("measured")
RERUN = (
    "Run `make bench` on a committed tree (about 6 minutes on the rig) and commit "
    "bench/results.json and docs/benchmarks.md in a commit of their own"
)


def figure(**fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "name": "GET /containers, 300 containers",
        "value": 27.0,
        "unit": "ms",
        "against": "the raw call",
        "baseline": 18.0,
        "ratio": 1.5,
        "target": "≤ 1.5×",
        "met": True,
        "detail": "",
        "notes": {},
    }
    return row | fields


def test_the_pages_table_is_the_rendering_of_results_json() -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    page = TABLE_PAGE.read_text()

    assert report.between_markers(page) == report.render(results), (
        "docs/benchmarks.md's table is not bench/results.json's run: run `make bench`"
    )


def test_the_run_measured_the_code_of_this_tree() -> None:
    run = json.loads((ROOT / "bench" / "results.json").read_text())["run"]

    assert not run["dirty"], (
        f"the bench's last run measured uncommitted changes to commit {run['commit']}. {RERUN}"
    )
    try:
        changed = measured.changed_since(run["commit"])
    except measured.HistoryMissing as exc:
        pytest.fail(str(exc))
    shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if changed[10:] else "")
    assert not changed, (
        f"docs/benchmarks.md's figures come from a run of commit {run['commit']}, and files "
        f"the bench measures (bench/measured.txt) changed since: {shown}. {RERUN}"
    )


def test_the_table_names_its_run() -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text())

    first_line = report.render(results).splitlines()[0]

    run = results["run"]
    for fact in (run["when"], run["commit"][:7], f"{run['cores']} cores", run["dockerd"]):
        assert str(fact) in first_line


def test_a_missed_target_shows_as_missed() -> None:
    results = {
        "run": {
            "when": "2026-01-01T00:00:00Z",
            "commit": "abc1234",
            "dirty": True,
            "cores": 2,
            "kernel": "6.1.0",
            "dockerd": "20.10.24",
            "python": "3.11.2",
            "seconds": 150.0,
            "load_1min_at_start": 0.5,
            "load_1min_at_end": 1.25,
        },
        "figures": [figure(ratio=1.51, met=False), figure(met=True), figure(met=None)],
    }

    rows = report.render(results).splitlines()[-3:]

    assert rows[0].endswith("| 1.51× | ≤ 1.5× ✗ missed |")
    assert rows[1].endswith("| ≤ 1.5× ✓ |")
    assert "✓" not in rows[2]
    assert "✗" not in rows[2]
    assert "abc1234` dirty" in report.render(results)


def test_the_table_goes_between_the_markers_only() -> None:
    page = f"# x\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n"

    updated = report.with_table(page, "new table")

    assert updated == f"# x\n\nbefore\n{report.BEGIN}\nnew table\n{report.END}\n\nafter\n"
    assert report.between_markers(updated) == "new table"


def test_the_measured_list_takes_in_and_leaves_out_by_its_last_matching_line() -> None:
    listed = measured.rules(
        "# the daemon\ndaemon/**\n!daemon/static/**  # not its page\n"
        "daemon/static/plot.js\nbench/*.py\n"
    )

    taken = [
        path
        for path in (
            "daemon/app.py",
            "daemon/api/handlers/gpus.py",
            "daemon/static/style.css",
            "daemon/static/plot.js",
            "bench/run.py",
            "bench/results.json",
            "bench/sub/run.py",
            "docs/daemon/app.py",
        )
        if measured.is_measured(path, listed)
    ]

    assert taken == ["daemon/app.py", "daemon/api/handlers/gpus.py", "daemon/static/plot.js",
                     "bench/run.py"]  # fmt: skip


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_a_measured_file_changed_since_the_run_is_stale_and_nothing_else_is(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    (repo / "daemon").mkdir(parents=True)
    (repo / "docs").mkdir()
    listed = tmp_path / "measured.txt"
    listed.write_text("daemon/**\n")
    for path in ("daemon/app.py", "daemon/view.py", "docs/guide.md"):
        (repo / path).write_text("one\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "measured here")
    run_commit = git(repo, "rev-parse", "HEAD")

    (repo / "docs" / "guide.md").write_text("two\n")
    git(repo, "commit", "-q", "-am", "docs only")
    after_docs = measured.changed_since(run_commit, root=repo, listed=listed)
    (repo / "daemon" / "app.py").write_text("two\n")
    git(repo, "commit", "-q", "-am", "the daemon")
    (repo / "daemon" / "view.py").write_text("two\n")  # not committed
    (repo / "daemon" / "new.py").write_text("new\n")  # not even added

    assert after_docs == []
    assert measured.changed_since(run_commit, root=repo, listed=listed) == [
        "daemon/app.py",
        "daemon/new.py",
        "daemon/view.py",
    ]


def test_a_run_commit_missing_from_a_shallow_clone_says_to_fetch_the_history(
    tmp_path: Path,
) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q")
    for n in range(2):
        (origin / "file").write_text(f"{n}\n")
        git(origin, "add", ".")
        git(origin, "commit", "-q", "-m", f"commit {n}")
    run_commit = git(origin, "rev-parse", "HEAD~1")
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{origin}", "shallow")

    with pytest.raises(measured.HistoryMissing, match=r"shallow clone.*git fetch --unshallow"):
        measured.changed_since(run_commit, root=tmp_path / "shallow", listed=tmp_path / "none")
    with pytest.raises(measured.HistoryMissing, match="not in this repository's history"):
        measured.changed_since("0" * 40, root=origin, listed=tmp_path / "none")

"""The benchmark table of docs/benchmarks.md is the output of the run that bench/results.json
holds: it is rendered again here and must equal what the page has between the markers. No rig
needed."""

# ruff: noqa: RUF001  (the table's ratios use the multiplication sign, on purpose)

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
TABLE_PAGE = ROOT / "docs" / "benchmarks.md"


def load_report() -> ModuleType:
    """bench/report.py, which is no package's module."""
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report()


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


def test_the_table_names_its_run() -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text())

    first_line = report.render(results).splitlines()[0]

    run = results["run"]
    for fact in (run["when"], run["commit"], f"{run['cores']} cores", run["dockerd"]):
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

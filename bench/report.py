"""The benchmark table of docs/benchmarks.md, rendered from bench/results.json.

bench/run.py writes it into docs/benchmarks.md between the two markers after every full run,
and tests/test_bench_table.py holds that page equal to what results.json renders, so the
table is always the output of the run that its first line names. Nothing here imports more than
the standard library: the test runs without the rig.
"""

# ruff: noqa: RUF001  (the table's ratios use the multiplication sign, on purpose)

from __future__ import annotations

from typing import Any

BEGIN = "<!-- bench:begin: written by `make bench` from bench/results.json; do not edit -->"
END = "<!-- bench:end -->"

_VERDICTS = {True: " ✓", False: " ✗ missed", None: ""}


def render(results: dict[str, Any]) -> str:
    """The line naming the run, then the table: markdown, one row per figure."""
    lines = [
        run_line(results["run"]),
        "",
        "| figure | value | against | baseline | ratio | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_row(figure) for figure in results["figures"]]
    return "\n".join(lines)


def run_line(run: dict[str, Any]) -> str:
    # The commit in full since it names the code to diff against; 7 digits are enough to read.
    commit = f"`{run['commit'][:7]}`" + (" dirty (uncommitted changes)" if run["dirty"] else "")
    return (
        f"Run of {run['when']}, commit {commit}, {run['cores']} cores, kernel {run['kernel']}, "
        f"dockerd {run['dockerd']}, Python {run['python']}, {run['seconds']:.0f} s in all, "
        f"load average {run['load_1min_at_start']:.2f} at the start and "
        f"{run['load_1min_at_end']:.2f} at the end:"
    )


def _row(figure: dict[str, Any]) -> str:
    unit = figure["unit"]
    value = f"{_number(figure['value'], unit)} {unit}"
    if figure["detail"]:
        value += f" ({figure['detail']})"
    baseline = figure["baseline"]
    ratio = figure["ratio"]
    cells = [
        figure["name"],
        value,
        figure["against"],
        "" if baseline is None else f"{_number(baseline, unit)} {unit}",
        "" if ratio is None else f"{ratio:.2f}×",
        figure["target"] + _VERDICTS[figure["met"]],
    ]
    return "| " + " | ".join(cells) + " |"


def _number(value: float, unit: str) -> str:
    # A rate of thousands has no useful decimals; a count of clients has none at all.
    decimals = 0 if unit in ("requests/s", "clients") else 2
    return f"{value:,.{decimals}f}"


def between_markers(page: str) -> str:
    """What the page (docs/benchmarks.md) holds between the markers, without the newlines
    next to them."""
    start = page.index(BEGIN) + len(BEGIN)
    return page[start : page.index(END, start)].strip("\n")


def with_table(page: str, table: str) -> str:
    """The page with ``table`` between the markers, the rest unchanged."""
    start = page.index(BEGIN) + len(BEGIN)
    end = page.index(END, start)
    return f"{page[:start]}\n{table}\n{page[end:]}"

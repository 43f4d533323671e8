"""`deepdock usage`: GPU-hours held and busy, from the server's usage history (GET /usage)."""

from __future__ import annotations

import json
import re
import sys
from contextlib import AbstractContextManager
from typing import Any, Protocol

import click


class Session(Protocol):
    """cli.py's Session (the click context's object), as this command uses it: cli.py
    imports this module, so this one does not import cli.py."""

    def api(self) -> AbstractContextManager[Any]: ...


MONTH = re.compile(r"(\d{4})-(\d{2})")


def month_range(text: str) -> tuple[str, str]:
    """2026-11 -> ("2026-11-01", "2026-12-01"): the month, its end not included."""
    found = MONTH.fullmatch(text)
    if not found or not 1 <= int(found.group(2)) <= 12 or int(found.group(1)) < 1:
        raise click.BadParameter(
            f"{text!r} is not a month: write it as 2026-11", param_hint="--month"
        )
    year, month = int(found.group(1)), int(found.group(2))
    after = (year + 1, 1) if month == 12 else (year, month + 1)
    if after[0] > 9999:
        raise click.BadParameter(f"{text!r} is past the last month there is", param_hint="--month")
    return f"{year:04d}-{month:02d}-01", f"{after[0]:04d}-{after[1]:02d}-01"


@click.command(epilog="Examples: deepdock usage; deepdock usage --month 2026-11 --by container")
@click.option(
    "--month", default=None, metavar="YYYY-MM", help="One month (default: the last 30 days)."
)
@click.option(
    "--by",
    type=click.Choice(["owner", "container", "gpu"]),
    default="owner",
    show_default=True,
    help="What each row sums.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer untouched.")
@click.pass_obj
def usage(session: Session, month: str | None, by: str, as_json: bool) -> None:
    """GPU-hours held and busy: yours, or everyone's for an admin."""
    start, end = month_range(month) if month else (None, None)
    with session.api() as api:
        answer = api.get("/usage", **{"from": start, "to": end, "by": by})
    if as_json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return
    from deepdock.render import table

    rows: list[dict[str, Any]] = answer["rows"]
    first = {"owner": ["OWNER"], "container": ["OWNER", "CONTAINER"], "gpu": ["GPU"]}[by]
    keys = [column.lower() for column in first]
    held = sum(r["gpu_hours_held"] for r in rows)
    busy = sum(r["gpu_hours_busy"] for r in rows)
    table(
        [*first, "GPU-HOURS HELD", "GPU-HOURS BUSY", "BUSY %"],
        [
            *(
                [r[k] for k in keys] + _figures(r["gpu_hours_held"], r["gpu_hours_busy"])
                for r in rows
            ),
            ["total", *[""] * (len(keys) - 1), *_figures(held, busy)],
        ],
    )
    click.echo(f"from {answer['from']} to {answer['to']}")


def _figures(held: float, busy: float) -> list[object]:
    return [f"{held:.2f}", f"{busy:.2f}", f"{100 * busy / held:.0f}" if held else "-"]

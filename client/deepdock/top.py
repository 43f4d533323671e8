"""`deepdock top` (what each container uses now, like `docker stats`) and `deepdock ls --watch`
(the list, redrawn as GET /events says that something changed)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import click

TOP_COLUMNS = ["NAME", "STATUS", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS", "GPU MEM", "GPU %"]


class Session(Protocol):
    """cli.py's Session (the click context's object), as these commands use it: cli.py
    imports this module, so this one does not import cli.py."""

    def api(self) -> AbstractContextManager[Any]: ...


@click.command(epilog="Examples: deepdock top; deepdock top --once; deepdock top --json")
@click.option("--once", is_flag=True, help="Print the table once and exit (no live redraw).")
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.5),
    help="Seconds between redraws.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer untouched.")
@click.pass_obj
def top(session: Session, once: bool, interval: float, as_json: bool) -> None:
    """What each of your containers uses now (an admin: everyone's): CPU in % of one core
    (two busy cores: 200 %), memory working set and limit, processes, GPU memory and
    utilization. Redrawn every second until Ctrl-C; the server samples each interval."""
    with session.api() as api:
        if as_json:
            sys.stdout.write(json.dumps(api.get("/containers"), indent=2) + "\n")
            return
        from deepdock.render import console

        if once:
            console.print(top_table(api.get("/containers")["containers"]))
            return
        _live(lambda: top_table(api.get("/containers")["containers"]), interval)


def _live(draw: Callable[[], Any], interval: float) -> None:
    from rich.live import Live

    from deepdock.render import console

    try:
        with Live(draw(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(draw(), refresh=True)
    except KeyboardInterrupt:
        pass


def top_table(containers: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    from deepdock.render import clean, number

    shown = Table(box=None, header_style="bold", pad_edge=False)
    for column in TOP_COLUMNS:
        shown.add_column(column, justify="left" if column in ("NAME", "STATUS") else "right")
    for c in sorted(containers, key=lambda c: (c["status"] != "running", c["name"])):
        used, limit = c.get("memory_used_mb"), c.get("memory_limit_mb")
        memory = "-" if used is None else f"{_size(used)} / {_size(limit) if limit else 'none'}"
        share = number(100 * used / limit, "%", 1) if used is not None and limit else "-"
        shown.add_row(
            clean(c["name"]), clean(c["status"]), number(c.get("cpu_percent"), "%", 1), memory,
            share, number(c.get("pids")), number(c.get("gpu_memory_used_mib"), " MiB"),
            number(c.get("gpu_utilization"), "%"),
        )  # fmt: skip
    return shown


def _size(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.1f} MiB"


def watch_list(session: Session) -> None:
    """The container list, drawn again each time GET /events tells of a change (and every
    30 s, against a change missed while the stream was reconnecting)."""
    from rich.live import Live

    from deepdock.api import NO_READ_DEADLINE, ApiFailure
    from deepdock.render import CONTAINER_COLUMNS, clean, console, containers_rows

    def draw(api: Any) -> Any:
        from rich.table import Table

        shown = Table(box=None, header_style="bold", pad_edge=False)
        for column in CONTAINER_COLUMNS:
            shown.add_column(column, overflow="fold")
        for row in containers_rows(api.get("/containers")["containers"], None):
            shown.add_row(*("" if cell is None else clean(cell) for cell in row))
        return shown

    with session.api() as api:
        try:
            with Live(draw(api), console=console, auto_refresh=False) as live:
                while True:
                    try:
                        # The server ends the stream after `timeout` s; then it is opened again.
                        with api.stream(
                            "GET", "/events", params={"timeout": 30},
                            headers={"Accept": "text/event-stream"}, timeout=NO_READ_DEADLINE,
                        ) as response:  # fmt: skip
                            for line in response.iter_lines():
                                if line.startswith("event:"):
                                    live.update(draw(api), refresh=True)
                    except ApiFailure:
                        time.sleep(1.0)  # the server restarting: try again
                    live.update(draw(api), refresh=True)
        except KeyboardInterrupt:
            pass

"""A pull's NDJSON stream as people want to see it: on a terminal, one progress bar per layer
with bytes and speed; elsewhere, a plain line each time a layer's status changes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from deepdockd.client.render import console


def follow_pull(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Show the progress events; the last line (the result, or ``{"error": …}``)."""
    if console.is_terminal:
        return _bars(events)
    return _lines(events)


def _bars(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
    )  # fmt: skip
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console, transient=False) as bars:
        for event in events:
            if "status" not in event:
                return event
            layer = event.get("layer")
            if not layer:
                bars.console.print(event["status"])
                continue
            description = f"{layer[:12]} {event['status']}"
            if layer not in tasks:
                tasks[layer] = bars.add_task(description, total=event.get("total"))
            bars.update(
                tasks[layer], description=description, completed=event.get("current") or 0,
                total=event.get("total"),
            )  # fmt: skip
            if event["status"] in ("Download complete", "Pull complete", "Already exists"):
                total = bars.tasks[tasks[layer]].total
                bars.update(tasks[layer], completed=total or 1, total=total or 1)
    return {"error": {"message": "the pull's stream ended without a result"}}


def _lines(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    said: dict[str | None, str] = {}
    for event in events:
        if "status" not in event:
            return event
        layer = event.get("layer")
        if said.get(layer) != event["status"]:
            said[layer] = event["status"]
            print(f"{layer[:12]}: {event['status']}" if layer else event["status"], flush=True)
    return {"error": {"message": "the pull's stream ended without a result"}}

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

from deepdock.render import clean, console


def follow_pull(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Show the progress events; the last line (the result, or ``{"error": …}``)."""
    if console.is_terminal:
        return _bars(events)
    return _lines(events)


def _bars(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(),
    )  # fmt: skip
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console, transient=False) as bars:
        for event in events:
            if "status" not in event:
                return event
            layer = event.get("layer")
            if not layer:
                bars.console.print(clean(event["status"]))
                continue
            description = clean(f"{layer[:12]} {event['status']}")
            if layer not in tasks:
                tasks[layer] = bars.add_task(description, total=event.get("total"))
            if event.get("current") is not None:  # events without bytes keep the bar where it is
                bars.update(tasks[layer], completed=event["current"], total=event.get("total"))
            bars.update(tasks[layer], description=description)
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
            line = f"{layer[:12]}: {event['status']}" if layer else event["status"]
            print(clean(line), flush=True)
    return {"error": {"message": "the pull's stream ended without a result"}}

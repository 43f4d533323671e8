"""Tables for people (rich), JSON for scripts. Colour only on a terminal: rich leaves it out
when stdout is not one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# What servers send is text, never rich markup ("[/docs]" in a name must not be a tag).
console = Console(highlight=False, markup=False)
if not console.is_terminal:
    console.width = max(console.width, 250)  # piped to grep or a file: a row is one line

# C0, DEL and C1 (U+009B is a CSI to some terminals, as ESC [ is to all).
_CONTROL = dict.fromkeys([*range(32), *range(127, 160)], "?")
# Output (a container's logs) keeps its lines and tabs; a "\r" would let a line hide another.
_OUTPUT_CONTROL = {k: v for k, v in _CONTROL.items() if chr(k) not in "\n\t"}


def clean(text: object) -> str:
    """Server text for a terminal: no control characters (no escape sequences)."""
    return str(text).translate(_CONTROL)


def clean_output(text: str) -> str:
    """A container's output for a terminal: its lines and tabs, no other control character."""
    return text.translate(_OUTPUT_CONTROL)


_SPARKS = "▁▂▃▄▅▆▇█"


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    shown = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        shown.add_column(column, overflow="fold")
    for row in rows:
        shown.add_row(*("" if cell is None else clean(cell) for cell in row))
    console.print(shown)


def sparkline(values: Sequence[float | None], width: int = 30) -> str:
    """The values (0-100) as block characters, at most ``width``, each the mean of a slice."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    step = max(1, -(-len(values) // width))
    marks = []
    for start in range(0, len(values), step):
        chunk = [v for v in values[start : start + step] if v is not None]
        if not chunk:
            marks.append(" ")
            continue
        level = min(100.0, max(0.0, sum(chunk) / len(chunk)))
        marks.append(_SPARKS[min(len(_SPARKS) - 1, int(level / 100 * len(_SPARKS)))])
    return "".join(marks)


def number(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def containers_rows(containers: list[dict[str, Any]], server: str | None) -> list[list[object]]:
    rows = []
    for c in containers:
        ports = ", ".join(f"{inside}->{outside}" for inside, outside in c.get("ports", {}).items())
        row = [
            c["name"], c["status"], c["image"][0] if c["image"] else "",
            ",".join(c["gpus"]) or "-", c["ssh-port"] or "-", c["owner"],
            c.get("expires_at") or "-", ports or "-",
        ]  # fmt: skip
        if c.get("stopped_reason"):
            row[1] = f"{c['status']} ({c['stopped_reason']})"
        rows.append(([server] if server is not None else []) + row)
    return rows


CONTAINER_COLUMNS = ["NAME", "STATUS", "IMAGE", "GPUS", "SSH", "OWNER", "EXPIRES", "PORTS"]


def gpu_rows(
    gpus: list[dict[str, Any]], history: dict[str, list[dict[str, Any]]], server: str | None
) -> list[list[object]]:
    rows = []
    for gpu in gpus:
        points = history.get(str(gpu["index"]), [])
        latest = points[-1] if points else {}
        used, total = latest.get("memory_used"), gpu.get("memory_total_mib")
        memory = f"{number(used)}/{number(total)} MiB" if total else number(used, " MiB")
        processes = gpu.get("processes") or []
        stray = sum(1 for p in processes if p.get("stray"))
        holders = ", ".join(gpu.get("containers") or []) or "-"
        flags = f"{stray} stray" if stray else ""
        if gpu.get("health") not in (None, "ok"):
            flags = f"{flags} {gpu['health']}".strip()
        row = [
            gpu["index"], gpu["name"], memory, number(latest.get("utilization"), "%"),
            number(latest.get("power_usage"), " W"), number(latest.get("temperature"), "°C"),
            sparkline([p.get("utilization") for p in points]), holders, flags,
        ]  # fmt: skip
        rows.append(([server] if server is not None else []) + row)
        rows.extend(([server] if server is not None else []) + s for s in mig_rows(gpu))
    return rows


def mig_rows(gpu: dict[str, Any]) -> list[list[object]]:
    """A row under a GPU in MIG mode for each of its slices: its id (what --gpus takes), its
    profile, its memory and who holds it."""
    rows: list[list[object]] = []
    for piece in gpu.get("mig_slices") or []:
        used, total = piece.get("memory_used_mib"), piece.get("memory_total_mib")
        memory = f"{number(used)}/{number(total)} MiB" if total else number(used, " MiB")
        holders = piece.get("holders") or []
        held_by = ", ".join(f"{h['container']} ({h['owner']})" for h in holders)
        if not held_by:
            held_by = "held" if piece.get("held") else "-"
        rows.append(
            [f" {piece['id']}", f"MIG {piece['profile']}", memory, "", "", "", "", held_by, ""]
        )
    return rows


GPU_COLUMNS = ["GPU", "NAME", "MEMORY", "UTIL", "POWER", "TEMP", "LAST HOUR", "HELD BY", ""]

"""The host directories every container gets (the config's ``shared_mounts``), parsed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SharedMount:
    source: str
    target: str
    read_only: bool = True

    def __str__(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


def parse_shared_mounts(raw: object) -> tuple[SharedMount, ...]:
    """A TOML array in the file; one string, comma-separated, in the environment; or
    ValueError(why)."""
    items = raw
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")] if raw else []
    if not isinstance(items, list):
        items = [None]
    mounts = []
    for item in items:
        parts = item.split(":") if isinstance(item, str) else []
        mode = parts.pop() if len(parts) == 3 else "ro"
        if (
            len(parts) != 2
            or mode not in ("ro", "rw")
            or not all(
                p.startswith("/") and "," not in p and ".." not in p.split("/") for p in parts
            )
        ):
            raise ValueError(
                'must be "HOST_PATH:CONTAINER_PATH[:ro|rw]" entries with absolute paths, as in '
                '["/srv/datasets:/datasets:ro"] (comma-separated in the environment)'
            )
        mounts.append(SharedMount(parts[0], parts[1], read_only=mode == "ro"))
    return tuple(mounts)

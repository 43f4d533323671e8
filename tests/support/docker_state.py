"""What the rig's Docker holds, read and swept as a test's assertions and clean-ups need it."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from tests.support.rig import Rig, RigError, unix_http_get


def inspect(rig: Rig, name: str) -> dict[str, Any]:
    """``docker inspect`` of one container."""
    [data] = json.loads(rig.docker("inspect", name))
    return dict(data)


def namespace_holdings(rig: Rig, namespace: str) -> dict[str, list[str]]:
    """What Docker holds of a namespace, by its label: container, network and volume names,
    and the ids of the images committed in it. Read through the API (four requests on the
    socket), as cheap as a test's end needs."""
    filters = quote(json.dumps({"label": [f"deepdockd.namespace={namespace}"]}))
    found: dict[str, list[str]] = {}
    for kind, path in (
        ("containers", f"/containers/json?all=1&filters={filters}"),
        ("networks", f"/networks?filters={filters}"),
        ("volumes", f"/volumes?filters={filters}"),
    ):
        status, body = unix_http_get(rig.docker_socket, path, timeout_s=10)
        if status != 200:
            raise RigError(f"GET {path} on the rig's Docker: {status} {body[:200]!r}")
        listed = json.loads(body)
        if kind == "containers":
            found[kind] = [c["Id"] for c in listed]
        elif kind == "networks":
            found[kind] = [n["Id"] for n in listed]
        else:
            found[kind] = [v["Name"] for v in listed["Volumes"] or []]
    # The images its containers were committed to (deepdockd/containers/commit.py).
    committed = quote(json.dumps({"label": [f"deepdockd.committed-in={namespace}"]}))
    status, body = unix_http_get(
        rig.docker_socket, f"/images/json?filters={committed}", timeout_s=10
    )
    if status != 200:
        raise RigError(f"GET /images/json on the rig's Docker: {status} {body[:200]!r}")
    found["images"] = [i["Id"] for i in json.loads(body)]
    return found


def clear_namespace(rig: Rig, namespace: str, *, rounds: int = 10) -> None:
    """Remove whatever a test's namespace left in Docker: its containers (with their anonymous
    volumes), then the owner networks and home volumes that deepdockd made for them; and
    fail if any of them is still there after (a network something still uses, a volume still
    mounted), rather than leave it to the rig's next start.

    Docker releases a removed container's network endpoints a moment after ``rm`` answers
    (seen after twenty containers went at once: ``network rm`` refused, "active endpoints"),
    so what stays is tried again, a few rounds half a second apart, before it counts."""
    held = namespace_holdings(rig, namespace)
    refusals: list[str] = []
    for round_ in range(rounds):
        if not any(held.values()):
            return
        if round_:
            time.sleep(0.5)
        refusals = []
        for kind, removal in (
            ("containers", ["rm", "--force", "--volumes"]),
            ("images", ["rmi", "--force"]),
            ("networks", ["network", "rm"]),
            ("volumes", ["volume", "rm", "--force"]),
        ):
            if held[kind]:
                # One that went meanwhile (a daemon still stopping removes its networks) is
                # no failure; one that stays is tried again, and then fails below.
                try:
                    rig.docker(*removal, *held[kind])
                except RigError as exc:
                    refusals.append(str(exc))
        held = namespace_holdings(rig, namespace)
    left = {kind: names for kind, names in held.items() if names}
    assert not left, f"namespace {namespace} still holds, after its clean-up: {left} ({refusals})"

"""What the rig's Docker holds, read and swept as a test's assertions and clean-ups need it."""

from __future__ import annotations

import json
from typing import Any

from tests.support.rig import Rig


def inspect(rig: Rig, name: str) -> dict[str, Any]:
    """``docker inspect`` of one container."""
    [data] = json.loads(rig.docker("inspect", name))
    return dict(data)


def clear_namespace(rig: Rig, namespace: str) -> None:
    """Remove whatever a test's namespace left in Docker: containers, networks, volumes."""
    label = f"label=deepdockd.namespace={namespace}"
    for kind, removal in (
        (["ps", "--all", "--quiet"], ["rm", "--force"]),
        (["network", "ls", "--quiet"], ["network", "rm"]),
        (["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
    ):
        found = rig.docker(*kind, "--filter", label).split()
        if found:
            rig.docker(*removal, *found)

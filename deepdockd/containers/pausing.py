"""Pause and unpause: Docker's freezer, for the owner or an admin.

A paused container keeps everything it holds: its GPUs (their memory stays allocated), its
ports, its place in its owner's quotas, its lease (which goes on running, and stops it when it
ends). The reaper treats paused time as idle time (containers/reaper.py), so a container
paused and forgotten is stopped by the idle rule like an idle one.

Pausing a container that is paused already answers as a pause (as a start of a running
container does); unpausing one that is not paused is a 409, as is pausing one that does not
run. The state is Docker's word, read when asked, never the view's copy.
"""

from __future__ import annotations

from deepdockd.containers.model import ContainerNotRunning
from deepdockd.containers.service import ContainerService
from deepdockd.containers.view import ContainerView
from deepdockd.docker import Docker, DockerConflict
from deepdockd.errors import Conflict
from deepdockd.tokens import Caller


class ContainerNotPaused(Conflict):
    code = "container_not_paused"


async def pause(
    containers: ContainerService, docker: Docker, view: ContainerView, name: str, caller: Caller
) -> None:
    container = await containers.get(name, caller)  # another user's: 404, as a missing one
    try:
        state = await _state(docker, container.id)
        if state == "paused":
            return
        if state != "running":
            raise _not_running(name, state)
        try:
            await docker.pause_container(container.id)
        except DockerConflict:  # it stopped (or was paused) between the two calls
            state = await _state(docker, container.id)
            if state != "paused":
                raise _not_running(name, state) from None
    finally:
        await view.refresh(container.id)


async def unpause(
    containers: ContainerService, docker: Docker, view: ContainerView, name: str, caller: Caller
) -> None:
    container = await containers.get(name, caller)
    try:
        state = await _state(docker, container.id)
        if state != "paused":
            raise ContainerNotPaused(
                f"container {name!r} is {state}, not paused: there is nothing to unpause",
                details={"name": name, "state": state},
            )
        try:
            await docker.unpause_container(container.id)
        except DockerConflict:  # stopped, or unpaused by someone else, meanwhile
            state = await _state(docker, container.id)
            if state != "running":
                raise ContainerNotPaused(
                    f"container {name!r} is {state}, not paused: there is nothing to unpause",
                    details={"name": name, "state": state},
                ) from None
    finally:
        await view.refresh(container.id)


async def _state(docker: Docker, container_id: str) -> str:
    """Docker's state of the container ("running", "paused", "exited", ...); "removed" when
    it is gone."""
    state = await docker.container_state(container_id)
    return "removed" if state is None else state.status


def _not_running(name: str, state: str) -> ContainerNotRunning:
    return ContainerNotRunning(
        f"container {name!r} is {state}, not running: only a running container can be paused "
        f"(start it first)",
        details={"name": name, "state": state},
    )

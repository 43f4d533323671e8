"""What failed creates leave behind when Docker does not answer (it went away mid-create):
their containers (and then their bootstrap's directories), and owner networks owed a release.
Each is undone once Docker answers again; nothing is remembered across a restart of deepdockd
(the containers stay, listed; their directories are swept at the start once they are gone)."""

from __future__ import annotations

import asyncio
import logging

from deepdockd.containers.bootstrap_inputs import BootstrapInputs
from deepdockd.containers.networks import OwnerNetworks
from deepdockd.containers.view import ContainerView
from deepdockd.docker import Docker, DockerNotFound
from deepdockd.errors import ApiError

log = logging.getLogger(__name__)


class Leftovers:
    def __init__(
        self,
        docker: Docker,
        view: ContainerView,
        networks: OwnerNetworks,
        bootstrap_inputs: BootstrapInputs,
    ) -> None:
        self._docker = docker
        self._view = view
        self._networks = networks
        self._bootstrap_inputs = bootstrap_inputs
        # id -> its name, and the token of its bootstrap's directory (None: copied in)
        self._containers: dict[str, tuple[str, str | None]] = {}
        self._networks_owed = False
        self._undoing = asyncio.Lock()

    async def release_network(self, owner: str) -> None:
        """Give back ``owner``'s network if they have no other container; owed, if Docker
        does not answer."""
        if not await self._networks.release(owner):
            self._networks_owed = True

    async def discard(self, container_id: str, name: str, bootstrap: str | None) -> bool:
        """Remove a container whose create failed, and then its bootstrap's directory;
        whether it is gone. Never raises, even when cancelled: one that Docker could not
        remove now is removed once it answers again (:meth:`undo`)."""
        try:
            await asyncio.shield(self._docker.remove_container(container_id, force=True))
        except DockerNotFound:
            pass  # gone already
        except (ApiError, asyncio.CancelledError) as exc:
            log.error(
                "could not remove the failed container %s (%s) yet: %s", name, container_id[:12],
                exc.message if isinstance(exc, ApiError) else "cancelled",
            )  # fmt: skip
            self._containers[container_id] = (name, bootstrap)
            return False
        log.info("removed the failed container %s", name)
        self._gone(container_id, bootstrap)
        return True

    async def undo(self) -> None:
        """Remove the containers, and release the owner networks, that failed creates left;
        what still fails waits for the next call (the reaper's tick, and every allocation).
        Never raises."""
        if not self._containers and not self._networks_owed:
            return
        async with self._undoing:
            for container_id, (name, bootstrap) in list(self._containers.items()):
                try:
                    await self._docker.remove_container(container_id, force=True)
                except DockerNotFound:
                    pass
                except ApiError:
                    return  # Docker still away: the next call tries again
                log.info("removed the failed container %s, now that Docker answers", name)
                self._gone(container_id, bootstrap)
                self._networks_owed = True
            if self._networks_owed and await self._networks.release("", quiet=True):
                self._networks_owed = False

    def _gone(self, container_id: str, bootstrap: str | None) -> None:
        self._containers.pop(container_id, None)
        self._view.forget(container_id)
        self._bootstrap_inputs.remove(bootstrap)

"""The bootstrap's files on this host: a directory per container, root's alone, under
``STATE_DIR/bootstrap/NAMESPACE/``, which the container mounts read-only at INPUT_DIR. It is
made before Docker's create (a bind mount's source must exist), filled before the start, and
takes no time of Docker's: copying the same files in through Docker's archive call costs
about 30 ms a create, most of it Docker's own (it mounts the container, then runs a copy of
itself in a chroot to unpack).

The directory is named by a random token, which the container's label ``deepdockd.bootstrap``
holds. The password's hash and the keys go from it once the container's SSH server answers
(the bootstrap has used them); the directory goes with the container. One that no container
names (a container removed behind deepdockd's back) goes at deepdockd's start, once it is
old enough that no create in flight can be making it.

Where it cannot be mounted (mount_host_files off; a Docker over TCP, perhaps another machine;
a Docker that remaps root to another uid, which could not read it), the files are copied in
instead."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from deepdockd import labels
from deepdockd.config import Config
from deepdockd.containers.bootstrap import BootstrapFile
from deepdockd.containers.ssh_server import mount_host_files
from deepdockd.docker import Docker
from deepdockd.errors import ApiError

log = logging.getLogger(__name__)

# Used once: deleted from the directory once the container's SSH server answers.
USED_ONCE = ("secret", "authorized_keys")
# How old a directory that no container names must be before it is swept.
SWEEP_AFTER_S = 600.0


class BootstrapInputs:
    def __init__(self, docker: Docker, config: Config) -> None:
        self._docker = docker
        self._config = config
        self.root = config.state_dir / "bootstrap" / config.namespace
        self._mountable: bool | None = None  # known after the first ask

    async def mountable(self) -> bool:
        """Whether containers can mount the files from this host: mount_host_files, Docker
        on this host's socket, and root in a container is root here (no userns-remap)."""
        if self._mountable is None:
            if not mount_host_files(self._config):
                self._mountable = False
            else:
                try:
                    remapped = await self._docker.userns_remapped()
                except ApiError:
                    return False  # asked again at the next create
                self._mountable = not remapped
                if remapped:
                    log.info("Docker remaps root to another uid: bootstrap files are copied in")
        return self._mountable

    def directory(self, token: str) -> Path:
        return self.root / token

    async def make(self) -> str | None:
        """A new, empty directory, root's alone; its token, or None where the files cannot
        be mounted."""
        if not await self.mountable():
            return None
        token = secrets.token_hex(16)
        await asyncio.to_thread(self._make, self.directory(token))
        return token

    def _make(self, path: Path) -> None:
        for folder in (path.parent.parent, path.parent):
            folder.mkdir(mode=0o700, exist_ok=True)
        path.mkdir(mode=0o700)

    async def fill(self, token: str, files: Sequence[BootstrapFile]) -> None:
        await asyncio.to_thread(_write, self.directory(token), files)

    def used(self, token: str) -> None:
        """The container's SSH server answers: the hash and the keys are no longer needed."""
        for name in USED_ONCE:
            (self.directory(token) / name).unlink(missing_ok=True)

    def remove(self, token: str | None) -> None:
        """The container is gone."""
        if token:
            shutil.rmtree(self.directory(token), ignore_errors=True)

    async def sweep_unnamed(self) -> None:
        """Remove the directories that no container names any more (containers removed
        behind deepdockd's back); at the daemon's start. Docker's own list, not the view's:
        every container of the namespace, whatever its state."""
        listed = await self._docker.list_containers(
            filters=labels.namespace_filter(self._config.namespace)
        )
        named = {c.labels.get(labels.BOOTSTRAP, "") for c in listed}
        swept = await asyncio.to_thread(self.sweep, named)
        if swept:
            log.info("removed %d bootstrap directories that no container names", len(swept))

    def sweep(self, named: Collection[str], *, now: float | None = None) -> list[str]:
        """Remove the directories that no container names (``named``: the tokens of every
        container of this namespace, as Docker lists them), once older than SWEEP_AFTER_S;
        the tokens removed."""
        now = time.time() if now is None else now
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if path.name in named or now - path.stat().st_mtime < SWEEP_AFTER_S:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed


def _write(directory: Path, files: Sequence[BootstrapFile]) -> None:
    for file in files:
        path = directory / file.name
        path.touch(mode=file.mode)
        path.chmod(file.mode)
        path.write_bytes(file.data)

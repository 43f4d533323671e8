"""deepdockd's bundled SSH server: static Dropbear (with scp) and OpenSSH's sftp-server, built
from Debian's source packages by scripts/build-ssh-server.sh into ``ssh-server/`` beside this
module and installed with the package. A container whose image has no OpenSSH sshd runs it
(``ssh_server`` "auto"), or any container does ("bundled"): no package manager, no network.

In the container the files are at BUNDLE_DIR, root's and readable by all: the user's sessions
run its ``scp`` and ``sftp-server``. Where Docker is on this host's socket, the bundle is
written once per host (per bundle: :func:`install_on_host`) and every container gets it as a
read-only bind mount, which not even root in a container can write; on a Docker reached over
TCP it is copied into each container with the bootstrap tar.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from deepdockd.config import Config

log = logging.getLogger(__name__)

BUNDLE_DIR = "/.deepdockd-ssh"
# The sessions' environment for Dropbear, which our build of it reads from
# BUNDLE_DIR/session-env: a link to this file, which each container's bootstrap writes (the
# bundle itself is the same for every container, and read-only).
SESSION_ENV = "/.deepdockd-session-env"
# The multi-call binary answers to the name it is run by.
_PROGRAMS = ("dropbear", "dropbearkey", "dropbearconvert", "scp")
_FILES = ("dropbearmulti", "sftp-server")


@dataclass(frozen=True)
class SshServerBundle:
    version: str  # "Dropbear 2022.83 (Debian 2022.83-1+deb12u1), OpenSSH sftp-server ..."
    files: tuple[tuple[str, bytes], ...]  # (name in BUNDLE_DIR, contents), executables
    links: tuple[tuple[str, str], ...]  # (name in BUNDLE_DIR, the file it points to)

    @functools.cached_property
    def digest(self) -> str:
        """What names this bundle: a SHA-256 of its version, files and links."""
        sha = hashlib.sha256(self.version.encode())
        for name, data in self.files:
            sha.update(f"\0{name}\0{len(data)}\0".encode())
            sha.update(data)
        for name, target in self.links:
            sha.update(f"\0{name}\0{target}".encode())
        return sha.hexdigest()


@functools.cache
def bundled_server() -> SshServerBundle | None:
    """The bundle installed with the package; None when it was not built (a checkout
    without `make ssh-server`), read once."""
    folder = resources.files("deepdockd.containers").joinpath("ssh-server")
    try:
        version = folder.joinpath("VERSION").read_text().strip()
        files = tuple((name, folder.joinpath(name).read_bytes()) for name in _FILES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return SshServerBundle(
        version=version,
        files=files,
        links=(
            *((program, "dropbearmulti") for program in _PROGRAMS),
            ("session-env", SESSION_ENV),
        ),
    )


def install_on_host(bundle: SshServerBundle, state_dir: Path) -> Path:
    """The bundle's directory on this host, ``state_dir/ssh-server/<digest>``: written once
    (into a directory of its own, then renamed into place, so that no container ever sees
    half of it), root's, readable and runnable by all, writable by none. An older bundle's
    directory stays: containers made with it still mount it."""
    target = state_dir / "ssh-server" / bundle.digest[:32]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        for name, data in bundle.files:
            path = staging / name
            path.write_bytes(data)
            path.chmod(0o555)
        for name, link_target in bundle.links:
            os.symlink(link_target, staging / name)
        staging.chmod(0o555)
        try:
            staging.rename(target)
        except OSError:  # another deepdockd on this state directory was first
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            staging.chmod(0o700)
            shutil.rmtree(staging)
    return target


def mount_host_files(config: Config) -> bool:
    """Whether containers may mount deepdockd's files (this bundle, the bootstrap's) from
    this host: mount_host_files, and a Docker on this host's socket."""
    return config.mount_host_files and config.docker_host.startswith("unix://")


class SshServerOnHost:
    """Where containers get the bundled SSH server from: its directory on this host (written
    at the daemon's start, or the first create that needs it), mounted read-only."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._directory: Path | None = None

    async def directory(self) -> Path | None:
        """The bundle's directory on this host; None where a container gets no bundle
        (ssh_server "image", or none installed) or gets it copied in: mount_host_files off,
        or a Docker reached over TCP (perhaps another machine, whose paths are not ours), or
        a state directory that cannot be written (logged)."""
        if self._directory is not None:
            return self._directory
        bundle = bundled_server()
        if (
            bundle is None
            or self._config.ssh_server == "image"
            or not mount_host_files(self._config)
        ):
            return None
        try:
            self._directory = await asyncio.to_thread(
                install_on_host, bundle, self._config.state_dir
            )
        except OSError as exc:
            log.warning(
                "cannot write the bundled SSH server under %s (%s): it is copied into each "
                "container instead", self._config.state_dir, exc,
            )  # fmt: skip
        return self._directory

"""The Docker Engines the test rig can run its private dockerd from.

- ``host``: the host's own ``/usr/bin/dockerd`` (Debian 12's docker.io, 20.10, API 1.41).
- ``debian13``: Debian 13's docker.io (26.x, API 1.45), from a Debian 13 (trixie) root file
  system that debootstrap builds once into the rig's cache (about 40 s and 500 MB; kept
  between runs, built again only when its marker is missing, so a failed build is retried).

``DEEPDOCKD_TEST_ENGINE=host|debian13`` picks one (default ``host``); each Engine has its own
data root and exec root under the rig's directory, so their image stores never meet.

How the Debian 13 dockerd runs: in a mount namespace of its own whose ``/usr`` is the trixie
root's ``/usr`` (``/bin``, ``/sbin``, ``/lib``, ``/lib64`` are links into ``/usr`` on Debian 12
and 13 alike) and whose ``/etc/alternatives`` is the trixie root's. Everything else is the
host's, at the same paths: ``/proc``, ``/sys`` (cgroups), ``/dev``, ``/run``, ``/etc``
(resolv.conf, hosts), and every directory that deepdockd bind-mounts into a container (its
state directory, the bundled SSH server, shared mounts) — a chroot would hide those, and
deepdockd names them by their host paths. dockerd, containerd, runc, docker-proxy and
iptables all come from trixie; the namespace propagates the host's later mounts in
(``slave``) and none of dockerd's out, and goes away with dockerd's last process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ENGINE_VARIABLE = "DEEPDOCKD_TEST_ENGINE"
DEFAULT_ENGINE = "host"

# What Debian 13's docker.io needs to run beside dockerd itself: its Depends (containerd,
# runc, tini for --init, iptables) come with it; mount is for the namespace's own set-up.
_TRIXIE_PACKAGES = "docker.io,iptables,ca-certificates,mount"
# Written last by a build that succeeded: a root without it is a failed or interrupted build.
_BUILT_MARKER = ".deepdockd-rig-built"

# Run by unshare in the new mount namespace, with dockerd's arguments after $1 (the root).
# The host's iptables is nf_tables; the trixie root's alternatives are set to nft when it is
# built, and mounted over the host's so that dockerd's iptables is that one whatever the host
# chose. `mount` is run before /usr changes (the host's) and dockerd after (trixie's).
_ENTER_TRIXIE = """set -e
root=$1; shift
mount --bind "$root/etc/alternatives" /etc/alternatives
mount --bind "$root/usr" /usr
exec /usr/sbin/dockerd "$@"
"""


class EngineError(RuntimeError):
    """An Engine could not be made ready; the message says where its log is."""


@dataclass(frozen=True)
class Engine:
    """One Docker Engine the rig can run: its name, what it claims to be, and where it keeps
    its state under the rig's directory."""

    name: str
    # What GET /version must answer: the Engine's version's first field and its API version.
    major_version: str
    api_version: str

    def data_root(self, rig_root: Path) -> Path:
        # The host Engine keeps today's paths, so an existing rig keeps its images.
        return rig_root / ("data" if self.name == "host" else f"data-{self.name}")

    def exec_root(self, rig_root: Path) -> Path:
        return rig_root / ("exec" if self.name == "host" else f"exec-{self.name}")

    def prepare(self, rig_root: Path) -> None:
        """Whatever this Engine needs before it can start (the trixie root, once)."""
        if self.name == "debian13":
            _build_trixie_root(rig_root)

    def command(self, rig_root: Path, dockerd_args: list[str]) -> list[str]:
        """The command line that runs this Engine's dockerd with ``dockerd_args``."""
        if self.name == "host":
            return ["dockerd", *dockerd_args]
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        return [
            unshare,
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            _ENTER_TRIXIE,
            "sh",
            str(trixie_root(rig_root)),
            *dockerd_args,
        ]


ENGINES = {
    "host": Engine("host", major_version="20", api_version="1.41"),
    "debian13": Engine("debian13", major_version="26", api_version="1.45"),
}


def from_env() -> Engine:
    name = os.environ.get(ENGINE_VARIABLE, DEFAULT_ENGINE)
    try:
        return ENGINES[name]
    except KeyError:
        known = ", ".join(ENGINES)
        raise EngineError(f"{ENGINE_VARIABLE}={name!r}: the rig knows {known}") from None


def trixie_root(rig_root: Path) -> Path:
    return rig_root / "cache" / "engine-debian13"


def _build_trixie_root(rig_root: Path) -> None:
    """debootstrap a minimal trixie with docker.io into the cache, unless a built one is
    there. Built beside its final place and renamed when complete, then marked."""
    root = trixie_root(rig_root)
    if (root / _BUILT_MARKER).exists():
        return
    partial = root.with_name(root.name + ".partial")
    log_path = root.with_name(root.name + ".log")
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    debootstrap = ["debootstrap", "--variant=minbase", f"--include={_TRIXIE_PACKAGES}"]
    in_root = ["chroot", str(partial)]
    steps = [
        [*debootstrap, "trixie", str(partial)],
        # The host writes DOCKER-USER with nf_tables' iptables; dockerd must use the same.
        [*in_root, "update-alternatives", "--set", "iptables", "/usr/sbin/iptables-nft"],
        [*in_root, "update-alternatives", "--set", "ip6tables", "/usr/sbin/ip6tables-nft"],
        # The downloaded .debs are half the root's size and never needed again.
        [*in_root, "apt-get", "clean"],
    ]
    with log_path.open("wb") as log:
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=log, check=False).returncode != 0:
                what = " ".join(step[2:4] if step[0] == "chroot" else step[:1])
                raise EngineError(f"building Debian 13's Engine failed at {what}; see {log_path}")
    partial.rename(root)
    (root / _BUILT_MARKER).write_text("debootstrap trixie: " + _TRIXIE_PACKAGES + "\n")

"""deepdockd's bundled SSH server: static Dropbear (with scp) and OpenSSH's sftp-server, built
from Debian's source packages by scripts/build-ssh-server.sh into ``ssh-server/`` beside this
module and installed with the package. A container whose image has no OpenSSH sshd runs it
(``ssh_server`` "auto"), or any container does ("bundled"): no package manager, no network.

In the container the files go to BUNDLE_DIR, root's and readable by all: the user's sessions
run its ``scp`` and ``sftp-server``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

BUNDLE_DIR = "/.deepdockd-ssh"
# The multi-call binary answers to the name it is run by.
_PROGRAMS = ("dropbear", "dropbearkey", "dropbearconvert", "scp")
_FILES = ("dropbearmulti", "sftp-server")


@dataclass(frozen=True)
class SshServerBundle:
    version: str  # "Dropbear 2022.83 (Debian 2022.83-1+deb12u1), OpenSSH sftp-server ..."
    files: tuple[tuple[str, bytes], ...]  # (name in BUNDLE_DIR, contents), executables
    links: tuple[tuple[str, str], ...]  # (name in BUNDLE_DIR, the file it points to)


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
        links=tuple((program, "dropbearmulti") for program in _PROGRAMS),
    )

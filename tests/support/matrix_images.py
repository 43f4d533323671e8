"""The image matrix (issue 32): test images of the kinds people bring to a lab's server, each
standing for a family of real images, with what deepdockd gives it (the image's own sshd, its
bundled server, or a refusal). The list is data: tests/test_image_matrix.py walks a user's whole
login on each entry, and docs/compatibility.md shows the table that :func:`render_table` makes
of it (a fast test holds the two equal).

The builders run inside the rig's ``build_images`` (tests/support/rig.py): the two Debian
releases come from debootstrap, run beside the rig's own, and are cached as tarballs like
them; the others are ``docker build``s on the rig's bookworm images or on nothing, with no
network (``--network none``): a few seconds once, then cached in the engine's data root.
A derived image's tag names its recipe's version: change the tag when its build changes, or
the engine keeps serving the old one.

This module imports nothing of the rig at run time (the rig imports it).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.rig import Rig

# What deepdockd gives an image, as the table says it.
IMAGE_SSHD = "image's sshd"
BUNDLED = "bundled server"
REFUSED_NO_SHELL = "refused: no shell"

# The rig's own images (tests/support/rig.py: BUSYBOX_IMAGE, DEBIAN_SSH_IMAGE, DEBIAN_NOSSH_IMAGE;
# not imported, since the rig imports this module; a fast test holds them equal).
RIG_BUSYBOX = "deepdockd-test/busybox:latest"
RIG_BOOKWORM_SSH = "deepdockd-test/debian-ssh:bookworm"
RIG_BOOKWORM_NOSSH = "deepdockd-test/debian-nossh:bookworm"

DEBIAN11_SSH = "deepdockd-test/debian-ssh:bullseye"
DEBIAN13_SSH = "deepdockd-test/debian-ssh:trixie"
UBUNTU_STYLE = "deepdockd-test/ubuntu-style:v1"
DOCKER_STACKS_STYLE = "deepdockd-test/docker-stacks-style:v1"
DISTROLESS_STYLE = "deepdockd-test/distroless-style:v1"

# The file the matrix's long-lived command rewrites (a counter, once a second), so a test
# sees that the image's command runs: the value changes.
HEARTBEAT_FILE = "/tmp/heartbeat"
_HEARTBEAT_LOOP = (
    f"i=0; while :; do i=$((i + 1)); echo $i > {HEARTBEAT_FILE}.new"
    f" && mv {HEARTBEAT_FILE}.new {HEARTBEAT_FILE}; sleep 1; done"
)


@dataclass(frozen=True)
class MatrixImage:
    id: str  # the test's id: test_a_user_gets_the_whole_login_on[<id>]
    tag: str
    stands_for: str
    built: str  # how the rig makes it, for the table
    gets: str  # IMAGE_SSHD, BUNDLED or REFUSED_NO_SHELL
    why: str  # the table's word on what it gets
    # What the SSH server's greeting starts with ("" when refused).
    greeting: str
    # The create's command (the image's Cmd replaced): a heartbeat for an image whose Cmd is
    # a shell that would exit at once; () keeps the image's own command (docker-stacks').
    command: tuple[str, ...] = ()
    # Who the image's command runs as: who owns the heartbeat file.
    command_user: str = "root"
    # The directory that the image's PATH puts first, as a login sees it ("" to not check).
    path_first: str = ""
    # An account of the image's own that stays as the image made it: "name uid home".
    image_account: str = ""


MATRIX: tuple[MatrixImage, ...] = (
    MatrixImage(
        id="debian11-openssh-8.4",
        tag=DEBIAN11_SSH,
        stands_for="Debian 11 with openssh-server (OpenSSH 8.4), as Ubuntu 20.04 lab images"
        " (OpenSSH 8.2)",
        built="debootstrap --variant=minbase --include=openssh-server,passwd bullseye",
        gets=BUNDLED,
        why="its OpenSSH 8.4 is older than 8.7, whose SetEnv quoting deepdockd writes",
        greeting="SSH-2.0-dropbear_",
        command=("/bin/sh", "-c", _HEARTBEAT_LOOP),
    ),
    MatrixImage(
        id="debian12-openssh-9.2",
        tag=RIG_BOOKWORM_SSH,
        stands_for="Debian 12 with openssh-server (OpenSSH 9.2), the rig's reference image",
        built="debootstrap --variant=minbase --include=openssh-server,passwd bookworm",
        gets=IMAGE_SSHD,
        why="OpenSSH 9.2",
        greeting="SSH-2.0-OpenSSH_9.2",
        command=("/bin/sh", "-c", _HEARTBEAT_LOOP),
    ),
    MatrixImage(
        id="debian13-openssh-10.0",
        tag=DEBIAN13_SSH,
        stands_for="Debian 13 with openssh-server (OpenSSH 10.0), as current distributions",
        built="debootstrap --variant=minbase --include=openssh-server,passwd trixie",
        gets=IMAGE_SSHD,
        why="OpenSSH 10.0",
        greeting="SSH-2.0-OpenSSH_10.0",
        command=("/bin/sh", "-c", _HEARTBEAT_LOOP),
    ),
    MatrixImage(
        id="ubuntu-style-uid-1000",
        tag=UBUNTU_STYLE,
        stands_for="an account `ubuntu` (uid and gid 1000, home /home/ubuntu) and"
        " openssh-server, as ubuntu:24.04 and the CUDA images built on it",
        built="the Debian 12 SSH image, with `useradd --uid 1000 ubuntu` (docker build)",
        gets=IMAGE_SSHD,
        why="OpenSSH 9.2; the user's account takes a uid of its own (10000 and up)",
        greeting="SSH-2.0-OpenSSH_9.2",
        command=("/bin/sh", "-c", _HEARTBEAT_LOOP),
        image_account="ubuntu 1000 /home/ubuntu",
    ),
    MatrixImage(
        id="docker-stacks-style-tini",
        tag=DOCKER_STACKS_STYLE,
        stands_for="Jupyter's docker-stacks (base-notebook): USER 1000 (jovyan), ENTRYPOINT"
        " tini wrapping start.sh, /opt/conda/bin (jovyan's) first on PATH, no sshd",
        built="the Debian 12 image without sshd, with Debian's tini-static, a start script"
        " and a heartbeat in /opt/conda/bin (docker build)",
        gets=BUNDLED,
        why="the image has no sshd; its own command runs beside it, as jovyan",
        greeting="SSH-2.0-dropbear_",
        command_user="jovyan",
        path_first="/opt/conda/bin",
        image_account="jovyan 1000 /home/jovyan",
    ),
    MatrixImage(
        id="distroless-style",
        tag=DISTROLESS_STYLE,
        stands_for="distroless images: one static program, neither a shell nor sshd",
        built="one static C program that waits forever (gcc -static), FROM scratch (docker build)",
        gets=REFUSED_NO_SHELL,
        why="422 `ssh_unavailable`: deepdockd's bootstrap needs /bin/sh; nothing is left",
        greeting="",
    ),
    MatrixImage(
        id="busybox",
        tag=RIG_BUSYBOX,
        stands_for="busybox: a shell and little else, no sshd, no useradd",
        built="Debian's busybox-static with its applets' links",
        gets=BUNDLED,
        why="the image has no sshd",
        greeting="SSH-2.0-dropbear_",
        command=("/bin/sh", "-c", _HEARTBEAT_LOOP),
    ),
)

# The images the rig builds for the matrix alone (its own three it builds anyway).
BUILT_IMAGES = (DEBIAN11_SSH, DEBIAN13_SSH, UBUNTU_STYLE, DOCKER_STACKS_STYLE, DISTROLESS_STYLE)


def render_table(matrix: tuple[MatrixImage, ...] = MATRIX) -> str:
    """The matrix as the Markdown table docs/compatibility.md shows."""
    lines = [
        "| Cell | Rig image | Stands for | Built from | deepdockd gives it |",
        "| --- | --- | --- | --- | --- |",
    ]
    for image in matrix:
        cells = (
            image.id,
            f"`{image.tag}`",
            image.stands_for,
            image.built,
            f"**{image.gets}**: {image.why}",
        )
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


# --- builders, called by Rig.build_images ---


def root_file_systems(rig: Rig) -> dict[str, Callable[[Path], subprocess.Popen[bytes]]]:
    """The debootstrapped images, by tag: each a function that starts building its tarball
    (rig.py's ``wanted``: started together with the rig's own, imported when all are done)."""
    suites = {DEBIAN11_SSH: "bullseye", DEBIAN13_SSH: "trixie"}
    return {
        tag: functools.partial(rig.debootstrap, include="openssh-server,passwd", suite=suite)
        for tag, suite in suites.items()
    }


def build_derived(rig: Rig) -> None:
    """``docker build`` the derived images the engine lacks (after the rig's bookworm images)."""
    for tag, build in (
        (UBUNTU_STYLE, _ubuntu_style),
        (DOCKER_STACKS_STYLE, _docker_stacks_style),
        (DISTROLESS_STYLE, _distroless_style),
    ):
        if not rig.image_exists(tag):
            with tempfile.TemporaryDirectory(dir=rig.root / "cache") as tmp:
                context = Path(tmp)
                (context / "Dockerfile").write_text(build(context))
                rig.docker("build", "--quiet", "--network", "none", "--tag", tag, str(context))


def _ubuntu_style(context: Path) -> str:
    # As ubuntu:24.04 ships it: uid and gid 1000, a home with the skeleton's files, bash.
    return (
        f"FROM {RIG_BOOKWORM_SSH}\n"
        "RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash ubuntu\n"
    )


_START_SH = """#!/bin/bash
# As docker-stacks' start.sh: set things up as the notebook user, then exec the command.
echo "start.sh: running $* as $(id -un)"
exec "$@"
"""


def _docker_stacks_style(context: Path) -> str:
    # Debian's tini-static (package tini), as docker-stacks installs tini; jovyan owns
    # /opt/conda, whose bin comes first on PATH (a directory the user can write: the
    # bootstrap must never run a program of it as root). start.sh runs `heartbeat` by PATH.
    tini = Path("/usr/bin/tini-static")
    if not tini.exists():
        raise RuntimeError("no /usr/bin/tini-static: install Debian's tini package")
    shutil.copy(tini, context / "tini")
    (context / "start.sh").write_text(_START_SH)
    (context / "heartbeat").write_text(f"#!/bin/sh\n{_HEARTBEAT_LOOP}\n")
    for program in ("tini", "start.sh", "heartbeat"):
        (context / program).chmod(0o755)
    path = "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return (
        f"FROM {RIG_BOOKWORM_NOSSH}\n"
        "COPY tini /usr/bin/tini\n"
        "COPY start.sh /usr/local/bin/start.sh\n"
        "COPY heartbeat /opt/conda/bin/heartbeat\n"
        "RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash jovyan"
        " && chown -R 1000:1000 /opt/conda\n"
        f"ENV CONDA_DIR=/opt/conda NB_USER=jovyan NB_UID=1000 PATH={path}\n"
        "USER 1000\n"
        "WORKDIR /home/jovyan\n"
        'ENTRYPOINT ["tini", "-g", "--"]\n'
        'CMD ["start.sh", "heartbeat"]\n'
    )


_WAIT_FOREVER_C = """#include <unistd.h>
/* A distroless image's whole content: one static program, here one that waits. */
int main(void) { for (;;) pause(); }
"""


def _distroless_style(context: Path) -> str:
    (context / "wait.c").write_text(_WAIT_FOREVER_C)
    subprocess.run(
        ["gcc", "-static", "-Os", "-o", str(context / "wait"), str(context / "wait.c")],
        check=True,
        capture_output=True,
    )
    return 'FROM scratch\nCOPY wait /wait\nENTRYPOINT ["/wait"]\n'

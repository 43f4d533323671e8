"""The image matrix (issue 32): on each kind of image people bring (tests/support/matrix_images.py),
a user's whole day with the real OpenSSH tools: a create with a password, a key and an env value
of every awkward byte; password and key logins; scp, sftp, ssh -L, ssh -tt; the image's own
command still running; which SSH server answered; a restart, then the same host key. An image
that cannot have a login (no shell) is refused and leaves nothing. docs/compatibility.md shows
the same list.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config

from tests.support import matrix_images
from tests.support import rig as rig_module
from tests.support.api import Client, ClientFactory
from tests.support.docker_state import namespace_holdings
from tests.support.matrix_images import MATRIX, REFUSED_NO_SHELL, MatrixImage
from tests.support.rig import Rig
from tests.support.ssh import free_local_port, greeting

COMPATIBILITY_DOC = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"

# Every byte a value can hold that a shell, sshd_config or a NAME=value file might take for
# something else: quotes of both kinds, backslashes, $, a backtick, runs of spaces, a tab,
# shell operators, # and =, and UTF-8. (The API refuses only line breaks and NUL.)
AWKWARD = (
    "a \"quoted\" \\back\\slash $HOME `tick` 'single' ünïcødé  two  spaces;|&<>"
    " tab\there #not-a-comment =equals= 100% *glob? ~tilde !bang trailing "
)

LOGIN_CELLS = [image for image in MATRIX if image.gets != REFUSED_NO_SHELL]
REFUSED_CELLS = [image for image in MATRIX if image.gets == REFUSED_NO_SHELL]


def cell_id(image: MatrixImage) -> str:
    return image.id


class Login:
    """One container's SSH login as its user drives it: the real OpenSSH client, with the host
    key pinned from the API's ssh_host_keys (StrictHostKeyChecking=yes), never trusted blindly."""

    def __init__(self, port: int, user: str, password: str, key: Path, known_hosts: Path) -> None:
        self.port, self.user, self.password = port, user, password
        self.key, self.known_hosts = key, known_hosts

    @property
    def remote(self) -> str:
        return f"{self.user}@127.0.0.1"

    def options(self) -> list[str]:
        return [
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def key_options(self) -> list[str]:
        return [
            *self.options(), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-i", str(self.key),
        ]  # fmt: skip

    def run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, input=stdin, capture_output=True, encoding="utf-8", timeout=60, check=False,
            env={"SSHPASS": self.password, "PATH": "/usr/bin:/bin"},
        )  # fmt: skip

    def with_password(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            [
                "sshpass", "-e", "ssh", "-p", str(self.port), *self.options(),
                "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
                self.remote, command,
            ]
        )  # fmt: skip

    def with_key(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(["ssh", "-p", str(self.port), *self.key_options(), self.remote, *args])

    def scp(self, source: str, target: str) -> subprocess.CompletedProcess[str]:
        return self.run(["scp", "-P", str(self.port), *self.key_options(), source, target])

    def sftp(self, batch: str) -> subprocess.CompletedProcess[str]:
        argv = ["sftp", "-P", str(self.port), *self.key_options(), "-b", "-", self.remote]
        return self.run(argv, stdin=batch)

    @contextlib.contextmanager
    def forwarding(self, local: int, target: str) -> Iterator[None]:
        """``ssh -N -L 127.0.0.1:LOCAL:TARGET`` for the block, once the local port listens."""
        argv = [
            "ssh", "-N", "-p", str(self.port), *self.key_options(),
            "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:{target}", self.remote,
        ]  # fmt: skip
        tunnel = subprocess.Popen(argv, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 15
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", local), 1),
                ):
                    break
                if tunnel.poll() is not None:
                    assert tunnel.stderr is not None
                    raise AssertionError(f"ssh -L exited: {tunnel.stderr.read()!r}")
                assert time.monotonic() < deadline, "ssh -L did not listen in 15 s"
                time.sleep(0.1)
            yield
        finally:
            tunnel.terminate()
            tunnel.communicate()  # and closes its stderr


def heartbeat_goes_on(login: Login) -> None:
    """The image's command rewrites its heartbeat once a second: wait (15 s at most) until the
    user reads two different values."""
    read = "cat " + matrix_images.HEARTBEAT_FILE
    deadline = time.monotonic() + 15
    first = login.with_key(read).stdout
    while (now := login.with_key(read).stdout) in (first, ""):
        assert time.monotonic() < deadline, f"the heartbeat stayed at {first!r}"
        time.sleep(0.2)
    assert now.strip().isdigit(), now


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, config: Config, ssh_ports: tuple[int, int], rig: Rig
) -> Client:
    """A daemon on the rig (ssh_server auto, as shipped) with this test's SSH ports."""
    fields = {**config.__dict__, "ssh_port_range": ssh_ports}
    return await aiohttp_client(create_app(Config(**fields)))


async def pinned_known_hosts(client: Client, name: str, port: int, path: Path) -> None:
    """known_hosts as the user writes it from the API: each of the container's host keys."""
    response = await client.get(f"/containers/{name}")
    assert response.status == 200, await response.text()
    keys = (await response.json())["ssh_host_keys"]
    assert keys, "the container reports no host key"
    write_known_hosts(path, port, [key["public_key"] for key in keys])


def write_known_hosts(path: Path, port: int, public_keys: list[str]) -> None:
    path.write_text("".join(f"[127.0.0.1]:{port} {key}\n" for key in public_keys))


@pytest.mark.parametrize("image", LOGIN_CELLS, ids=cell_id)
async def test_a_user_gets_the_whole_login_on(
    image: MatrixImage, client: Client, namespace: str, user_key: Path, tmp_path: Path
) -> None:
    name = f"matrix-{namespace}"
    body: dict[str, Any] = {
        "name": name,
        "image": image.tag,
        "user_name": "alice",
        "password": "pw-" + name,
        "ssh_keys": [user_key.with_suffix(".pub").read_text().strip()],
        "env": {"AWKWARD": AWKWARD},
    }
    if image.command:
        body["command"] = list(image.command)
    response = await client.post("/containers/create", json=body)
    answer = await response.json()
    assert response.status == 201, answer
    port = answer["ssh-port"]
    known_hosts = tmp_path / "known_hosts"
    await pinned_known_hosts(client, name, port, known_hosts)
    login = Login(port, "alice", "pw-" + name, user_key, known_hosts)

    # The server the matrix says this image gets, and the create's answer says which and why.
    assert greeting(port).startswith(image.greeting), (image.gets, greeting(port))
    said_server = {
        matrix_images.IMAGE_SSHD: "the image's sshd, OpenSSH_",
        matrix_images.BUNDLED: "deepdockd's bundled server: ",
    }[image.gets]
    assert answer["ssh_server"].startswith(said_server), answer["ssh_server"]

    by_password = login.with_password("id -un")
    assert (by_password.returncode, by_password.stdout) == (0, "alice\n"), by_password.stderr
    by_key = login.with_key("id -un; id -u")
    assert by_key.stdout.splitlines()[:1] == ["alice"], (by_key.stdout, by_key.stderr)
    # The home volume's uid (10000 and up), whatever accounts the image has.
    assert int(by_key.stdout.split()[1]) >= 10000, by_key.stdout
    if image.image_account:
        name_uid_home = "awk -F: '$1 == \"%s\" { print $1, $3, $6 }' /etc/passwd"
        account = login.with_key(name_uid_home % image.image_account.split()[0])
        assert account.stdout == image.image_account + "\n", (account.stdout, account.stderr)
    # The env value, byte for byte (printf: busybox has no printenv).
    said = login.with_key('printf %s "$AWKWARD"')
    assert (said.returncode, said.stdout) == (0, AWKWARD), said.stderr
    if image.path_first:
        path = login.with_key('printf %s "$PATH"').stdout
        assert path.startswith(image.path_first + ":"), path

    # scp in and back, then sftp in batch mode: put, ls, get.
    original = tmp_path / "payload"
    original.write_bytes(bytes(range(256)) * 4096)  # 1 MiB of every byte
    sent = login.scp(str(original), f"{login.remote}:payload")
    assert sent.returncode == 0, sent.stderr
    back = tmp_path / "back"
    fetched = login.scp(f"{login.remote}:payload", str(back))
    assert fetched.returncode == 0, fetched.stderr
    assert back.read_bytes() == original.read_bytes()
    got = tmp_path / "got"
    batch = login.sftp(f"put {original} viasftp\nls -1\nget viasftp {got}\n")
    assert batch.returncode == 0, batch.stderr
    assert "viasftp" in batch.stdout.split()
    assert got.read_bytes() == original.read_bytes()

    # A command on a pseudo-terminal.
    tty = login.with_key("-tt", "tty")
    assert tty.stdout.strip().startswith("/dev/pts/"), (tty.stdout, tty.stderr)

    # ssh -L to a port inside the container: its own SSH server, greeting through the tunnel.
    local = free_local_port()
    with login.forwarding(local, "127.0.0.1:22"):
        assert greeting(local).startswith(image.greeting)

    # The image's command (or the create's) runs beside the SSH server, as the image's user.
    heartbeat_goes_on(login)
    owner = login.with_key("stat -c %U " + matrix_images.HEARTBEAT_FILE)
    assert owner.stdout == image.command_user + "\n", (owner.stdout, owner.stderr)

    # A restart: the same port, the same host key (pinned, strict), the same login, the
    # command running again.
    restarted = await client.post(f"/containers/{name}/restart")
    assert restarted.status == 200, await restarted.text()
    shown = await (await client.get(f"/containers/{name}")).json()
    assert shown["ssh-port"] == port
    assert greeting(port).startswith(image.greeting)
    again = login.with_password('id -un; printf %s "$AWKWARD"')
    assert (again.returncode, again.stdout) == (0, "alice\n" + AWKWARD), again.stderr
    kept = login.with_key("wc -c < payload")  # the home kept its files
    assert kept.stdout.strip() == str(len(original.read_bytes())), (kept.stdout, kept.stderr)
    heartbeat_goes_on(login)


@pytest.mark.parametrize("image", REFUSED_CELLS, ids=cell_id)
async def test_an_image_is_refused_and_leaves_nothing_on(
    image: MatrixImage, client: Client, namespace: str, rig: Rig, ssh_ports: tuple[int, int]
) -> None:
    name = f"matrix-{namespace}"
    body = {"name": name, "image": image.tag, "user_name": "alice", "password": "pw"}
    response = await client.post("/containers/create", json=body)
    error = (await response.json())["error"]
    assert (response.status, error["code"]) == (422, "ssh_unavailable"), error
    assert "the image has no /bin/sh" in error["message"], error
    assert error["message"].endswith("container removed"), error

    # Nothing of it in Docker: no container, no network.
    held = namespace_holdings(rig, namespace)
    assert (held["containers"], held["networks"]) == ([], []), held
    # The name and the port are free again: the next create gets both.
    retry = body | {"image": matrix_images.RIG_BUSYBOX}
    response = await client.post("/containers/create", json=retry)
    answer = await response.json()
    assert response.status == 201, answer
    assert answer["ssh-port"] == ssh_ports[0]


# --- fast lane: the list itself ---


def test_the_docs_table_is_the_matrix() -> None:
    """docs/compatibility.md's first table is the matrix as render_table makes it, with no
    other rows (the Engines' table comes after it)."""
    rendered = matrix_images.render_table()
    lines = COMPATIBILITY_DOC.read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("|"))
    table_lines = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    assert table_lines == rendered.splitlines(), (
        "docs/compatibility.md's table differs from the matrix: paste"
        " tests/support/matrix_images.py's render_table() into it\n" + rendered
    )


def test_the_matrix_names_the_rigs_own_images_and_every_cell_once() -> None:
    assert matrix_images.RIG_BUSYBOX == rig_module.BUSYBOX_IMAGE
    assert matrix_images.RIG_BOOKWORM_SSH == rig_module.DEBIAN_SSH_IMAGE
    assert matrix_images.RIG_BOOKWORM_NOSSH == rig_module.DEBIAN_NOSSH_IMAGE
    assert len({image.id for image in MATRIX}) == len(MATRIX)
    assert set(matrix_images.BUILT_IMAGES) <= set(rig_module.TEST_IMAGES)
    every_cell = {image.tag for image in MATRIX}
    assert every_cell <= set(rig_module.TEST_IMAGES)

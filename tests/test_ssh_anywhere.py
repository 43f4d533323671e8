"""SSH into any image, offline: deepdockd's bundled static Dropbear (with scp and OpenSSH's
sftp-server) runs in images that have no sshd, with no package manager and no network, and
gives the same login as the image's own sshd would. Checked with the real OpenSSH client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.containers.ssh_server import bundled_server
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory
from tests.support.docker_state import clear_namespace
from tests.support.images import derived_image
from tests.support.matrix_images import DEBIAN11_SSH
from tests.support.rig import BUSYBOX_IMAGE, DEBIAN_NOSSH_IMAGE, DEBIAN_SSH_IMAGE, Rig, RigError
from tests.support.ssh import free_local_port, greeting
from tests.support.users import People, users_tokens

OPTIONS = (
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
)  # fmt: skip


class Login:
    """One container's SSH login, driven with the real OpenSSH tools."""

    def __init__(self, port: int, user: str, password: str, key: Path) -> None:
        self.port, self.user, self.password, self.key = port, user, password, key

    def _run(self, argv: list[str], **more: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False,
            env={"SSHPASS": self.password, "PATH": "/usr/bin:/bin"}, **more,
        )  # fmt: skip

    def with_password(self, command: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            [
                "sshpass", "-e", "ssh", "-p", str(self.port), *OPTIONS,
                "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
                f"{self.user}@127.0.0.1", command,
            ]
        )  # fmt: skip

    def key_options(self) -> list[str]:
        return [*OPTIONS, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(self.key)]

    def with_key(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            ["ssh", "-p", str(self.port), *self.key_options(), f"{self.user}@127.0.0.1", *args]
        )

    def scp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(["scp", "-P", str(self.port), *self.key_options(), *args])

    def sftp(self, batch: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            [
                "sftp",
                "-P",
                str(self.port),
                *self.key_options(),
                "-b",
                "-",
                f"{self.user}@127.0.0.1",
            ],
            input=batch,
        )

    @property
    def remote(self) -> str:
        return f"{self.user}@127.0.0.1"


@pytest.fixture
def offline(config: Config) -> Iterator[None]:
    """The containers' networks cut off from everything beyond the host: nothing they send is
    forwarded (the owners' networks are /24s of network_pool). SSH still reaches them: the
    published ports are the host's."""
    rule = ["FORWARD", "-s", str(config.network_pool), "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)


@pytest.fixture
def make_client(
    aiohttp_client: ClientFactory, config: Config, ssh_ports: tuple[int, int], rig: Rig
) -> Iterator[Any]:
    """Factory: a client of a daemon with this test's ports and the given settings."""

    async def make(**settings: Any) -> Client:
        fields = {**config.__dict__, "ssh_port_range": ssh_ports, **settings}
        return await aiohttp_client(create_app(Config(**fields)))

    yield make
    clear_namespace(rig, config.namespace)


async def create(client: Client, name: str, image: str, key: Path, **extra: Any) -> Any:
    body = {
        "name": name,
        "image": image,
        "user_name": "u1",
        "password": "pw-" + name,
        "ssh_keys": [key.with_suffix(".pub").read_text().strip()],
        "env": {"FOO": "bar baz"},
    } | extra
    response = await client.post("/containers/create", json=body)
    answer = await response.json()
    assert response.status == 201, answer
    return answer


# The bundle is built as root from Debian's source packages by `make ssh-server`, which
# `make test` runs and `make test-fast` does not.
@pytest.mark.rig
def test_the_bundle_is_built_and_says_its_version() -> None:
    bundle = bundled_server()
    assert bundle is not None, "the bundled SSH server is not built: run make ssh-server"
    assert bundle.version.startswith("Dropbear 2022.83")
    assert "sftp-server" in bundle.version


@pytest.mark.parametrize("image", [BUSYBOX_IMAGE, DEBIAN_NOSSH_IMAGE])
async def test_an_image_without_sshd_gives_the_whole_login_offline(
    image: str, make_client: Any, offline: None, user_key: Path, tmp_path: Path, rig: Rig
) -> None:
    client = await make_client()
    answer = await create(client, "anywhere", image, user_key)
    login = Login(answer["ssh-port"], "u1", "pw-anywhere", user_key)

    assert greeting(login.port).startswith("SSH-2.0-dropbear_2022.83")
    by_password = login.with_password("id -un")
    assert (by_password.returncode, by_password.stdout) == (0, "u1\n"), by_password.stderr
    by_key = login.with_key('echo "$FOO|$HOME"; command -v scp')
    assert by_key.stdout.splitlines() == ["bar baz|/home/u1", "/.deepdockd-ssh/scp"], by_key
    tty = login.with_key("-tt", "tty")
    assert tty.stdout.strip().startswith("/dev/pts/"), tty

    # scp (SFTP, OpenSSH 9's default) and scp -O (the old protocol), both ways.
    original = tmp_path / "payload"
    original.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    for mode in ([], ["-O"]):
        back = tmp_path / f"back{len(mode)}"
        sent = login.scp(*mode, str(original), f"{login.remote}:payload{len(mode)}")
        assert sent.returncode == 0, sent.stderr
        fetched = login.scp(*mode, f"{login.remote}:payload{len(mode)}", str(back))
        assert fetched.returncode == 0, fetched.stderr
        assert back.read_bytes() == original.read_bytes()

    # sftp in batch mode: put, ls, get.
    got = tmp_path / "got"
    batch = login.sftp(f"put {original} viasftp\nls -1\nget viasftp {got}\n")
    assert batch.returncode == 0, batch.stderr
    assert "viasftp" in batch.stdout
    assert got.read_bytes() == original.read_bytes()

    # An account the bootstrap wrote itself (busybox has no useradd) is not asked to change
    # its password at the next login (a last change of 0 would, for OpenSSH).
    [shadow] = [
        line
        for line in rig.docker("exec", "anywhere", "cat", "/etc/shadow").splitlines()
        if line.startswith("u1:")
    ]
    assert shadow.split(":")[2] != "0", shadow

    # ssh -L: a local port forwarded to the container's own SSH server.
    local = free_local_port()
    with forwarding(login, local):
        assert greeting(local).startswith("SSH-2.0-dropbear_")


@contextlib.contextmanager
def forwarding(login: Login, local: int) -> Iterator[None]:
    tunnel = subprocess.Popen(
        [
            "ssh", "-N", "-p", str(login.port), *login.key_options(),
            "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:22",
            login.remote,
        ]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                break
            assert tunnel.poll() is None, "ssh -L exited"
            assert time.monotonic() < deadline, "ssh -L did not listen"
            time.sleep(0.1)
        yield
    finally:
        tunnel.terminate()
        tunnel.wait()


async def test_a_shells_file_without_a_final_newline_still_lets_the_user_in(
    make_client: Any, user_key: Path, rig: Rig
) -> None:
    """Dropbear admits only a login shell /etc/shells lists: the bootstrap adds the user's on
    a line of its own, whatever the file's last line."""
    script = "printf '/bin/false' > /etc/shells"
    image = derived_image(rig, BUSYBOX_IMAGE, script, "/bin/sh")
    try:
        client = await make_client()
        answer = await create(client, "shells", image, user_key)
        login = Login(answer["ssh-port"], "u1", "pw-shells", user_key)
        assert login.with_password("id -un").stdout == "u1\n"
        assert rig.docker("exec", "shells", "cat", "/etc/shells") == "/bin/false\n/bin/sh\n"
    finally:
        clear_container = rig.docker("ps", "-aq", "--filter", "name=^shells$").split()
        if clear_container:
            rig.docker("rm", "--force", *clear_container)
        rig.docker("rmi", "--force", image)


async def test_bundled_always_uses_ours_and_auto_the_images_sshd(
    make_client: Any, user_key: Path
) -> None:
    bundled = await make_client(ssh_server="bundled")
    ours = await create(bundled, "ours", DEBIAN_SSH_IMAGE, user_key)
    auto = await make_client()
    theirs = await create(auto, "theirs", DEBIAN_SSH_IMAGE, user_key)

    assert greeting(ours["ssh-port"]).startswith("SSH-2.0-dropbear_")
    assert greeting(theirs["ssh-port"]).startswith("SSH-2.0-OpenSSH_")
    assert ours["ssh_server"] == "deepdockd's bundled server: ssh_server is bundled"
    assert theirs["ssh_server"] == "the image's sshd, OpenSSH_9.2"
    for answer, name in ((ours, "ours"), (theirs, "theirs")):
        login = Login(answer["ssh-port"], "u1", f"pw-{name}", user_key)
        assert login.with_key('echo "$FOO"').stdout == "bar baz\n"
        assert login.with_password("id -un").stdout == "u1\n"


async def test_the_longest_password_the_api_takes_logs_in_through_the_bundled_server(
    make_client: Any, user_key: Path, rig: Rig, config: Config
) -> None:
    """The bundled Dropbear checks passwords of up to 100 bytes: the API takes exactly those
    (counted in UTF-8), so no password it takes can never log in."""
    client = await make_client()
    longest = "pässwörd" * 10  # ä and ö are two bytes each: 10 bytes a word
    assert len(longest.encode()) == 100
    answer = await create(client, "longest", BUSYBOX_IMAGE, user_key, password=longest)
    assert answer["ssh_server"] == "deepdockd's bundled server: the image has no OpenSSH sshd"
    login = Login(answer["ssh-port"], "u1", longest, user_key)
    assert login.with_password("id -un").stdout == "u1\n"

    body = {
        "name": "too-long",
        "image": BUSYBOX_IMAGE,
        "user_name": "u1",
        "password": longest + "x",
    }
    response = await client.post("/containers/create", json=body)
    why = "must be at most 100 bytes in UTF-8 (this one is 101): the bundled SSH server checks no longer password"
    assert (response.status, await response.json()) == (
        422,
        {
            "error": {
                "code": "invalid_input",
                "message": f"password: {why}",
                "details": {"fields": {"password": why}},
            }
        },
    )
    namespace = f"label=deepdockd.namespace={config.namespace}"
    assert rig.docker("ps", "-a", "--format", "{{.Names}}", "--filter", namespace).split() == [
        "longest"
    ]


async def test_an_openssh_older_than_8_7_gets_ours_in_auto_and_a_clear_refusal_in_image(
    make_client: Any, user_key: Path, rig: Rig, config: Config
) -> None:
    """Debian 11's OpenSSH 8.4 cannot take every byte of the sessions' environment through
    SetEnv (a " stopped it, a \\ arrived doubled): auto runs ours, and says why; image
    refuses the create, naming the version, and leaves nothing."""
    awkward = {"AWKWARD": 'a "quoted" \\back\\slash $HOME'}
    auto = await make_client()
    answer = await create(auto, "old-auto", DEBIAN11_SSH, user_key, env=awkward)
    assert answer["ssh_server"] == (
        "deepdockd's bundled server: the image's sshd is OpenSSH_8.4p1, older than OpenSSH "
        "8.7, the first whose SetEnv passes every byte of the sessions' environment"
    )
    assert greeting(answer["ssh-port"]).startswith("SSH-2.0-dropbear_")
    login = Login(answer["ssh-port"], "u1", "pw-old-auto", user_key)
    assert login.with_key('printf %s "$AWKWARD"').stdout == awkward["AWKWARD"]

    image_only = await make_client(ssh_server="image")
    body = {"name": "old-image", "image": DEBIAN11_SSH, "user_name": "u1", "password": "pw"}
    response = await image_only.post("/containers/create", json=body)
    assert (response.status, await response.json()) == (
        422,
        {
            "error": {
                "code": "ssh_unavailable",
                "message": (
                    "the container could not provide SSH: the image's sshd is OpenSSH_8.4p1, "
                    "older than OpenSSH 8.7, the first whose SetEnv passes every byte of the "
                    "sessions' environment, and ssh_server is image (deepdockd's bundled SSH "
                    "server is off); use an image with OpenSSH 8.7 or newer, or set ssh_server "
                    "to auto; container removed"
                ),
                "details": {},
            }
        },
    )
    namespace = f"label=deepdockd.namespace={config.namespace}"
    assert rig.docker("ps", "-a", "--format", "{{.Names}}", "--filter", namespace).split() == [
        "old-auto"
    ]


def host_key_seen(port: int) -> str:
    """The ed25519 host key the server presents, as ``type base64``."""
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return " ".join(scanned.stdout.split()[1:3])


async def test_restarts_keep_the_login_and_the_host_key(
    make_client: Any, user_key: Path, rig: Rig
) -> None:
    client = await make_client()
    answer = await create(client, "kept", BUSYBOX_IMAGE, user_key)
    port = answer["ssh-port"]
    shown = (await (await client.get("/containers/kept")).json())["ssh_host_keys"][0]
    # The bundled server presents the container's own key, the one the API reports.
    assert host_key_seen(port) == shown["public_key"]
    login = Login(port, "u1", "pw-kept", user_key)

    response = await client.post("/containers/kept/restart")
    assert response.status == 200, await response.text()
    assert host_key_seen(port) == shown["public_key"]
    assert login.with_key("id -un").stdout == "u1\n"

    with rig.docker_stopped():
        pass  # dockerd restarts; the container comes back by its restart policy
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if greeting(port).startswith("SSH-"):
                break
        await asyncio.sleep(0.2)
    assert host_key_seen(port) == shown["public_key"]
    assert login.with_password("id -un").stdout == "u1\n"


async def test_an_image_without_a_shell_is_refused_and_leaves_nothing(
    make_client: Any, rig: Rig, config: Config, shell_less_image: str
) -> None:
    """A distroless image: no /bin/sh for the bootstrap. A clear 422, and no container."""
    client = await make_client()
    body = {"name": "noshell", "image": shell_less_image, "user_name": "u1", "password": "pw"}
    response = await client.post("/containers/create", json=body)
    error = (await response.json())["error"]
    assert response.status == 422, error
    assert error == {
        "code": "ssh_unavailable",
        "message": (
            "the container could not provide SSH: the image has no /bin/sh, which deepdockd's"
            " bootstrap needs to set up the SSH login (an image without a shell, such as a"
            " distroless one, cannot be used): choose an image with a shell; container removed"
        ),
        "details": {},
    }
    namespace = f"label=deepdockd.namespace={config.namespace}"
    assert rig.docker("ps", "-a", "-q", "--filter", namespace).split() == []


async def logs(client: Client, name: str) -> str:
    """The container's log, as its owner reads it (stdout and stderr)."""
    response = await client.get(f"/containers/{name}/logs")
    assert response.status == 200, await response.text()
    return await response.text()


async def test_the_images_command_starts_only_after_the_bootstraps_last_write(
    make_client: Any, user_key: Path
) -> None:
    """A child that ends sends the bootstrap's shell SIGCHLD, which fails the shell's own
    write with EINTR while overlayfs copies a file of the image up: busybox's bare shell as
    the image's command used to make one create in ten or so fail "adding u1 to /etc/passwd".
    So the image's command starts after every write: here, after /etc/shells and the server."""
    client = await make_client()
    await create(client, "ordered", BUSYBOX_IMAGE, user_key)
    deadline = time.monotonic() + 30
    while "the image's command exited" not in (logged := await logs(client, "ordered")):
        assert time.monotonic() < deadline, logged
        await asyncio.sleep(0.2)
    lines = [line for line in logged.splitlines() if line.startswith("deepdockd-bootstrap:")]
    server = next(i for i, line in enumerate(lines) if "starting the bundled" in line)
    command = next(i for i, line in enumerate(lines) if "starting the image's command" in line)
    assert server < command, lines


async def test_root_in_one_container_cannot_change_the_ssh_server_another_runs(
    aiohttp_client: ClientFactory,
    config: Config,
    ssh_ports: tuple[int, int],
    user_key: Path,
    rig: Rig,
    cleanup: None,
) -> None:
    """The bundled SSH server is one directory of the host, mounted read-only into every
    container (docs/security.md#the-bundled-ssh-server). Alice, root in her own container,
    tries to trojan it as an attacker would: write into it, replace a program, point its
    session-env link elsewhere, remount it read-write. Every try fails, and bob's container
    still runs the bundle's own bytes, with his own session environment."""
    made = replace(config, auth=True, ssh_port_range=ssh_ports)
    people = People(
        await aiohttp_client(create_app(made)), users_tokens(TokenStore(made.state_dir))
    )
    answers = {}
    for who, image in (("alice", BUSYBOX_IMAGE), ("bob", DEBIAN_NOSSH_IMAGE)):
        body = {
            "name": f"{who}-{config.namespace}",
            "image": image,
            "user_name": "u1",
            "password": f"pw-{who}",
            "ssh_keys": [user_key.with_suffix(".pub").read_text().strip()],
            "env": {"FOO": f"{who}'s"},
        }
        status, answers[who] = await people.call(who, "POST", "/containers/create", body)
        assert status == 201, answers[who]

    tries = {
        # (Not dropbearmulti, which runs: a write to it is refused as "text file busy".)
        "write": "echo trojan >> /.deepdockd-ssh/sftp-server",
        "add": "echo trojan > /.deepdockd-ssh/ssh",
        "replace": "rm -f /.deepdockd-ssh/dropbear",
        "relink": "mv /.deepdockd-ssh/session-env /.deepdockd-ssh/old-env",
        "remount": "mount -o remount,rw /.deepdockd-ssh",
    }
    alice, bob = (f"{who}-{config.namespace}" for who in ("alice", "bob"))
    for what, command in tries.items():
        with pytest.raises(RigError) as refused:
            rig.docker("exec", alice, "sh", "-c", command)
        why = str(refused.value).lower()
        assert "read-only file system" in why or "permission denied" in why, (what, why)
    # Her own container's session environment is hers to change; bob's is not in it.
    rig.docker("exec", alice, "sh", "-c", "echo FOO=evil > /.deepdockd-session-env")

    bundle = bundled_server()
    assert bundle is not None
    shipped = {name: hashlib.sha256(data).hexdigest() for name, data in bundle.files}
    for name, digest in shipped.items():
        seen = rig.docker("exec", bob, "sha256sum", f"/.deepdockd-ssh/{name}")
        assert seen.split()[0] == digest, f"bob's {name} is not the bundle's"
    login = Login(answers["bob"]["ssh-port"], "u1", "pw-bob", user_key)
    said = login.with_key('echo "$FOO"; readlink /.deepdockd-ssh/dropbear')
    assert said.stdout.splitlines() == ["bob's", "dropbearmulti"], said


async def test_with_mount_host_files_off_the_files_are_copied_in_and_the_login_is_the_same(
    make_client: Any, user_key: Path, rig: Rig
) -> None:
    """mount_host_files = false (a Docker whose paths are not this host's): the bootstrap's
    files and the bundled SSH server are copied into the container, nothing of the host is
    mounted, the login is the same, and the hash and the keys are gone once used."""
    client = await make_client(mount_host_files=False)
    answer = await create(client, "copied", BUSYBOX_IMAGE, user_key)
    login = Login(answer["ssh-port"], "u1", "pw-copied", user_key)

    by_password = login.with_password('id -un; echo "$FOO"')
    assert by_password.stdout.splitlines() == ["u1", "bar baz"], by_password.stderr
    assert login.with_key("true").returncode == 0
    container = json.loads(rig.docker("inspect", "copied"))[0]
    assert [m for m in container["Mounts"] if m["Type"] == "bind"] == []
    assert "deepdockd.bootstrap" not in container["Config"]["Labels"]
    left = rig.docker("exec", "copied", "ls", "/.deepdockd-in", "/.deepdockd-ssh")
    assert "secret" not in left.split()
    assert "authorized_keys" not in left.split()
    assert "dropbearmulti" in left.split()

"""People who log in to the server need no token: on the local socket the kernel names the
caller (SO_PEERCRED), so each host user is themself, admins are root and admin_group's
members, and tokens for elsewhere are made there by the person. Run with real host accounts
(useradd), calling as them (runuser) over curl --unix-socket and with the deepdock client."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, RunningDaemon, http_json
from tests.support.host_users import (
    SYSTEM_PYTHON,
    HostAccounts,
    client_install,
    deepdock_as,
    host_accounts,
    no_such_uid,
    on_socket,
    world_readable_dir,
)
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig


@dataclass
class Server:
    daemon: RunningDaemon
    socket: Path
    admin_group: str

    @property
    def admin_token(self) -> str:
        return (self.daemon.state_dir / "admin.token").read_text().strip()

    def tcp(self, method: str, path: str, token: str, body: object = None) -> tuple[int, dict]:
        return http_json(method, self.daemon.base + path, token=token, json_body=body)


@pytest.fixture
def accounts() -> Iterator[HostAccounts]:
    yield from host_accounts()


@pytest.fixture(scope="module")
def client() -> Iterator[Path]:
    """deepdock as a host user has it: Debian's python3 and the client's files."""
    install = client_install()
    yield install
    shutil.rmtree(install)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = world_readable_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server(
    rig_daemon: Callable[..., RunningDaemon],
    accounts: HostAccounts,
    namespace: str,
    ssh_ports: tuple[int, int],
    socket_dir: Path,
    cleanup: None,
) -> Server:
    socket, admin_group = socket_dir / "run" / "api.sock", accounts.group()
    env = {
        "DEEPDOCKD_HOST_USERS": "true",
        "DEEPDOCKD_SOCKET": str(socket),
        "DEEPDOCKD_ADMIN_GROUP": admin_group,
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}",
    }
    return Server(rig_daemon(env=env, auth=True), socket, admin_group)


def box(name: str) -> dict[str, object]:
    return {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw"}


def names(answer: dict) -> list[str]:
    return sorted(c["name"] for c in answer["containers"])


def test_each_host_user_is_themself_and_no_container_reaches_the_socket(
    server: Server, accounts: HostAccounts, client: Path, namespace: str, rig: Rig
) -> None:
    alice, bob = accounts.user(), accounts.user()
    carol = accounts.user(server.admin_group)
    mine, theirs = f"{namespace}-alice", f"{namespace}-bob"
    for who, name in ((alice, mine), (bob, theirs)):
        status, made = on_socket(
            server.socket, "POST", "/containers/create", user=who, body=box(name)
        )
        assert status == 201, made
        assert on_socket(server.socket, "GET", f"/containers/{name}", user=who)[1]["owner"] == who

    seen = {
        who: on_socket(server.socket, "GET", "/containers", user=who)
        for who in (alice, bob, carol, "root")
    }
    assert {who: (status, names(answer)) for who, (status, answer) in seen.items()} == {
        alice: (200, [mine]), bob: (200, [theirs]),
        carol: (200, [mine, theirs]), "root": (200, [mine, theirs]),
    }  # fmt: skip
    roles = {
        who: on_socket(server.socket, "GET", "/quota", user=who)[1]["caller"]
        for who in (alice, carol, "root")
    }
    assert roles == {
        alice: {"user": alice, "role": "user"},
        carol: {"user": carol, "role": "admin"},
        "root": {"user": "root", "role": "admin"},
    }
    # Another user's container is as absent as one that never was.
    assert on_socket(server.socket, "GET", f"/containers/{mine}", user=bob)[0] == 404

    # The client on the server: no URL, no login, no token.
    listed = deepdock_as(alice, client, server.socket, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert names(json.loads(listed.stdout)) == [mine]

    # Root in alice's container has no path to the socket: nothing of its directory is
    # mounted, and the socket is not among the Unix sockets the container's kernel view shows.
    [inspected] = json.loads(rig.docker("inspect", mine))
    sources = [m.get("Source", "") for m in inspected["Mounts"]]
    assert not [s for s in sources if s and str(server.socket).startswith(s.rstrip("/") + "/")]
    probe = f"test -e {server.socket} && echo there; grep -c {server.socket} /proc/net/unix || :"
    assert rig.docker("exec", mine, "sh", "-c", probe).split() == ["0"]


def test_a_token_made_on_the_socket_serves_elsewhere_until_revoked(
    server: Server, accounts: HostAccounts, client: Path
) -> None:
    alice, bob = accounts.user(), accounts.user()
    carol = accounts.user(server.admin_group)
    made = deepdock_as(alice, client, server.socket, "token", "create", "laptop")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert "shown this once" in made.stderr

    status, quota = server.tcp("GET", "/quota", token)
    assert (status, quota["caller"]) == (200, {"user": alice, "role": "user"})
    # Tokens come from the kernel's word alone: not over TCP, not with a token on the socket.
    assert server.tcp("POST", "/tokens", token, {"name": "more"})[0] == 403
    status, refused = on_socket(
        server.socket, "POST", "/tokens", user=alice, token=token, body={"name": "more"}
    )
    assert status == 403, refused
    assert "only over the local socket" in refused["error"]["message"]

    [entry] = json.loads(deepdock_as(alice, client, server.socket, "token", "ls", "--json").stdout)[
        "tokens"
    ]
    assert {k: entry[k] for k in ("name", "user", "role")} == {
        "name": "laptop",
        "user": alice,
        "role": "user",
    }
    assert on_socket(server.socket, "GET", "/tokens", user=bob) == (200, {"tokens": []})
    assert on_socket(server.socket, "DELETE", f"/tokens/{entry['id']}", user=bob)[0] == 404
    assert entry in on_socket(server.socket, "GET", "/tokens", user=carol)[1]["tokens"]

    revoked = deepdock_as(alice, client, server.socket, "token", "revoke", entry["id"])
    assert revoked.stdout.strip() == f"token 'laptop' ({entry['id']}) revoked", revoked.stderr
    assert server.tcp("GET", "/quota", token)[0] == 401


def test_a_token_dies_with_its_host_account(server: Server, accounts: HostAccounts) -> None:
    dave = accounts.user()
    status, made = on_socket(server.socket, "POST", "/tokens", user=dave, body={"name": "ci"})
    assert status == 201, made
    assert server.tcp("GET", "/quota", made["token"])[0] == 200

    accounts.gone(dave)
    assert server.tcp("GET", "/quota", made["token"])[0] == 401


def test_a_uid_without_an_account_is_refused_unless_it_brings_a_token(server: Server) -> None:
    uid = no_such_uid()
    status, refused = on_socket(server.socket, "GET", "/containers", uid=uid)
    assert status == 403, refused
    assert refused["error"]["message"].startswith(f"uid {uid} has no account on this host")
    # A token wins over the kernel's word.
    status, quota = on_socket(server.socket, "GET", "/quota", uid=uid, token=server.admin_token)
    assert (status, quota["caller"]) == (200, {"user": "admin", "role": "admin"})


def test_a_second_daemon_on_the_same_socket_is_refused_and_the_socket_goes_at_the_stop(
    server: Server, rig: Rig, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    second = Daemon(
        "--port", str(port), "--docker-host", rig.docker_host, "--state-dir", str(tmp_path / "second"),
        env={"DEEPDOCKD_HOST_USERS": "true", "DEEPDOCKD_SOCKET": str(server.socket)},
        log=tmp_path / "second.log", auth=True,
    )  # fmt: skip
    status, log = second.wait_for_exit(timeout_s=30)
    assert status == 1, log
    assert f"socket: {server.socket} is served by another process" in log

    assert server.socket.is_socket()
    status, _ = server.daemon.stop()
    assert status == 0
    assert not server.socket.exists()


HOLD_CONNECTIONS = """
import socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    connection = socket.socket(socket.AF_UNIX)
    connection.connect(sys.argv[1])
    held.append(connection)
time.sleep(1)
closed = 0
for connection in held:
    connection.setblocking(False)
    try:
        closed += connection.recv(1) == b""
    except BlockingIOError:
        pass
print(closed, flush=True)
sys.stdin.read()  # hold the others until the test is done
"""


def test_one_host_user_cannot_hold_every_connection_of_the_socket(
    rig_daemon: Callable[..., RunningDaemon], accounts: HostAccounts, socket_dir: Path
) -> None:
    socket_path = socket_dir / "api.sock"
    env = {
        "DEEPDOCKD_HOST_USERS": "true",
        "DEEPDOCKD_SOCKET": str(socket_path),
        "DEEPDOCKD_MAX_CONNECTIONS_PER_CLIENT": "5",
    }
    rig_daemon(env=env, auth=True)
    alice, bob = accounts.user(), accounts.user()
    holder = subprocess.Popen(
        ["runuser", "-u", alice, "--", SYSTEM_PYTHON, "-c", HOLD_CONNECTIONS, str(socket_path), "8"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "3\n"  # the three over her cap of 5
        status, answer = on_socket(socket_path, "GET", "/quota", user=bob)
        assert (status, answer["caller"]["user"]) == (200, bob)
    finally:
        holder.kill()
        holder.communicate()  # and its pipes closed

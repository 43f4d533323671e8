"""Workspaces (issue 12) on the rig's real dockerd, with real OpenSSH clients and curl: a home
volume that outlives its containers, key logins, the image's own service on published ports,
memory, CPU, /dev/shm and process limits, and a container's logs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.shared_mounts import SharedMount
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory, body, create, created
from tests.support.daemon import RunningDaemon, http_json
from tests.support.docker_state import inspect
from tests.support.gpus import sim_gpu
from tests.support.rig import (
    DEBIAN_NOSSH_IMAGE,
    DEBIAN_SERVICE_IMAGE,
    DEBIAN_SSH_IMAGE,
    REGISTRY_ADDR,
    Rig,
)
from tests.support.ssh import ssh
from tests.support.users import users_tokens

VOLUME_KEYS = {"name", "owner", "user_name", "uid", "containers", "created", "disk_used_mb"}
RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"
BOOTSTRAP = "deepdockd-bootstrap: "
# What a user sees of the container's limits, from inside: cgroup v1 files (this machine's),
# else cgroup v2's; and the size of /dev/shm.
LIMITS_SCRIPT = r"""
cg=/sys/fs/cgroup
if [ -e $cg/memory/memory.limit_in_bytes ]; then
    echo "memory $(cat $cg/memory/memory.limit_in_bytes)"
    echo "cpu $(cat $cg/cpu/cpu.cfs_quota_us) $(cat $cg/cpu/cpu.cfs_period_us)"
    echo "pids $(cat $cg/pids/pids.max)"
else
    echo "memory $(cat $cg/memory.max)"
    echo "cpu $(cat $cg/cpu.max)"
    echo "pids $(cat $cg/pids.max)"
fi
echo "shm $(df -m /dev/shm | awk 'NR == 2 {print $2}')"
"""
# Fill /dev/shm with {mib} MiB and say the container's memory use before and after (cgroup
# v1's file, this machine's, else v2's) and dd's exit status.
SHM_FILL = r"""
cg=/sys/fs/cgroup/memory/memory.usage_in_bytes
[ -e $cg ] || cg=/sys/fs/cgroup/memory.current
rm -f /dev/shm/fill
echo "before $(cat $cg)"
dd if=/dev/zero of=/dev/shm/fill bs=1M count={mib} 2>/dev/null
echo "dd $?"
echo "after $(cat $cg)"
"""
# A fork bomb that stops itself: forks sleepers until a fork fails (or 400 are up), kills
# them, and says how many it had and why the fork failed.
FORKS_SCRIPT = r"""
my (@kids, $why);
for (1 .. 400) {
    my $pid = fork;
    if (!defined $pid) { $why = "$!"; last }
    if ($pid == 0) { sleep 60; exit 0 }
    push @kids, $pid;
}
kill "KILL", @kids;
waitpid($_, 0) for @kids;
print scalar(@kids), " started; ", ($why // "no fork failed"), "\n";
"""


# --- fixtures ---


@pytest.fixture
def ws_config(config: Config, ssh_ports: tuple[int, int], service_ports: tuple[int, int]) -> Config:
    """The test's namespace, SSH ports and service ports of its own."""
    return dataclasses.replace(
        config,
        ssh_port_range=ssh_ports,
        service_port_range=service_ports,
        ssh_ready_timeout=180.0,
    )


@pytest.fixture
async def ws_client(aiohttp_client: ClientFactory, ws_config: Config, cleanup: None) -> Client:
    """A daemon with auth off: everything belongs to "anonymous"."""
    return await aiohttp_client(create_app(ws_config))


@pytest.fixture
def make_client(
    aiohttp_client: ClientFactory, ws_config: Config, cleanup: None
) -> Callable[..., Any]:
    """Factory: a client of a daemon whose config differs from ``ws_config`` in ``changes``."""

    async def make(**changes: Any) -> Client:
        return await aiohttp_client(create_app(dataclasses.replace(ws_config, **changes)))

    return make


@dataclass
class Users:
    """A daemon with auth on, an admin and two users, alice and bob."""

    client: Client
    tokens: dict[str, str]
    namespace: str

    async def call(self, who: str, method: str, path: str, json_body: Any = None) -> Any:
        """Status and JSON answer of one request as ``who``."""
        response = await self.client.request(method, path, json=json_body, headers=self.auth(who))
        return response.status, await response.json()

    async def created(self, who: str, name: str, **fields: Any) -> dict[str, Any]:
        status, answer = await self.call(who, "POST", "/containers/create", body(name, **fields))
        assert status == 201, answer
        return dict(answer)

    async def volumes(self, who: str) -> list[dict[str, Any]]:
        status, answer = await self.call(who, "GET", "/volumes")
        assert status == 200, answer
        return list(answer["volumes"])

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def volume(self, owner: str, user_name: str) -> str:
        return home_volume(self.namespace, owner, user_name)


@pytest.fixture
async def users(aiohttp_client: ClientFactory, ws_config: Config, cleanup: None) -> Users:
    secured = dataclasses.replace(ws_config, auth=True)
    tokens = users_tokens(TokenStore(secured.state_dir))
    return Users(await aiohttp_client(create_app(secured)), tokens, secured.namespace)


# --- helpers ---


def home_volume(namespace: str, owner: str, user_name: str) -> str:
    return f"{namespace}-home-{owner}.{user_name}"


def containers_in(rig: Rig, namespace: str) -> list[str]:
    output = rig.docker(
        "ps", "--all", "--filter", f"label=deepdockd.namespace={namespace}",
        "--format", "{{.Names}}",
    )  # fmt: skip
    return sorted(output.split())


def volumes_in(rig: Rig, namespace: str) -> list[str]:
    output = rig.docker(
        "volume", "ls", "--quiet", "--filter", f"label=deepdockd.namespace={namespace}"
    )
    return sorted(output.split())


def all_volumes(rig: Rig) -> list[str]:
    return rig.docker("volume", "ls", "--quiet").split()


def volume_labels(rig: Rig, name: str) -> dict[str, str]:
    [data] = json.loads(rig.docker("volume", "inspect", name))
    return dict(data["Labels"] or {})


def mounts(rig: Rig, container: str) -> dict[str, tuple[str, str]]:
    """The container's mounts: destination -> (type, volume name or source)."""
    return {
        mount["Destination"]: (mount["Type"], mount.get("Name") or mount["Source"])
        for mount in inspect(rig, container)["Mounts"]
    }


def published(rig: Rig, container: str, port: int) -> set[int]:
    """The host ports Docker publishes the container's TCP port on."""
    bindings = inspect(rig, container)["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
    return {int(binding["HostPort"]) for binding in bindings}


async def volumes_of(client: Client) -> list[dict[str, Any]]:
    response = await client.get("/volumes")
    assert response.status == 200, await response.text()
    return list((await response.json())["volumes"])


async def get_container(client: Client, name: str) -> dict[str, Any]:
    response = await client.get(f"/containers/{name}")
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def remove(client: Client, name: str) -> None:
    response = await client.delete(f"/containers/{name}?force=true")
    assert response.status == 200, await response.text()


async def logs(client: Client, name: str, **query: str) -> tuple[int, str, str]:
    """Status, Content-Type and text of GET /containers/{name}/logs."""
    response = await client.get(f"/containers/{name}/logs", params=query)
    return response.status, response.headers.get("Content-Type", ""), await response.text()


async def wait_for_log(client: Client, name: str, pattern: str, timeout_s: float = 60) -> str:
    """The container's log once a line of it matches ``pattern``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, _, text = await logs(client, name)
        assert status == 200, text
        if re.search(pattern, text, re.MULTILINE):
            return text
        assert time.monotonic() < deadline, f"no line of {name}'s log matches {pattern!r}:\n{text}"
        await asyncio.sleep(0.5)


def new_key(path: Path, *options: str) -> str:
    """A new key pair at ``path`` (ed25519 unless ``options`` say otherwise): its public line."""
    key_type = list(options) or ["-t", "ed25519"]
    subprocess.run(
        ["ssh-keygen", "-q", *key_type, "-N", "", "-C", path.name, "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


def ssh_with_key(
    port: int, user: str, key: Path, command: str, *, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """A real OpenSSH login with this key alone: no agent, no password."""
    return subprocess.run(
        [
            "ssh", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"{user}@127.0.0.1", command,
        ],
        env={"PATH": "/usr/bin:/bin"}, input=stdin,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def curl(port: int, path: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--max-time", "10",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def served(port: int, path: str = "/", deadline_s: float = 60) -> str:
    """What curl gets from 127.0.0.1:port once something answers there with 200."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = curl(port, path)
        if got.returncode == 0:
            return got.stdout
        assert time.monotonic() < deadline, f"nothing served {path} on {port}: {got.stderr}"
        time.sleep(0.2)


def limits_seen(port: int, user: str, password: str) -> dict[str, Any]:
    """The container's limits as its user reads them: memory in MiB, CPUs, processes and the
    size of /dev/shm in MiB; None for no limit."""
    run = ssh(port, user, password, LIMITS_SCRIPT)
    assert run.returncode == 0, run.stderr
    seen = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    memory = seen["memory"]
    quota, period = seen["cpu"].split()
    return {
        "memory_mb": None if memory == "max" or int(memory) >= 2**62 else int(memory) / 2**20,
        "cpus": None if quota in ("max", "-1") else int(quota) / int(period),
        "pids": None if seen["pids"] == "max" else int(seen["pids"]),
        "shm_mb": int(seen["shm"]),
    }


def host_cpus(rig: Rig) -> int:
    return int(rig.docker("info", "--format", "{{.NCPU}}"))


def host_memory_mb() -> float:
    [total_kb] = [
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    ]
    return total_kb / 1024


def image_with(rig: Rig, script: str, *changes: str) -> str:
    """A new image: DEBIAN_SSH_IMAGE after ``script`` ran in it as root, its Cmd kept, and
    the Dockerfile instructions ``changes`` applied."""
    image = f"deepdockd-test/made:{uuid.uuid4().hex[:8]}"
    builder = f"build-{uuid.uuid4().hex[:8]}"
    rig.docker("run", "--name", builder, DEBIAN_SSH_IMAGE, "sh", "-c", script)
    instructions = ['CMD ["/bin/bash"]', *changes]
    rig.docker("commit", *(f"--change={c}" for c in instructions), builder, image)
    rig.docker("rm", builder)
    return image


def kill_sshd(rig: Rig, container: str) -> None:
    """Root in the container kills every sshd (Debian's minimal images have no pkill), in an
    exec of its own: the container may go down with it. Returns once Docker restarted it."""
    script = (
        'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = sshd ] && '
        'kill "${p#/proc/}"; done; true'
    )
    rig.docker("exec", "--detach", container, "sh", "-c", script)
    deadline = time.monotonic() + 60
    while inspect(rig, container)["RestartCount"] < 1:
        assert time.monotonic() < deadline, f"Docker did not restart {container}"
        time.sleep(0.2)


def ssh_until(port: int, user: str, password: str, deadline_s: float = 120) -> str:
    """``id -un`` over SSH, once sshd answers again."""
    deadline = time.monotonic() + deadline_s
    while True:
        login = ssh(port, user, password, "id -un")
        if login.returncode == 0:
            return login.stdout
        assert time.monotonic() < deadline, login.stderr
        time.sleep(0.5)


def field_error(answer: dict[str, Any]) -> tuple[str, dict[str, str], str]:
    """Code, details.fields and message of a 422."""
    error = answer["error"]
    return error["code"], dict(error["details"].get("fields") or {}), error["message"]


# --- home volumes ---


async def test_a_home_survives_its_container_across_images_and_gpus(
    aiohttp_client: ClientFactory,
    ws_config: Config,
    cleanup: None,
    rig: Rig,
    namespace: str,
    sim_gpus: Callable[..., Path],
    gpu_stem: str,
) -> None:
    gpus = [sim_gpu(i, stem=gpu_stem) for i in range(4)]
    sim_gpus(*gpus)
    client = await aiohttp_client(create_app(ws_config))
    volume = home_volume(namespace, "anonymous", "alice")

    first = await created(client, **body("ws1", gpu_ids=[0]))
    wrote = ssh(
        first["ssh-port"], "alice", "pw-ws1",
        "echo first > ~/notes.txt && pwd && id -u && id -g && stat -c '%u %g' ~/notes.txt",
    )  # fmt: skip
    assert wrote.returncode == 0, wrote.stderr
    home, uid, gid, owner = wrote.stdout.splitlines()
    listed = await volumes_of(client)
    item = await get_container(client, "ws1")

    assert home == "/home/alice"
    assert int(uid) >= 10000
    assert gid == uid  # a group of the user's own, gid = uid
    assert owner == f"{uid} {uid}"
    [entry] = listed
    assert set(entry) == VOLUME_KEYS
    # Disk use is measured on a slow cadence (tests/test_disk.py): unknown until then.
    assert entry["disk_used_mb"] is None or entry["disk_used_mb"] >= 0
    assert entry | {"created": "", "disk_used_mb": None} == {
        "name": volume, "owner": "anonymous", "user_name": "alice", "uid": int(uid),
        "containers": ["ws1"], "created": "", "disk_used_mb": None,
    }  # fmt: skip
    assert re.fullmatch(RFC3339, entry["created"]), entry
    assert item["home_volume"] == volume
    assert mounts(rig, "ws1")["/home/alice"] == ("volume", volume)
    assert volume_labels(rig, volume).items() >= {
        "deepdockd.namespace": namespace, "deepdockd.owner": "anonymous",
        "deepdockd.ssh-user": "alice", "deepdockd.uid": uid, "deepdockd.kind": "home",
    }.items()  # fmt: skip

    # Removing the container keeps the volume.
    await remove(client, "ws1")
    assert [v["containers"] for v in await volumes_of(client)] == [[]]
    assert volume in all_volumes(rig)

    # Another image (whose sshd the bootstrap installs with apt), other GPUs, another password.
    second = await created(client, **body("ws2", image=DEBIAN_NOSSH_IMAGE, gpu_ids=[1, 2]))
    again = ssh(
        second["ssh-port"], "alice", "pw-ws2",
        "cat ~/notes.txt && id -u && echo second >> ~/notes.txt && cat ~/notes.txt"
        " && echo $NVIDIA_VISIBLE_DEVICES",
    )  # fmt: skip

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "first", uid, "first", "second", f"{gpus[1]['uuid']},{gpus[2]['uuid']}",
    ]  # fmt: skip
    assert (await get_container(client, "ws2"))["home_volume"] == volume
    assert [(v["name"], v["uid"], v["containers"]) for v in await volumes_of(client)] == [
        (volume, int(uid), ["ws2"])
    ]


async def test_two_users_have_homes_of_their_own_and_see_only_their_volumes(
    users: Users, rig: Rig
) -> None:
    alice_box = await users.created("alice", "alice-box", user_name="dev")
    bob_box = await users.created("bob", "bob-box", user_name="dev")
    wrote = ssh(alice_box["ssh-port"], "dev", "pw-alice-box", "echo mine > ~/mine.txt && id -u")
    looked = ssh(bob_box["ssh-port"], "dev", "pw-bob-box", "ls -A ~; id -u")
    alices, bobs = users.volume("alice", "dev"), users.volume("bob", "dev")

    assert wrote.returncode == 0, wrote.stderr
    assert "mine.txt" not in looked.stdout
    alice_uid, bob_uid = int(wrote.stdout), int(looked.stdout.split()[-1])
    assert alice_uid != bob_uid
    assert min(alice_uid, bob_uid) >= 10000
    seen = {who: await users.volumes(who) for who in ("alice", "bob", "admin")}
    assert [(v["name"], v["owner"], v["uid"], v["containers"]) for v in seen["alice"]] == [
        (alices, "alice", alice_uid, ["alice-box"])
    ]
    assert [(v["name"], v["owner"], v["uid"], v["containers"]) for v in seen["bob"]] == [
        (bobs, "bob", bob_uid, ["bob-box"])
    ]
    assert sorted(v["name"] for v in seen["admin"]) == sorted([alices, bobs])
    assert mounts(rig, "alice-box")["/home/dev"] == ("volume", alices)
    assert mounts(rig, "bob-box")["/home/dev"] == ("volume", bobs)
    # Bob's volume is to alice exactly as one that does not exist.
    theirs = await users.call("alice", "DELETE", f"/volumes/{bobs}")
    ghost = users.volume("alice", "ghost")
    absent = await users.call("alice", "DELETE", f"/volumes/{ghost}")
    assert theirs[0] == absent[0] == 404
    assert theirs[1]["error"]["code"] == "not_found"
    assert theirs[1]["error"]["message"].replace(bobs, "X") == absent[1]["error"][
        "message"
    ].replace(ghost, "X")
    assert bobs in all_volumes(rig)


async def test_a_volume_in_use_is_409_until_its_containers_are_removed(
    users: Users, rig: Rig
) -> None:
    volume = users.volume("alice", "dev")
    await users.created("alice", "keep", user_name="dev")
    await users.created("alice", "keep2", user_name="dev")
    assert (await users.call("alice", "POST", "/containers/keep/stop"))[0] == 200

    refused = await users.call("alice", "DELETE", f"/volumes/{volume}")

    assert refused[0] == 409
    assert refused[1]["error"]["code"] == "conflict"
    assert "keep" in refused[1]["error"]["message"]
    assert "keep2" in refused[1]["error"]["message"]
    assert refused[1]["error"]["details"] | {"containers": []} == {
        "name": volume,
        "containers": [],
    }
    assert sorted(refused[1]["error"]["details"]["containers"]) == ["keep", "keep2"]
    assert volume in all_volumes(rig)

    # One left, stopped: still refused, naming it.
    assert (await users.call("alice", "DELETE", "/containers/keep2?force=true"))[0] == 200
    still = await users.call("alice", "DELETE", f"/volumes/{volume}")
    assert still[0] == 409
    assert still[1]["error"]["details"] == {"name": volume, "containers": ["keep"]}
    assert "keep" in still[1]["error"]["message"]
    assert "keep2" not in still[1]["error"]["message"]

    assert (await users.call("alice", "DELETE", "/containers/keep"))[0] == 200
    assert [(v["name"], v["containers"]) for v in await users.volumes("alice")] == [(volume, [])]
    removed = await users.call("alice", "DELETE", f"/volumes/{volume}")

    assert removed == (200, {"message": f"volume '{volume}' removed"})
    assert await users.volumes("alice") == []
    assert volume not in all_volumes(rig)
    assert (await users.call("alice", "DELETE", f"/volumes/{volume}"))[0] == 404


async def test_an_admin_may_remove_anyones_volume(users: Users, rig: Rig) -> None:
    volume = users.volume("bob", "ops")
    await users.created("bob", "bobs", user_name="ops")
    assert (await users.call("admin", "DELETE", "/containers/bobs?force=true"))[0] == 200

    removed = await users.call("admin", "DELETE", f"/volumes/{volume}")

    assert removed == (200, {"message": f"volume '{volume}' removed"})
    assert await users.volumes("bob") == []
    assert volume not in all_volumes(rig)


async def test_without_a_persistent_home_there_is_no_volume(
    ws_client: Client, rig: Rig, namespace: str
) -> None:
    answer = await created(ws_client, **body("throwaway", persistent_home=False))
    wrote = ssh(answer["ssh-port"], "alice", "pw-throwaway", "echo x > ~/f && cat ~/f && pwd")

    assert wrote.stdout.splitlines() == ["x", "/home/alice"], wrote.stderr
    assert (await get_container(ws_client, "throwaway"))["home_volume"] is None
    assert await volumes_of(ws_client) == []
    assert volumes_in(rig, namespace) == []
    assert "/home/alice" not in mounts(rig, "throwaway")


async def test_an_image_account_that_clashes_with_the_home_is_ssh_unavailable(
    ws_client: Client, rig: Rig, namespace: str
) -> None:
    await created(ws_client, **body("first", user_name="dave"))
    [dave_volume] = await volumes_of(ws_client)
    uid = dave_volume["uid"]
    await remove(ws_client, "first")
    # An image whose accounts clash: carol with uid 1500 (her home volume's uid is >= 10000),
    # and mallory with the uid of dave's home volume.
    image = image_with(rig, f"useradd -m -u 1500 carol && useradd -m -u {uid} mallory")
    try:
        carol = await create(ws_client, **body("carol", image=image, user_name="carol"))
        dave = await create(ws_client, **body("dave", image=image, user_name="dave"))
    finally:
        rig.docker("rmi", "--force", image)

    assert carol[0] == 422, carol
    assert carol[1]["error"]["code"] == "ssh_unavailable"
    assert "carol" in carol[1]["error"]["message"]
    assert "1500" in carol[1]["error"]["message"]
    assert dave[0] == 422, dave
    assert dave[1]["error"]["code"] == "ssh_unavailable"
    assert str(uid) in dave[1]["error"]["message"]
    assert containers_in(rig, namespace) == []


# --- SSH keys ---


async def test_a_key_alone_logs_in_and_passwords_are_refused(
    ws_client: Client, rig: Rig, tmp_path: Path
) -> None:
    public = new_key(tmp_path / "id")
    fields = body("keyed", ssh_keys=[public])
    del fields["password"]

    answer = await created(ws_client, **fields)
    port = answer["ssh-port"]
    by_key = ssh_with_key(port, "alice", tmp_path / "id", "id -un")
    by_password = [ssh(port, "alice", password, "id -un") for password in ("pw-keyed", "x")]

    assert by_key.stdout == "alice\n", by_key.stderr
    for refused in by_password:
        assert refused.returncode != 0
        assert refused.stdout == ""
        assert "Permission denied" in refused.stderr, refused.stderr
    # The key is in the user's file, and nowhere Docker or a process list shows.
    blob = public.split()[1]
    listed = ssh_with_key(port, "alice", tmp_path / "id", "cat ~/.ssh/authorized_keys")
    assert blob in listed.stdout
    assert blob not in rig.docker("inspect", "keyed")
    processes = rig.docker(
        "exec",
        "keyed",
        "sh",
        "-c",
        "cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null; true",
    )
    assert blob not in processes


async def test_keys_in_the_home_are_kept_and_none_is_added_twice(
    ws_client: Client, tmp_path: Path
) -> None:
    first_key, second_key, own_key = (new_key(tmp_path / n) for n in ("one", "two", "own"))
    fields = body("k1", ssh_keys=[first_key])
    del fields["password"]
    port = (await created(ws_client, **fields))["ssh-port"]
    # The user adds a key of their own by hand.
    added = ssh_with_key(
        port, "alice", tmp_path / "one", "cat >> ~/.ssh/authorized_keys", stdin=own_key + "\n"
    )
    assert added.returncode == 0, added.stderr
    await remove(ws_client, "k1")

    # The next container names the first key again, with a second key and a password.
    again = await created(ws_client, **body("k2", ssh_keys=[second_key, first_key]))
    port = again["ssh-port"]

    logins = {
        key: ssh_with_key(port, "alice", tmp_path / key, "id -un").stdout
        for key in ("one", "two", "own")
    }
    assert logins == {"one": "alice\n", "two": "alice\n", "own": "alice\n"}
    assert ssh(port, "alice", "pw-k2", "id -un").stdout == "alice\n"
    listed = ssh(port, "alice", "pw-k2", "cat ~/.ssh/authorized_keys").stdout
    assert [listed.count(key.split()[1]) for key in (first_key, second_key, own_key)] == [1, 1, 1]


async def test_keys_reach_a_home_whose_file_is_a_link_or_lacks_its_last_newline(
    ws_client: Client, rig: Rig, tmp_path: Path
) -> None:
    own, first, second = (new_key(tmp_path / n) for n in ("own", "one", "two"))
    port = (await created(ws_client, **body("plant")))["ssh-port"]
    # A file whose last key has no newline, and (in a second home) a link to a directory
    # that root's shells read: mv would move the new file into it.
    planted = ssh(
        port, "alice", "pw-plant",
        f"mkdir -p ~/.ssh && printf %s {shlex.quote(own)} > ~/.ssh/authorized_keys",
    )  # fmt: skip
    assert planted.returncode == 0, planted.stderr
    await remove(ws_client, "plant")

    fields = body("glued", ssh_keys=[first])
    del fields["password"]
    port = (await created(ws_client, **fields))["ssh-port"]
    logins = {k: ssh_with_key(port, "alice", tmp_path / k, "id -un").stdout for k in ("own", "one")}
    linked = ssh_with_key(
        port, "alice", tmp_path / "one", "rm ~/.ssh/authorized_keys && ln -s /etc/profile.d ~/.ssh/authorized_keys"
    )  # fmt: skip
    assert linked.returncode == 0, linked.stderr
    await remove(ws_client, "glued")

    fields = body("linked", ssh_keys=[second])
    del fields["password"]
    port = (await created(ws_client, **fields))["ssh-port"]
    second_login = ssh_with_key(
        port, "alice", tmp_path / "two", "id -un; test -L ~/.ssh/authorized_keys || echo file"
    )

    assert logins == {"own": "alice\n", "one": "alice\n"}
    assert second_login.stdout.splitlines() == ["alice", "file"], second_login.stderr
    profile_d = rig.docker("exec", "linked", "ls", "-A", "/etc/profile.d").split()
    assert "authorized_keys.deepdockd" not in profile_d


@pytest.mark.parametrize(
    ("case", "field", "says"),
    [
        ("malformed", "ssh_keys.0", "base64"),
        ("rsa-1024", "ssh_keys.1", "2048"),
        ("no-way-in", "password", "give a password, ssh_keys, or both"),
    ],
)
async def test_bad_keys_and_no_way_in_are_422_naming_the_field(
    ws_client: Client, rig: Rig, namespace: str, tmp_path: Path, case: str, field: str, says: str
) -> None:
    fields = body("badkey")
    del fields["password"]
    if case == "malformed":
        fields["ssh_keys"] = ["ssh-ed25519 not!base64 me@laptop"]
    elif case == "rsa-1024":
        fields["ssh_keys"] = [new_key(tmp_path / "good"), new_key(tmp_path / "rsa", "-t", "rsa", "-b", "1024")]  # fmt: skip

    status, answer = await create(ws_client, **fields)

    assert status == 422, answer
    code, fields_named, message = field_error(answer)
    assert code == "invalid_input"
    assert field in fields_named, answer
    assert says in fields_named[field]
    assert message.startswith(f"{field}: ")
    assert containers_in(rig, namespace) == []


# --- the image's own command and published ports ---


async def test_the_images_service_runs_beside_sshd_on_a_published_port(
    ws_client: Client, rig: Rig, service_ports: tuple[int, int]
) -> None:
    answer = await created(ws_client, **body("web", image=DEBIAN_SERVICE_IMAGE, ports=[8080]))

    assert set(answer) == {"message", "id", "name", "ssh-port", "ports", "expires_at", "ssh_server"}
    [(container_port, host_port)] = answer["ports"].items()
    assert container_port == "8080"
    assert service_ports[0] <= host_port <= service_ports[1]
    assert served(host_port) == "deepdockd service\n"
    assert served(host_port, "/cgi-bin/id") == "nobody\n"  # the image's USER
    login = ssh(answer["ssh-port"], "alice", "pw-web", 'id -un; echo "$GREETING"')
    assert login.stdout == "alice\nhello from the image\n", login.stderr
    assert (await get_container(ws_client, "web"))["ports"] == {"8080": host_port}
    assert inspect(rig, "web")["Config"]["Labels"]["deepdockd.ports"] == f"8080:{host_port}"
    assert published(rig, "web", 8080) == {host_port}

    # Stopped, it keeps its port; started again, it serves there.
    assert (await ws_client.post("/containers/web/stop")).status == 200
    listed = (await (await ws_client.get("/containers")).json())["containers"]
    assert [(c["name"], c["status"], c["ports"]) for c in listed] == [
        ("web", "exited", {"8080": host_port})
    ]
    assert (await ws_client.post("/containers/web/start")).status == 200
    assert served(host_port) == "deepdockd service\n"


async def test_a_command_replaces_the_images_cmd(ws_client: Client) -> None:
    # busybox's httpd again, on another port and another directory: /id is then the CGI
    # script's text, not its output.
    command = ["/usr/local/bin/busybox", "httpd", "-f", "-p", "9000", "-h", "/srv/www/cgi-bin"]

    answer = await created(
        ws_client,
        **body("cmd", image=DEBIAN_SERVICE_IMAGE, ports=[8080, 9000], command=command),
    )

    assert set(answer["ports"]) == {"8080", "9000"}
    assert served(answer["ports"]["9000"], "/id").startswith("#!/bin/sh\n")
    # The image's own Cmd did not run: nothing answers on 8080.
    assert curl(answer["ports"]["8080"]).returncode != 0
    assert ssh(answer["ssh-port"], "alice", "pw-cmd", "id -un").stdout == "alice\n"


async def test_a_command_that_exits_leaves_ssh_up_and_its_status_in_the_logs(
    ws_client: Client, rig: Rig
) -> None:
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    command = ["sh", "-c", f'echo "{marker} $(id -un) $(pwd) $GREETING"; exit 3']

    answer = await created(
        ws_client, **body("oneshot", image=DEBIAN_SERVICE_IMAGE, command=command)
    )
    text = await wait_for_log(
        ws_client, "oneshot", r"^deepdockd-bootstrap: .*command.* exited with status 3"
    )

    # As the image's USER, in its WORKDIR and environment.
    assert f"{marker} nobody /srv/www hello from the image\n" in text
    assert re.search(r"^deepdockd-bootstrap: .*command.* exited with status 3; SSH stays up$", text, re.MULTILINE)  # fmt: skip
    assert ssh(answer["ssh-port"], "alice", "pw-oneshot", "id -un").stdout == "alice\n"
    assert (await get_container(ws_client, "oneshot"))["status"] == "running"
    state = inspect(rig, "oneshot")["State"]
    assert (state["Running"], inspect(rig, "oneshot")["RestartCount"]) == (True, 0)


async def test_a_command_keeps_the_images_entrypoint(ws_client: Client, rig: Rig) -> None:
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    image = image_with(rig, "true", 'ENTRYPOINT ["/bin/echo", "from-the-entrypoint"]')
    try:
        answer = await created(ws_client, **body("entry", image=image, command=[marker]))
        text = await wait_for_log(ws_client, "entry", f"^from-the-entrypoint {marker}$")
    finally:
        await ws_client.delete("/containers/entry?force=true")
        rig.docker("rmi", "--force", image)

    assert re.search(r"^deepdockd-bootstrap: .*command.* exited with status 0; SSH stays up$", text, re.MULTILINE), text  # fmt: skip
    assert answer["ports"] == {}


async def test_a_stop_sends_sigterm_to_the_command(ws_client: Client) -> None:
    command = ["sh", "-c", 'trap "echo got TERM; exit 0" TERM; echo waiting; while :; do sleep 1; done']  # fmt: skip
    await created(ws_client, **body("stoppable", image=DEBIAN_SERVICE_IMAGE, command=command))
    await wait_for_log(ws_client, "stoppable", "^waiting$")

    started = time.monotonic()
    stopped = await ws_client.post("/containers/stoppable/stop")
    took = time.monotonic() - started

    assert stopped.status == 200
    assert took < 8, f"the stop took {took:.1f} s: Docker waited for its grace period"
    assert re.search("^got TERM$", (await logs(ws_client, "stoppable"))[2], re.MULTILINE)


async def test_a_container_whose_sshd_dies_is_restarted_by_docker(
    ws_client: Client, rig: Rig
) -> None:
    answer = await created(ws_client, **body("phoenix"))
    assert ssh(answer["ssh-port"], "alice", "pw-phoenix", "echo kept > ~/kept").returncode == 0

    kill_sshd(rig, "phoenix")

    assert ssh_until(answer["ssh-port"], "alice", "pw-phoenix") == "alice\n"
    assert ssh(answer["ssh-port"], "alice", "pw-phoenix", "cat ~/kept").stdout == "kept\n"
    assert (await get_container(ws_client, "phoenix"))["status"] == "running"


# --- resources ---


async def test_shm_memory_cpus_and_pids_are_what_the_user_sees(
    make_client: Callable[..., Any], rig: Rig
) -> None:
    client = await make_client(pids_limit=200)

    answer = await created(client, **body("sized", shm_size_mb=256, memory_mb=512, cpus=1.5))
    port = answer["ssh-port"]

    assert limits_seen(port, "alice", "pw-sized") == {
        "memory_mb": 512, "cpus": 1.5, "pids": 200, "shm_mb": 256,
    }  # fmt: skip
    item = await get_container(client, "sized")
    listed = (await (await client.get("/containers")).json())["containers"]
    for shown in (item, *listed):
        assert (shown["memory_mb"], shown["cpus"], shown["shm_size_mb"]) == (512, 1.5, 256)
    host = inspect(rig, "sized")["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["ShmSize"], host["PidsLimit"]) == (
        512 * 2**20, 1_500_000_000, 256 * 2**20, 200,
    )  # fmt: skip

    # The process limit holds: forks fail past it, and the container lives on.
    bomb = ssh(port, "alice", "pw-sized", f"perl -e {shlex.quote(FORKS_SCRIPT)}")
    started, _, why = bomb.stdout.strip().partition(" started; ")
    assert why == "Resource temporarily unavailable", bomb.stdout + bomb.stderr
    assert 100 < int(started) < 200
    assert ssh(port, "alice", "pw-sized", "id -un").stdout == "alice\n"
    assert inspect(rig, "sized")["State"]["Running"] is True


async def test_by_default_a_quarter_of_the_ram_and_shm_inside_it(
    ws_client: Client, rig: Rig, namespace: str
) -> None:
    """Defaults that share (issue 30): a create that asks for nothing gets a memory limit (a
    quarter of the host's RAM) and a /dev/shm of half of it, inside it."""
    answer = await created(ws_client, **body("plain"))
    item = await get_container(ws_client, "plain")
    cpus = host_cpus(rig)
    too_many = await create(ws_client, **body("greedy", cpus=1000.5))
    memory = int(host_memory_mb()) // 4

    listed = (await (await ws_client.get("/containers")).json())["containers"]
    for shown in (item, *listed):
        assert (shown["memory_mb"], shown["cpus"], shown["shm_size_mb"]) == (
            memory, None, memory // 2,
        )  # fmt: skip
    host = inspect(rig, "plain")["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["ShmSize"], host["PidsLimit"]) == (
        memory * 2**20, memory * 2**20, memory // 2 * 2**20, 16384,
    )  # fmt: skip
    assert limits_seen(answer["ssh-port"], "alice", "pw-plain") == {
        "memory_mb": memory, "cpus": None, "pids": 16384, "shm_mb": memory // 2,
    }  # fmt: skip
    assert too_many[0] == 422, too_many
    code, _, message = field_error(too_many[1])
    assert code == "invalid_input"
    assert "cpus" in message
    assert re.search(rf"\b{cpus}\b", message.replace("1000.5", "")), message
    assert containers_in(rig, namespace) == ["plain"]


async def test_dev_shm_is_paid_from_the_containers_memory_and_cannot_pass_it(
    make_client: Callable[..., Any], rig: Rig, namespace: str
) -> None:
    """The user fills /dev/shm as an attacker would: the tmpfs pages are charged to the
    container's memory cgroup, and a write the size of /dev/shm that the memory limit cannot
    hold is stopped inside the container (the write fails or the container is OOM-killed);
    the host never pays more than the limit. A /dev/shm above the limit is refused."""
    client = await make_client()
    too_big = await create(client, **body("shmbig", memory_mb=128, shm_size_mb=256))
    answer = await created(client, **body("shmfill", memory_mb=128, shm_size_mb=128))
    port = answer["ssh-port"]

    assert too_big[0] == 422, too_big
    code, fields, message = field_error(too_big[1])
    assert (code, list(fields)) == ("invalid_input", ["shm_size_mb"])
    assert "memory limit of 128 MiB" in message
    # 48 MiB into /dev/shm: the container's memory use rises by as much.
    fill = ssh(port, "alice", "pw-shmfill", SHM_FILL.format(mib=48))
    seen = dict(line.split(" ", 1) for line in fill.stdout.splitlines())
    assert seen["dd"] == "0", fill.stdout + fill.stderr
    # (Less a margin: the cgroup's other pages, page cache, may be reclaimed meanwhile; a CI
    # run saw 47.8 MiB.)
    assert int(seen["after"]) - int(seen["before"]) >= 40 * 2**20, seen
    # 128 MiB, all of /dev/shm, with the shell and sshd beside it: more than the limit. The
    # kernel stops it inside the container's cgroup: the write fails, or the container is
    # OOM-killed (Docker reports "oom" for it, and restarts it), never the host.
    since = rig.docker("exec", "shmfill", "date", "+%s").strip()
    over = ssh(port, "alice", "pw-shmfill", SHM_FILL.format(mib=128))
    seen = dict(line.split(" ", 1) for line in over.stdout.splitlines() if " " in line)
    assert seen.get("dd", "killed") != "0", over.stdout + over.stderr
    until = str(int(time.time()) + 1)
    ooms = rig.docker(
        "events", "--since", since, "--until", until, "--filter", "container=shmfill",
        "--filter", "event=oom", "--format", "{{.Action}}",
    ).split()  # fmt: skip
    state = inspect(rig, "shmfill")["State"]
    assert ooms or state["OOMKilled"], (over.stdout, over.stderr, state)
    if "after" in seen:  # the shell lived to read its cgroup: within the limit
        assert int(seen["after"]) <= 128 * 2**20, seen
    # The container comes back (Docker's restart policy) and its user logs in again.
    assert ssh_until(port, "alice", "pw-shmfill") == "alice\n"
    assert containers_in(rig, namespace) == ["shmfill"]


async def test_requests_above_the_ceilings_are_422_and_an_omitted_one_gets_the_ceiling(
    make_client: Callable[..., Any], rig: Rig, namespace: str
) -> None:
    client = await make_client(max_memory_mb=1024, max_cpus=1.0)

    too_much = await create(client, **body("big", memory_mb=2048))
    too_fast = await create(client, **body("fast", cpus=1.5))
    capped = await created(client, **body("capped"))

    assert too_much[0] == 422, too_much
    code, fields, message = field_error(too_much[1])
    assert code == "invalid_input"
    assert "memory_mb" in fields
    assert "max_memory_mb" in message
    assert "1024" in message
    assert too_fast[0] == 422, too_fast
    code, _, message = field_error(too_fast[1])
    assert code == "invalid_input"
    assert "max_cpus" in message
    item = await get_container(client, "capped")
    assert (item["memory_mb"], item["cpus"]) == (1024, 1.0)
    seen = limits_seen(capped["ssh-port"], "alice", "pw-capped")
    assert (seen["memory_mb"], seen["cpus"]) == (1024, 1.0)
    assert containers_in(rig, namespace) == ["capped"]


async def test_shared_mounts_reach_every_container_read_only_unless_told(
    make_client: Callable[..., Any], tmp_path: Path
) -> None:
    datasets, scratch = tmp_path / "datasets", tmp_path / "scratch"
    datasets.mkdir()
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)
    (datasets / "mnist.txt").write_text("digits\n")
    client = await make_client(
        shared_mounts=(
            SharedMount(str(datasets), "/datasets"),
            SharedMount(str(scratch), "/scratch", read_only=False),
        )
    )

    port = (await created(client, **body("reader")))["ssh-port"]
    seen = ssh(
        port, "alice", "pw-reader",
        "cat /datasets/mnist.txt; touch /datasets/x 2>&1 | grep -c 'Read-only file system'; "
        "echo shared > /scratch/from-alice && echo written",
    )  # fmt: skip

    assert seen.stdout.splitlines() == ["digits", "1", "written"], seen.stderr
    assert (scratch / "from-alice").read_text() == "shared\n"
    assert sorted(p.name for p in datasets.iterdir()) == ["mnist.txt"]


# --- many at once, and a daemon killed ---


def test_twenty_concurrent_creates_with_ports_share_nothing_and_survive_a_killed_daemon(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    namespace: str,
    ssh_ports: tuple[int, int],
    service_ports: tuple[int, int],
    cleanup: None,
    shell_less_image: str,
) -> None:
    low, high = service_ports
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}",
        "DEEPDOCKD_SERVICE_PORT_RANGE": f"{low}-{high}",
    }
    daemon = rig_daemon(env=env)
    wanted = {f"w{i:02d}": body(f"w{i:02d}", user_name=f"u{i:02d}", ports=[8080, 9000]) for i in range(20)}  # fmt: skip
    absent = f"{REGISTRY_ADDR}/deepdockd-test/absent-{uuid.uuid4().hex[:8]}:v1"
    failing = [
        wanted["w00"],  # the name of another of the batch
        # An image without a shell: it fails when Docker starts it.
        body("nossh1", image=shell_less_image, ports=[8080, 9000]),
        body("nossh2", image=shell_less_image, ports=[8080]),
        body("absent", image=absent, ports=[8080]),  # no such image
    ]
    requests = [*wanted.values(), *failing]

    def post(fields: dict[str, Any]) -> tuple[int, Any]:
        return http_json(
            "POST", f"{daemon.base}/containers/create", json_body=fields, timeout_s=240
        )

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(post, requests))

    by_name: dict[str, list[tuple[int, Any]]] = {}
    for fields, answer in zip(requests, answers, strict=True):
        by_name.setdefault(fields["name"], []).append(answer)
    assert sorted(status for status, _ in by_name["w00"]) == [201, 409], by_name["w00"]
    assert [a["error"]["message"] for s, a in by_name["w00"] if s == 409] == [
        "the name 'w00' is taken; choose another"
    ]
    others = [answer for name in wanted if name != "w00" for answer in by_name[name]]
    assert [status for status, _ in others] == [201] * 19, others
    made = {name: next(a for s, a in by_name[name] if s == 201) for name in wanted}
    for name in ("nossh1", "nossh2"):
        [(status, error)] = by_name[name]
        assert (status, error["error"]["code"]) == (422, "ssh_unavailable"), error
    [(status, error)] = by_name["absent"]
    # A missing tag reads like a failure behind a redirect: the one answer of a failed pull
    # (docs/security.md#pulls-that-are-sent-elsewhere).
    assert (status, error["error"]["code"]) == (502, "pull_failed"), error

    service = [port for answer in made.values() for port in answer["ports"].values()]
    ssh_held = [answer["ssh-port"] for answer in made.values()]
    assert all(set(answer["ports"]) == {"8080", "9000"} for answer in made.values())
    assert len(set(service)) == 40
    assert all(low <= port <= high for port in service)
    assert len(set(ssh_held)) == 20
    assert not set(service) & set(ssh_held)
    assert containers_in(rig, namespace) == sorted(wanted)
    for name, answer in made.items():
        for container_port, host_port in answer["ports"].items():
            assert published(rig, name, int(container_port)) == {host_port}
    status, listed_volumes = http_json("GET", f"{daemon.base}/volumes")
    assert status == 200
    uids = {v["user_name"]: v["uid"] for v in listed_volumes["volumes"]}
    homes = {fields["user_name"] for fields in wanted.values()}
    assert homes <= set(uids)
    assert len({uids[user] for user in homes}) == 20  # a home and a uid each
    assert min(uids.values()) >= 10000

    # The failed creates gave their ports back: the last ten of the range fit one create.
    status, fill = post(body("fill", ports=list(range(8000, 8010))))
    assert status == 201, fill
    assert set(fill["ports"].values()) == set(range(low, high + 1)) - set(service)
    full = post(body("over", ports=[8080]))
    assert (full[0], full[1]["error"]["code"]) == (503, "service_ports_exhausted"), full
    assert containers_in(rig, namespace) == sorted([*wanted, "fill"])

    def ports_listed() -> dict[str, tuple[int, dict[str, int]]]:
        status, listing = http_json("GET", f"{daemon.base}/containers")
        assert status == 200
        return {c["name"]: (c["ssh-port"], c["ports"]) for c in listing["containers"]}

    before = ports_listed()
    daemon.daemon.process.kill()  # SIGKILL: no chance to save anything
    daemon.daemon.wait_for_exit()
    daemon = rig_daemon(env=env)

    assert ports_listed() == before
    assert before == {
        name: (answer["ssh-port"], answer["ports"])
        for name, answer in {**made, "fill": fill}.items()
    }
    after_restart = post(body("over", ports=[8080]))
    assert (after_restart[0], after_restart[1]["error"]["code"]) == (503, "service_ports_exhausted")


# --- logs ---


async def test_logs_show_the_bootstrap_to_the_owner_and_never_the_password(
    users: Users,
) -> None:
    password = f"secret-{uuid.uuid4().hex}"
    await users.created("alice", "talky", password=password)

    async def get(who: str, path: str) -> tuple[int, str, str]:
        response = await users.client.get(path, headers=users.auth(who))
        return response.status, response.headers.get("Content-Type", ""), await response.text()

    tail = await get("alice", "/containers/talky/logs?tail=2")
    whole = await get("alice", "/containers/talky/logs")  # after: a log only grows
    stamped = await get("alice", "/containers/talky/logs?timestamps=true")
    by_admin = await get("admin", "/containers/talky/logs?tail=50")
    by_bob = await users.call("bob", "GET", "/containers/talky/logs")
    absent = await users.call("bob", "GET", "/containers/no-such-box/logs")
    bad_tail = await users.call("alice", "GET", "/containers/talky/logs?tail=0")

    for status, content_type, text in (whole, tail, stamped, by_admin):
        assert status == 200, text
        assert content_type == "text/plain; charset=utf-8"
        assert password not in text
    lines = whole[2].splitlines()
    assert any(line.startswith(BOOTSTRAP) for line in lines), whole[2]
    assert 1 <= len(tail[2].splitlines()) <= 2
    assert all(line in lines for line in tail[2].splitlines())
    assert all(re.match(RFC3339 + " ", line) for line in stamped[2].splitlines()), stamped[2]
    assert any(line.startswith(BOOTSTRAP) for line in by_admin[2].splitlines())
    assert by_bob[0] == absent[0] == 404
    assert by_bob[1]["error"]["message"].replace("talky", "X") == absent[1]["error"][
        "message"
    ].replace("no-such-box", "X")
    assert bad_tail[0] == 422


async def test_logs_with_follow_stream_new_output(ws_client: Client, rig: Rig) -> None:
    await created(ws_client, **body("chatty"))
    status, _, text = await logs(ws_client, "chatty", tail="50")
    assert status == 200
    assert len(text.splitlines()) <= 50
    assert any(line.startswith(BOOTSTRAP) for line in text.splitlines()), text
    marker = f"live-{uuid.uuid4().hex[:8]}"

    async with ws_client.get("/containers/chatty/logs", params={"follow": "true"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        seen = await asyncio.wait_for(response.content.readany(), 30)
        assert seen, "the stream ended at once"
        # Root writes to the container's output (PID 1's stdout) after the stream began.
        rig.docker("exec", "chatty", "sh", "-c", f"echo {marker} > /proc/1/fd/1")
        deadline = time.monotonic() + 30
        while marker.encode() not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            chunk = await asyncio.wait_for(response.content.readany(), 30)
            assert chunk, "the stream ended before the new line"
            seen += chunk

    assert BOOTSTRAP.encode() in seen
    assert (await get_container(ws_client, "chatty"))["status"] == "running"

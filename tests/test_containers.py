"""Containers on the rig's real dockerd, with simulated GPUs and real SSH logins: create,
the whole life cycle, allocation of ports and GPUs, secrets, and every error."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deepdockd.app import create_app
from deepdockd.config import Config

from conftest import NVML_SIM_LIBRARY, Client, ClientFactory, sim_gpu
from daemon import Daemon
from rig import BUSYBOX_IMAGE, DEBIAN_NOSSH_IMAGE, DEBIAN_SSH_IMAGE, REGISTRY_ADDR, Rig

SimGpus = Callable[..., Path]
PORTS = (23000, 23999)  # the tests' own range, clear of the default
GPUS = [sim_gpu(i) for i in range(4)]
SEED_CREATED_KEYS = {"message", "id", "name", "ssh-port"}
SEED_LIST_KEYS = {"id", "name", "status", "image", "created", "ssh-port", "gpus"}


@pytest.fixture
def test_config(config: Config) -> Config:
    return Config(**{**config.__dict__, "ssh_port_range": PORTS, "ssh_ready_timeout": 180.0})


@pytest.fixture
def leftovers(rig: Rig, test_config: Config) -> Iterator[Callable[[], list[str]]]:
    """The names of the containers of this test's namespace that Docker still has; all of
    them are removed when the test ends."""

    def names() -> list[str]:
        output = rig.docker(
            "ps", "--all", "--filter", f"label=deepdockd.namespace={test_config.namespace}",
            "--format", "{{.Names}}",
        )  # fmt: skip
        return sorted(output.split())

    yield names
    if names():
        rig.docker("rm", "--force", *names())


@pytest.fixture
async def gpu_client(
    aiohttp_client: ClientFactory, test_config: Config, sim_gpus: SimGpus, leftovers: Any
) -> Client:
    sim_gpus(*GPUS)
    return await aiohttp_client(create_app(test_config))


def body(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": DEBIAN_SSH_IMAGE,
        "user_name": "alice",
        "password": "pw-" + name,
    } | extra


async def create(client: Client, **fields: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post("/containers/create", json=fields)
    return response.status, await response.json()


def ssh(port: int, user: str, password: str, command: str) -> subprocess.CompletedProcess[str]:
    """A real OpenSSH client, with the password typed by sshpass."""
    return subprocess.run(
        [
            "sshpass", "-e", "ssh", "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"{user}@127.0.0.1", command,
        ],
        env={"SSHPASS": password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def inspect(rig: Rig, name: str) -> dict[str, Any]:
    [data] = json.loads(rig.docker("inspect", name))
    return dict(data)


# --- create and SSH ---


async def test_create_gives_a_working_ssh_login_with_gpus_and_env(
    gpu_client: Client, rig: Rig
) -> None:
    env = {"FOO": "bar baz", "CUDA_HOME": "/usr/local/cuda"}

    status, created = await create(gpu_client, **body("login", gpu_ids=[1, 3], env=env))

    assert status == 201, created
    assert set(created) == SEED_CREATED_KEYS
    assert created["message"] == "container created"
    assert created["name"] == "login"
    assert created["id"] == inspect(rig, "login")["Id"][:12]
    port = created["ssh-port"]
    assert PORTS[0] <= port <= PORTS[1]
    uuids = f"{GPUS[1]['uuid']},{GPUS[3]['uuid']}"

    command = ssh(
        port,
        "alice",
        "pw-login",
        'id -un; echo "$NVIDIA_VISIBLE_DEVICES"; echo "$FOO|$CUDA_HOME"; echo "$PATH"',
    )
    assert command.returncode == 0, command.stderr
    assert command.stdout.splitlines() == [
        "alice", uuids, "bar baz|/usr/local/cuda", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]  # fmt: skip
    login_shell = ssh(port, "alice", "pw-login", "bash -lc 'echo \"$FOO|$NVIDIA_VISIBLE_DEVICES\"'")
    assert login_shell.stdout.strip() == f"bar baz|{uuids}"

    refused = ssh(port, "alice", "wrong-password", "id -un")
    assert refused.returncode == 5  # sshpass: the password was refused
    assert refused.stdout == ""


async def test_image_without_sshd_gets_one_installed(gpu_client: Client) -> None:
    status, created = await create(gpu_client, **body("nossh", image=DEBIAN_NOSSH_IMAGE))

    assert status == 201, created
    command = ssh(created["ssh-port"], "alice", "pw-nossh", "id -un; command -v sshd")
    assert command.stdout.split() == ["alice", "/usr/sbin/sshd"]


async def test_docker_gets_the_gpus_by_uuid_labels_and_restart_policy(
    gpu_client: Client, rig: Rig, test_config: Config
) -> None:
    await create(gpu_client, **body("pinned", gpu_ids=[2]))
    await create(gpu_client, **body("nogpu"))

    pinned, nogpu = inspect(rig, "pinned"), inspect(rig, "nogpu")

    assert pinned["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": [GPUS[2]["uuid"]],
            "Capabilities": [["gpu"]],
            "Options": None,
        }
    ]
    assert pinned["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert pinned["HostConfig"]["Init"] is True
    labels = pinned["Config"]["Labels"]
    assert labels["deepdockd.namespace"] == test_config.namespace
    assert labels["deepdockd.ssh-user"] == "alice"
    assert labels["deepdockd.gpu-indices"] == "2"
    assert labels["deepdockd.gpu-uuids"] == GPUS[2]["uuid"]
    assert labels["deepdockd.ssh-port"].isdigit()
    assert labels["deepdockd.owner"] == "anonymous"
    assert nogpu["HostConfig"]["DeviceRequests"] is None
    assert "NVIDIA_VISIBLE_DEVICES=void" in nogpu["Config"]["Env"]
    nogpu_port = int(nogpu["Config"]["Labels"]["deepdockd.ssh-port"])
    assert (
        ssh(nogpu_port, "alice", "pw-nogpu", "echo $NVIDIA_VISIBLE_DEVICES").stdout.strip()
        == "void"
    )


async def test_the_password_is_nowhere_to_be_read(
    gpu_client: Client, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = f"secret-{uuid.uuid4().hex}"

    status, created = await create(gpu_client, **body("secret", password=password))
    listed = await (await gpu_client.get("/containers")).text()
    one = await (await gpu_client.get("/containers/secret")).text()

    assert status == 201
    assert ssh(created["ssh-port"], "alice", password, "id -un").stdout.strip() == "alice"
    assert password not in json.dumps(created) + listed + one
    assert password not in rig.docker("inspect", "secret")
    assert password not in rig.docker("logs", "secret")
    assert password not in caplog.text
    with pytest.raises(Exception, match="No such file"):
        rig.docker("exec", "secret", "cat", "/.deepdockd/secret")


async def test_image_that_cannot_have_ssh_fails_and_leaves_nothing(
    gpu_client: Client, leftovers: Callable[[], list[str]]
) -> None:
    status, error = await create(gpu_client, **body("nope", image=BUSYBOX_IMAGE, gpu_ids=[0]))

    assert status == 422
    assert error["error"]["code"] == "ssh_unavailable"
    assert error["error"]["message"] == (
        "the container could not provide SSH: the image has no sshd and no package manager to "
        "install one (looked for sshd, apt-get, dnf, yum, apk); container removed"
    )
    assert leftovers() == []
    # Its port and GPU are free again.
    status, created = await create(gpu_client, **body("next", gpu_ids=[0]))
    assert status == 201
    assert created["ssh-port"] == PORTS[0]


async def test_an_image_missing_locally_is_pulled_first(gpu_client: Client, rig: Rig) -> None:
    reference = f"{REGISTRY_ADDR}/deepdockd-test/ssh-{uuid.uuid4().hex[:8]}:v1"
    rig.docker("tag", DEBIAN_SSH_IMAGE, reference)
    rig.docker("push", reference)
    rig.docker("rmi", reference)
    try:
        status, created = await create(gpu_client, **body("pulled", image=reference))
        assert status == 201, created
        assert rig.image_exists(reference)
    finally:
        rig.docker("rm", "--force", "pulled")
        rig.docker("rmi", "--force", reference)


# --- life cycle ---


async def test_full_life_cycle_shows_in_the_list(gpu_client: Client, rig: Rig) -> None:
    async def listed() -> dict[str, Any]:
        response = await gpu_client.get("/containers")
        assert response.status == 200
        [item] = (await response.json())["containers"]
        assert set(item) >= SEED_LIST_KEYS
        return dict(item)

    async def act(action: str, expected: str) -> None:
        response = await gpu_client.post(f"/containers/cycle/{action}")
        assert response.status == 200
        assert await response.json() == {"message": f"container 'cycle' {expected}"}

    _, created = await create(gpu_client, **body("cycle", gpu_ids=[0, 2]))
    port = created["ssh-port"]
    item = await listed()
    assert item == {
        "id": created["id"], "name": "cycle", "status": "running", "image": [DEBIAN_SSH_IMAGE],
        "created": inspect(rig, "cycle")["Config"]["Labels"]["deepdockd.created"],
        "ssh-port": port, "gpus": ["0", "2"], "gpu_uuids": [GPUS[0]["uuid"], GPUS[2]["uuid"]],
        "owner": "anonymous", "ssh_user": "alice",
    }  # fmt: skip
    assert item["created"].endswith("Z")
    assert len(item["created"].split(".")[1]) == 10  # nanoseconds, as Docker writes them

    await act("stop", "stopped")
    assert ((await listed())["status"], (await listed())["ssh-port"]) == ("exited", None)
    await act("start", "started")
    assert ((await listed())["status"], (await listed())["ssh-port"]) == ("running", port)
    await act("restart", "restarted")
    assert (await listed())["status"] == "running"
    assert ssh(port, "alice", "pw-cycle", "id -un").stdout.strip() == "alice"  # login survives
    one = await gpu_client.get("/containers/cycle")
    assert await one.json() == await listed()

    refused = await gpu_client.delete("/containers/cycle")
    assert refused.status == 409
    assert (
        "stop it first, or ask again with ?force=true" in (await refused.json())["error"]["message"]
    )
    removed = await gpu_client.delete("/containers/cycle?force=true")
    assert await removed.json() == {"message": "container 'cycle' removed"}
    assert (await (await gpu_client.get("/containers")).json()) == {"containers": []}
    assert (await gpu_client.get("/containers/cycle")).status == 404


async def test_delete_of_a_stopped_container_needs_no_force(gpu_client: Client) -> None:
    await create(gpu_client, **body("stopped"))
    await gpu_client.post("/containers/stopped/stop")

    response = await gpu_client.delete("/containers/stopped")

    assert response.status == 200


async def test_containers_deepdockd_did_not_make_are_invisible(
    gpu_client: Client, rig: Rig
) -> None:
    foreign = f"foreign-{uuid.uuid4().hex[:8]}"
    rig.docker("run", "--detach", "--name", foreign, BUSYBOX_IMAGE, "sleep", "300")
    try:
        listed = await (await gpu_client.get("/containers")).json()
        answers = [
            await gpu_client.get(f"/containers/{foreign}"),
            await gpu_client.post(f"/containers/{foreign}/stop"),
            await gpu_client.post(f"/containers/{foreign}/start"),
            await gpu_client.post(f"/containers/{foreign}/restart"),
            await gpu_client.delete(f"/containers/{foreign}?force=true"),
        ]
        taken = await create(gpu_client, **body(foreign))
        assert inspect(rig, foreign)["State"]["Running"] is True  # untouched
    finally:
        rig.docker("rm", "--force", foreign)

    assert foreign not in json.dumps(listed)
    for response in answers:
        assert response.status == 404
        assert (await response.json())["error"]["message"] == f"no container {foreign!r}"
    assert taken[0] == 409


async def test_a_taken_name_is_409(gpu_client: Client, leftovers: Callable[[], list[str]]) -> None:
    await create(gpu_client, **body("twice"))

    status, error = await create(gpu_client, **body("twice", gpu_ids=[1]))

    assert status == 409
    assert error["error"]["message"] == "the name 'twice' is taken; choose another"
    assert leftovers() == ["twice"]
    gpus = await (await gpu_client.get("/gpus")).json()
    assert gpus["gpus"][1]["containers"] == []


# --- allocation ---


async def test_a_gpu_is_held_by_one_running_container(gpu_client: Client) -> None:
    assert (await create(gpu_client, **body("first", gpu_ids=[0])))[0] == 201

    status, error = await create(gpu_client, **body("second", gpu_ids=[1, 0]))
    assert status == 409
    assert error["error"]["message"] == "GPU 0 is held by running container 'first'"
    assert error["error"]["details"] == {"gpu": 0, "holder": "first"}

    await gpu_client.post("/containers/first/stop")  # a stopped container holds nothing
    assert (await create(gpu_client, **body("second", gpu_ids=[0])))[0] == 201
    restarted = await gpu_client.post("/containers/first/start")
    assert restarted.status == 409
    assert (await restarted.json())["error"][
        "message"
    ] == "GPU 0 is held by running container 'second'"
    assert (await gpu_client.post("/containers/first/restart")).status == 409


@pytest.mark.parametrize(
    ("gpu_ids", "message"),
    [
        (
            [7],
            "gpu_ids: 7 is not a GPU of this host (its GPUs: 0: NVIDIA H100 80GB HBM3; 1: NVIDIA H100 80GB HBM3; 2: NVIDIA H100 80GB HBM3; 3: NVIDIA H100 80GB HBM3)",
        ),
        ([0, 0], "gpu_ids: lists GPU 0 more than once"),
        (["0"], "gpu_ids.0: Not a valid integer."),
        ([-1], "gpu_ids.0: Must be greater than or equal to 0."),
        ("0", "gpu_ids: Not a valid list."),
    ],
)
async def test_bad_gpu_ids_are_422(
    gpu_client: Client, leftovers: Callable[[], list[str]], gpu_ids: object, message: str
) -> None:
    status, error = await create(gpu_client, **body("badgpu", gpu_ids=gpu_ids))

    assert status == 422
    assert error["error"]["message"] == message
    assert leftovers() == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "-bad"}, "name: must be 2-128 letters, digits"),
        ({"name": "a b"}, "name: must be 2-128 letters, digits"),
        ({"user_name": "root"}, "user_name: 'root' is a system account"),
        ({"user_name": "Alice"}, "user_name: must be a Linux user name"),
        ({"password": ""}, "password: Length must be between 1 and 1024."),
        ({"password": "a\nb"}, "password: must not contain a line break"),
        ({"env": {"1X": "v"}}, "env.1X.key: must be a variable name"),
        (
            {"env": {"NVIDIA_VISIBLE_DEVICES": "all"}},
            "env: NVIDIA_VISIBLE_DEVICES is set by deepdockd from gpu_ids",
        ),
        ({"env": {"X": 1}}, "env.X.value: Not a valid string."),
        ({"privileged": True}, "privileged: Unknown field."),
        (
            {"image": "Not An Image"},
            "image: 'Not An Image' is not an image reference Docker accepts",
        ),
    ],
)
async def test_bad_bodies_are_422_naming_the_field(
    gpu_client: Client, leftovers: Callable[[], list[str]], fields: dict[str, Any], message: str
) -> None:
    status, error = await create(gpu_client, **(body("badbody") | fields))

    assert status == 422
    assert error["error"]["message"].startswith(message)
    assert leftovers() == []


async def test_twenty_concurrent_creates_share_nothing(
    gpu_client: Client, rig: Rig, leftovers: Callable[[], list[str]]
) -> None:
    # Ten ask for one of the four GPUs (so six must lose), ten ask for none.
    wanted = {f"c{i:02d}": ([i % 4] if i < 10 else []) for i in range(20)}

    answers = await asyncio.gather(
        *(create(gpu_client, **body(name, gpu_ids=gpus)) for name, gpus in wanted.items())
    )

    results = dict(zip(wanted, answers, strict=True))
    winners = {name for name, (status, _) in results.items() if status == 201}
    losers = {name: error for name, (status, error) in results.items() if status != 201}
    assert all(results[name][0] == 201 for name in wanted if not wanted[name])
    assert len(winners) == 14
    assert all(results[name][0] == 409 for name in losers)
    assert all(
        e["error"]["code"] == "gpu_busy" and "is held by running container" in e["error"]["message"]
        for e in losers.values()
    )
    ports = [results[name][1]["ssh-port"] for name in winners]
    assert len(set(ports)) == len(ports)
    assert leftovers() == sorted(winners)
    held = [
        inspect(rig, name)["Config"]["Labels"]["deepdockd.gpu-indices"]
        for name in winners
        if wanted[name]
    ]
    assert sorted(held) == ["0", "1", "2", "3"]


async def test_the_lowest_free_port_skips_ports_bound_on_the_host(
    aiohttp_client: ClientFactory, test_config: Config, leftovers: Any
) -> None:
    low = 23900
    config = Config(**{**test_config.__dict__, "ssh_port_range": (low, low + 2)})
    client = await aiohttp_client(create_app(config))
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", low))
        squatter.listen()

        first = await create(client, **body("port1"))
        second = await create(client, **body("port2"))
        third = await create(client, **body("port3"))

    assert [first[1]["ssh-port"], second[1]["ssh-port"]] == [low + 1, low + 2]
    assert third[0] == 503
    assert third[1]["error"]["code"] == "ssh_ports_exhausted"
    assert third[1]["error"]["message"].startswith(
        f"no free SSH port in {low}-{low + 2}: all 3 are held"
    )


def test_a_killed_daemon_comes_back_without_double_booking(
    rig: Rig,
    tmp_path: Path,
    free_port: int,
    test_config: Config,
    leftovers: Callable[[], list[str]],
) -> None:
    demo = Path(__file__).parent / "nvml-sim" / "demo-4gpu.json"
    env = {
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent), "NVML_SIM_CONFIG": str(demo),
        "DEEPDOCKD_SSH_PORT_RANGE": f"{PORTS[0]}-{PORTS[1]}", "DEEPDOCKD_NAMESPACE": test_config.namespace,
    }  # fmt: skip
    args = (
        "--port",
        str(free_port),
        "--docker-host",
        rig.docker_host,
        "--state-dir",
        str(tmp_path / "s"),
    )
    base = f"http://127.0.0.1:{free_port}"

    def post(path: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            base + path, data=json.dumps(fields).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    first = Daemon(*args, env=env, log=tmp_path / "first.log")
    first.wait_until_serving(base + "/healthz")
    status, held = post("/containers/create", body("kept", gpu_ids=[2]))
    first.process.kill()  # SIGKILL: no chance to save anything
    first.wait_for_exit()
    assert status == 201

    second = Daemon(*args, env=env, log=tmp_path / "second.log")
    try:
        second.wait_until_serving(base + "/healthz")
        busy = post("/containers/create", body("again", gpu_ids=[2]))
        other = post("/containers/create", body("other"))
    finally:
        second.stop()

    assert busy[0] == 409
    assert busy[1]["error"]["message"] == "GPU 2 is held by running container 'kept'"
    assert other[0] == 201
    assert other[1]["ssh-port"] != held["ssh-port"]
    assert leftovers() == ["kept", "other"]

"""Containers on the rig's real dockerd, with simulated GPUs and real SSH logins: create,
the whole life cycle, allocation of ports and GPUs, secrets, and every error."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.containers.phases import CREATE_PHASES
from deepdockd.containers.resources import default_memory_mb

from tests.support.api import Client, ClientFactory, body, create, created
from tests.support.daemon import Daemon, http_json
from tests.support.docker_state import inspect
from tests.support.gpus import NVML_SIM_LIBRARY, sim_gpu
from tests.support.rig import (
    BUSYBOX_IMAGE,
    DEBIAN_NOSSH_IMAGE,
    DEBIAN_SSH_IMAGE,
    REGISTRY_ADDR,
    Rig,
    RigError,
)
from tests.support.ssh import ssh

SimGpus = Callable[..., Path]
Gpus = list[dict[str, Any]]
Leftovers = Callable[..., list[str]]
SEED_CREATED_KEYS = {"message", "id", "name", "ssh-port"}
# The seed's, the extra ports published, the end of its lease (fair share), and which SSH
# server the container runs and why.
CREATED_KEYS = SEED_CREATED_KEYS | {"ports", "expires_at", "ssh_server"}
SEED_LIST_KEYS = {"id", "name", "status", "image", "created", "ssh-port", "gpus"}
# The cgroup figures the stats sampler fills in each second (tests/test_container_stats.py).
SAMPLED_KEYS = ("cpu_percent", "memory_used_mb", "memory_limit_mb", "pids")


@pytest.fixture
def test_config(config: Config, ssh_ports: tuple[int, int]) -> Config:
    """The test's namespace and SSH ports of its own (``ssh_ports``), so that what it expects
    of allocation ("the lowest port") holds whatever containers other tests left."""
    return Config(**{**config.__dict__, "ssh_port_range": ssh_ports, "ssh_ready_timeout": 180.0})


@pytest.fixture
def other_namespace(test_config: Config) -> str:
    """A second daemon's namespace on the same Docker, for the tests of two daemons."""
    return f"{test_config.namespace}-other"


@pytest.fixture
def gpus(gpu_stem: str) -> Gpus:
    """Four simulated GPUs whose UUIDs are this test's alone."""
    return [sim_gpu(i, stem=gpu_stem) for i in range(4)]


@pytest.fixture
def leftovers(rig: Rig, test_config: Config, other_namespace: str) -> Iterator[Leftovers]:
    """The names of the containers of this test's namespace (or another) that Docker still
    has; all of them, in both namespaces, are removed when the test ends."""

    def names(namespace: str = test_config.namespace) -> list[str]:
        output = rig.docker(
            "ps", "--all", "--filter", f"label=deepdockd.namespace={namespace}",
            "--format", "{{.Names}}",
        )  # fmt: skip
        return sorted(output.split())

    yield names
    left = names() + names(other_namespace)
    if left:
        rig.docker("rm", "--force", *left)


@pytest.fixture
async def gpu_client(
    aiohttp_client: ClientFactory,
    test_config: Config,
    sim_gpus: SimGpus,
    gpus: Gpus,
    leftovers: Leftovers,
) -> Client:
    sim_gpus(*gpus)
    return await aiohttp_client(create_app(test_config))


async def call(client: Client, method: str, path: str) -> tuple[int, dict[str, Any]]:
    response = await client.request(method, path)
    return response.status, await response.json()


def fingerprint(public_key: str) -> str:
    """The key's fingerprint as OpenSSH's ssh-keygen prints it ("SHA256:...")."""
    listed = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=public_key, capture_output=True, text=True, check=True
    )
    return listed.stdout.split()[1]


def inspect_port(rig: Rig, name: str) -> int:
    """The host port the running container's SSH is published on."""
    [port] = published_ssh_ports(inspect(rig, name))
    return port


def published_ssh_ports(container: dict[str, Any]) -> set[int]:
    """The host ports Docker publishes the container's port 22 on."""
    bindings = container["NetworkSettings"]["Ports"].get("22/tcp") or []
    return {int(binding["HostPort"]) for binding in bindings}


def states(rig: Rig, *names: str) -> dict[str, str]:
    """Each container's state as Docker has it ("running", "exited", ...)."""
    return {name: inspect(rig, name)["State"]["Status"] for name in names}


def port_is_bindable(port: int) -> bool:
    """Whether a listener could take the port on the host now (nothing else holds it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


# --- create and SSH ---


async def test_create_gives_a_working_ssh_login_with_gpus_and_env(
    gpu_client: Client, rig: Rig, gpus: Gpus, ssh_ports: tuple[int, int]
) -> None:
    env = {"FOO": "bar baz", "CUDA_HOME": "/usr/local/cuda"}

    status, answer = await create(gpu_client, **body("login", gpu_ids=[1, 3], env=env))

    assert status == 201, answer
    assert set(answer) == CREATED_KEYS
    assert answer["ports"] == {}  # none asked for
    assert answer["ssh_server"] == "the image's sshd, OpenSSH_9.2"  # Debian 12's, 8.7 or newer
    assert answer["message"] == "container created"
    assert answer["name"] == "login"
    assert answer["id"] == inspect(rig, "login")["Id"][:12]
    port = answer["ssh-port"]
    assert port == ssh_ports[0]  # the lowest of the range: this test's range is its own
    assert inspect(rig, "login")["Config"]["Labels"]["deepdockd.ssh-port"] == str(port)
    uuids = f"{gpus[1]['uuid']},{gpus[3]['uuid']}"

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


async def test_image_without_sshd_runs_the_bundled_server_and_installs_nothing(
    gpu_client: Client, rig: Rig, test_config: Config
) -> None:
    answer = await created(gpu_client, **body("nossh", image=DEBIAN_NOSSH_IMAGE))

    command = ssh(answer["ssh-port"], "alice", "pw-nossh", "id -un; command -v sshd || echo none")
    assert command.stdout.split() == ["alice", "none"]
    assert ssh_greeting(answer["ssh-port"]).startswith("SSH-2.0-dropbear_")
    # The server is the host's one copy, mounted read-only, not copied into the container.
    [mount] = [m for m in inspect(rig, "nossh")["Mounts"] if m["Destination"] == "/.deepdockd-ssh"]
    assert (mount["Type"], mount["RW"]) == ("bind", False)
    assert mount["Source"].startswith(f"{test_config.state_dir}/ssh-server/")


async def test_a_create_tells_where_its_time_went(
    gpu_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer's Server-Timing header names each phase of the create in order, with its
    milliseconds (docs/api.md), and the debug log says the same: a slow create shows its
    slow step without a profiler."""
    caplog.set_level(logging.DEBUG, logger="deepdockd.containers.service")
    response = await gpu_client.post("/containers/create", json=body("timed"))
    assert response.status == 201, await response.text()
    phases = dict(entry.split(";dur=") for entry in response.headers["Server-Timing"].split(", "))
    assert list(phases) == list(CREATE_PHASES)
    assert all(float(ms) >= 0 for ms in phases.values())
    # Docker's create and start, and the wait for sshd, take time on any machine.
    assert all(float(phases[p]) > 0 for p in ("docker_create", "start", "sshd_ready"))
    [logged] = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("create timed:")
    ]
    assert re.fullmatch(
        r"create timed: \d+ ms \(resolve \d+, allocate \d+, .*, answer \d+\)", logged
    )


def ssh_greeting(port: int) -> str:
    """The SSH server's first line on the port."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        return connection.makefile("rb").readline().decode().strip()


async def test_docker_gets_the_gpus_by_uuid_labels_and_restart_policy(
    gpu_client: Client, rig: Rig, test_config: Config, gpus: Gpus
) -> None:
    pinned_answer = await created(gpu_client, **body("pinned", gpu_ids=[2]))
    nogpu_answer = await created(gpu_client, **body("nogpu"))

    pinned, nogpu = inspect(rig, "pinned"), inspect(rig, "nogpu")

    assert pinned["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": [gpus[2]["uuid"]],
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
    assert labels["deepdockd.gpu-uuids"] == gpus[2]["uuid"]
    # The port answered, the port labelled and the port Docker publishes are one.
    assert labels["deepdockd.ssh-port"] == str(pinned_answer["ssh-port"])
    assert published_ssh_ports(pinned) == {pinned_answer["ssh-port"]}
    assert labels["deepdockd.owner"] == "anonymous"
    assert nogpu["HostConfig"]["DeviceRequests"] is None
    assert "NVIDIA_VISIBLE_DEVICES=void" in nogpu["Config"]["Env"]
    assert nogpu["Config"]["Labels"]["deepdockd.ssh-port"] == str(nogpu_answer["ssh-port"])
    assert published_ssh_ports(nogpu) == {nogpu_answer["ssh-port"]}
    seen = ssh(nogpu_answer["ssh-port"], "alice", "pw-nogpu", "echo $NVIDIA_VISIBLE_DEVICES")
    assert seen.stdout == "void\n", seen.stderr


async def test_the_password_is_nowhere_to_be_read(
    gpu_client: Client, rig: Rig, test_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = f"secret-{uuid.uuid4().hex}"

    status, answer = await create(gpu_client, **body("secret", password=password))
    listed = await (await gpu_client.get("/containers")).text()
    one = await (await gpu_client.get("/containers/secret")).text()

    assert status == 201
    assert ssh(answer["ssh-port"], "alice", password, "id -un").stdout.strip() == "alice"
    assert password not in json.dumps(answer) + listed + one
    assert password not in rig.docker("inspect", "secret")
    assert password not in rig.docker("logs", "secret")
    assert password not in caplog.text
    # Its hash is used once: gone from the container and from the host's directory that
    # gives the bootstrap its files (mounted read-only at /.deepdockd-in) once SSH answers.
    for path in ("/.deepdockd/secret", "/.deepdockd-in/secret"):
        with pytest.raises(RigError, match="No such file"):
            rig.docker("exec", "secret", "cat", path)
    token = inspect(rig, "secret")["Config"]["Labels"]["deepdockd.bootstrap"]
    given = test_config.state_dir / "bootstrap" / test_config.namespace / token
    assert sorted(p.name for p in given.iterdir()) == [
        "bootstrap.sh", "env", "image-env", "settings", "ssh_host_ed25519_key",
    ]  # fmt: skip

    # The container's directory goes with it.
    assert (await gpu_client.delete("/containers/secret?force=true")).status == 200
    assert not given.exists()


async def test_image_that_cannot_have_ssh_fails_and_leaves_nothing(
    aiohttp_client: ClientFactory,
    test_config: Config,
    gpus: Gpus,
    leftovers: Leftovers,
    ssh_ports: tuple[int, int],
) -> None:
    """With ssh_server = image, an image without OpenSSH's sshd cannot give a login."""
    image_only = Config(**{**test_config.__dict__, "ssh_server": "image"})
    client = await aiohttp_client(create_app(image_only))
    status, error = await create(client, **body("nope", image=BUSYBOX_IMAGE, gpu_ids=[0]))

    assert status == 422
    assert error["error"]["code"] == "ssh_unavailable"
    assert error["error"]["message"] == (
        "the container could not provide SSH: the image has no OpenSSH sshd, and ssh_server is"
        " image (deepdockd's bundled SSH server is off); use an image with openssh-server, or"
        " set ssh_server to auto; container removed"
    )
    assert leftovers() == []
    # Nor its bootstrap's directory on the host.
    given = test_config.state_dir / "bootstrap" / test_config.namespace
    assert list(given.iterdir()) == []
    # Its port and GPU are free again.
    answer = await created(client, **body("next", gpu_ids=[0]))
    assert answer["ssh-port"] == ssh_ports[0]


async def test_a_bootstrap_directory_that_no_container_names_goes_at_the_start(
    aiohttp_client: ClientFactory, test_config: Config, rig: Rig, leftovers: Leftovers
) -> None:
    """A container removed behind deepdockd's back leaves its bootstrap's directory on the
    host; the next start sweeps it, once old enough that no create in flight is making it,
    and keeps every directory a container still names."""
    client = await aiohttp_client(create_app(test_config))
    await created(client, **body("kept"))
    await created(client, **body("dropped"))
    root = test_config.state_dir / "bootstrap" / test_config.namespace
    kept, dropped = (
        root / inspect(rig, name)["Config"]["Labels"]["deepdockd.bootstrap"]
        for name in ("kept", "dropped")
    )
    rig.docker("rm", "--force", "dropped")  # behind deepdockd's back
    young = root / "0123456789abcdef0123456789abcdef"
    young.mkdir()
    an_hour_ago = time.time() - 3600
    for path in (kept, dropped):
        os.utime(path, (an_hour_ago, an_hour_ago))

    await aiohttp_client(create_app(test_config))  # the next start

    assert sorted(p.name for p in root.iterdir()) == sorted([kept.name, young.name])
    login = ssh(inspect_port(rig, "kept"), "alice", "pw-kept", "id -un")
    assert login.stdout == "alice\n", login.stderr


async def test_sshd_that_does_not_answer_in_time_is_504_and_leaves_nothing(
    aiohttp_client: ClientFactory,
    test_config: Config,
    leftovers: Leftovers,
    ssh_ports: tuple[int, int],
    silent_sshd_image: str,
) -> None:
    # An sshd that never answers.
    impatient = Config(**{**test_config.__dict__, "ssh_ready_timeout": 0.2})
    client = await aiohttp_client(create_app(impatient))

    status, error = await create(client, **body("slow", image=silent_sshd_image))

    assert status == 504
    assert error["error"] == {
        "code": "ssh_timeout",
        "message": (
            f"the SSH server did not answer on port {ssh_ports[0]} within 0.2 s (ssh_ready_timeout); "
            "container removed"
        ),
        "details": {},
    }
    assert leftovers() == []
    assert port_is_bindable(ssh_ports[0])  # Docker's proxy let go of it
    patient = await aiohttp_client(create_app(test_config))
    assert (await created(patient, **body("patient")))["ssh-port"] == ssh_ports[0]


async def test_a_start_whose_sshd_does_not_answer_in_time_is_504_and_keeps_the_container(
    aiohttp_client: ClientFactory, test_config: Config, rig: Rig, leftovers: Leftovers
) -> None:
    patient = await aiohttp_client(create_app(test_config))
    port = (await created(patient, **body("late")))["ssh-port"]
    assert (await patient.post("/containers/late/stop")).status == 200
    impatient = await aiohttp_client(
        create_app(Config(**{**test_config.__dict__, "ssh_ready_timeout": 0.001}))
    )

    response = await impatient.post("/containers/late/start")

    assert response.status == 504
    assert (await response.json())["error"] == {
        "code": "ssh_timeout",
        "message": f"the SSH server did not answer on port {port} within 0.001 s (ssh_ready_timeout)",
        "details": {},
    }
    # Left running, not removed: its logs say why, and a later look finds its sshd.
    assert leftovers() == ["late"]
    assert inspect(rig, "late")["State"]["Running"] is True


async def test_an_image_missing_locally_is_pulled_first(gpu_client: Client, rig: Rig) -> None:
    reference = f"{REGISTRY_ADDR}/deepdockd-test/ssh-{uuid.uuid4().hex[:8]}:v1"
    rig.docker("tag", DEBIAN_SSH_IMAGE, reference)
    rig.docker("push", reference)
    rig.docker("rmi", reference)
    try:
        status, answer = await create(gpu_client, **body("pulled", image=reference))
        assert status == 201, answer
        assert rig.image_exists(reference)
    finally:
        rig.docker("rm", "--force", "pulled")
        rig.docker("rmi", "--force", reference)


# --- life cycle ---


async def test_full_life_cycle_shows_in_the_list(
    gpu_client: Client, rig: Rig, gpus: Gpus, namespace: str
) -> None:
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

    answer = await created(gpu_client, **body("cycle", gpu_ids=[0, 2]))
    port = answer["ssh-port"]
    item = await listed()
    docker_labels = inspect(rig, "cycle")["Config"]["Labels"]
    host_key = docker_labels["deepdockd.ssh-host-keys"]
    # Disk use is measured on a slow cadence (tests/test_disk.py): unknown until then.
    disk_used_mb = item.pop("disk_used_mb")
    assert disk_used_mb is None or disk_used_mb >= 0
    # Its cgroup's figures, sampled each second (tests/test_container_stats.py): null until
    # its first sample, then its own.
    stats = {k: item.pop(k) for k in SAMPLED_KEYS}
    assert stats["memory_limit_mb"] in (None, float(default_memory_mb())), stats
    assert all(v is None or v >= 0 for v in stats.values()), stats
    assert item == {
        "id": answer["id"], "name": "cycle", "status": "running", "image": [DEBIAN_SSH_IMAGE],
        "image_id": inspect(rig, "cycle")["Image"],
        "created": docker_labels["deepdockd.created"],
        "ssh-port": port, "gpus": ["0", "2"], "gpu_uuids": [gpus[0]["uuid"], gpus[2]["uuid"]],
        "owner": "anonymous", "ssh_user": "alice",
        "ssh_host_keys": [
            {"type": "ssh-ed25519", "public_key": host_key, "fingerprint": fingerprint(host_key)}
        ],
        # The workspace defaults: a quarter of the RAM, /dev/shm half of it inside it, no CPU
        # limit, a home volume.
        "ports": {}, "memory_mb": default_memory_mb(), "cpus": None,
        "shm_size_mb": default_memory_mb() // 2,
        "home_volume": f"{namespace}-home-anonymous.alice",
        # NVML lists no process of it on its GPUs: none used (not unknown).
        "gpu_memory_used_mib": 0.0, "gpu_utilization": 0.0,
        # Fair share: no lease (none by default), never stopped by the reaper, reclaimable.
        "expires_at": None, "stopped_reason": None, "idle_reclaim": True,
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

    refused = await call(gpu_client, "DELETE", "/containers/cycle")
    assert refused == (
        409,
        {
            "error": {
                "code": "conflict",
                "message": "container 'cycle' is running; stop it first, or ask again with ?force=true",
                "details": {"name": "cycle", "state": "running"},
            }
        },
    )
    assert states(rig, "cycle") == {"cycle": "running"}
    removed = await gpu_client.delete("/containers/cycle?force=true")
    assert await removed.json() == {"message": "container 'cycle' removed"}
    assert (await (await gpu_client.get("/containers")).json()) == {"containers": []}
    assert (await gpu_client.get("/containers/cycle")).status == 404


async def test_delete_of_a_stopped_container_needs_no_force(
    gpu_client: Client, leftovers: Leftovers
) -> None:
    await created(gpu_client, **body("stopped"))
    assert await call(gpu_client, "POST", "/containers/stopped/stop") == (
        200,
        {"message": "container 'stopped' stopped"},
    )

    answer = await call(gpu_client, "DELETE", "/containers/stopped")

    assert answer == (200, {"message": "container 'stopped' removed"})
    assert leftovers() == []


async def test_start_of_a_running_container_changes_nothing(gpu_client: Client, rig: Rig) -> None:
    answer = await created(gpu_client, **body("awake"))
    before = inspect(rig, "awake")["State"]

    started = await call(gpu_client, "POST", "/containers/awake/start")

    assert started == (200, {"message": "container 'awake' started"})
    after = inspect(rig, "awake")["State"]
    assert (after["Status"], after["StartedAt"], after["Pid"]) == (
        "running", before["StartedAt"], before["Pid"],
    )  # fmt: skip
    status, item = await call(gpu_client, "GET", "/containers/awake")
    assert (status, item["status"], item["ssh-port"]) == (200, "running", answer["ssh-port"])
    assert ssh(answer["ssh-port"], "alice", "pw-awake", "id -un").stdout.strip() == "alice"


async def test_a_port_taken_on_the_host_is_409_at_start_until_it_is_free(
    gpu_client: Client, rig: Rig
) -> None:
    port = (await created(gpu_client, **body("squatted")))["ssh-port"]
    assert (await call(gpu_client, "POST", "/containers/squatted/stop"))[0] == 200

    with socket.socket() as squatter:
        # The logins left connections in TIME_WAIT on the port; a listener may bind beside
        # them (as Docker's proxy does), not beside another listener.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("0.0.0.0", port))
        squatter.listen()
        status, error = await call(gpu_client, "POST", "/containers/squatted/start")
        state_while_taken = states(rig, "squatted")

    assert status == 409
    assert error["error"]["code"] == "conflict"
    assert error["error"]["details"] == {"ssh_port": port}
    assert re.fullmatch(
        rf"SSH port {port} is taken on the host: .*0\.0\.0\.0:{port}.*address already in use.*",
        error["error"]["message"],
    ), error
    assert state_while_taken == {"squatted": "exited"}  # Docker's start failed; it is not up
    # The port free again, the same start works, on the same port.
    assert await call(gpu_client, "POST", "/containers/squatted/start") == (
        200,
        {"message": "container 'squatted' started"},
    )
    assert states(rig, "squatted") == {"squatted": "running"}
    assert ssh(port, "alice", "pw-squatted", "id -un").stdout.strip() == "alice"


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
    assert taken[1]["error"]["message"] == f"the name {foreign!r} is taken; choose another"


async def test_a_taken_name_is_409(gpu_client: Client, leftovers: Leftovers) -> None:
    await created(gpu_client, **body("twice"))

    status, error = await create(gpu_client, **body("twice", gpu_ids=[1]))

    assert status == 409
    assert error["error"]["message"] == "the name 'twice' is taken; choose another"
    assert leftovers() == ["twice"]
    gpus = await (await gpu_client.get("/gpus")).json()
    assert gpus["gpus"][1]["containers"] == []


# --- allocation ---


async def test_a_gpu_is_held_by_one_running_container(gpu_client: Client, rig: Rig) -> None:
    await created(gpu_client, **body("first", gpu_ids=[0]))

    status, error = await create(gpu_client, **body("second", gpu_ids=[1, 0]))
    assert status == 409
    assert error["error"] == {
        "code": "gpu_busy",
        "message": "GPU 0 is held by running container 'first'",
        "details": {"gpu": 0, "holder": "first"},
    }

    stopped = await call(gpu_client, "POST", "/containers/first/stop")
    assert stopped == (200, {"message": "container 'first' stopped"})  # and holds nothing
    await created(gpu_client, **body("second", gpu_ids=[0]))
    second_started = inspect(rig, "second")["State"]["StartedAt"]
    for action in ("start", "restart"):
        status, error = await call(gpu_client, "POST", f"/containers/first/{action}")
        assert status == 409, action
        assert error["error"] == {
            "code": "gpu_busy",
            "message": "GPU 0 is held by running container 'second'",
            "details": {"gpu": 0, "holder": "second"},
        }
        assert states(rig, "first", "second") == {"first": "exited", "second": "running"}
    assert inspect(rig, "second")["State"]["StartedAt"] == second_started


async def test_gpu_sharing_lets_two_running_containers_hold_one_gpu(
    aiohttp_client: ClientFactory,
    test_config: Config,
    sim_gpus: SimGpus,
    gpus: Gpus,
    rig: Rig,
    leftovers: Leftovers,
) -> None:
    sim_gpus(*gpus)
    sharing = Config(**{**test_config.__dict__, "gpu_sharing": True})
    client = await aiohttp_client(create_app(sharing))

    one = await created(client, **body("share1", gpu_ids=[0]))
    two = await created(client, **body("share2", gpu_ids=[0, 1]))
    # A stopped sharer starts again beside the other.
    assert (await call(client, "POST", "/containers/share1/stop"))[0] == 200
    assert await call(client, "POST", "/containers/share1/start") == (
        200,
        {"message": "container 'share1' started"},
    )

    assert states(rig, "share1", "share2") == {"share1": "running", "share2": "running"}
    status, listing = await call(client, "GET", "/gpus")
    assert status == 200
    assert [g["containers"] for g in listing["gpus"]] == [["share1", "share2"], ["share2"], [], []]
    labels = {name: inspect(rig, name)["Config"]["Labels"] for name in ("share1", "share2")}
    assert labels["share1"]["deepdockd.gpu-uuids"] == gpus[0]["uuid"]
    assert labels["share2"]["deepdockd.gpu-uuids"] == f"{gpus[0]['uuid']},{gpus[1]['uuid']}"
    seen = [
        ssh(answer["ssh-port"], "alice", f"pw-{name}", "echo $NVIDIA_VISIBLE_DEVICES").stdout
        for name, answer in (("share1", one), ("share2", two))
    ]
    assert seen == [f"{gpus[0]['uuid']}\n", f"{gpus[0]['uuid']},{gpus[1]['uuid']}\n"]


async def test_without_nvml_gpus_are_pinned_by_index(
    aiohttp_client: ClientFactory, test_config: Config, rig: Rig, leftovers: Leftovers
) -> None:
    # No NVML_SIM_CONFIG: NVML cannot list the GPUs (as on a host whose driver is missing).
    client = await aiohttp_client(create_app(test_config))

    answer = await created(client, **body("byindex", gpu_ids=[1]))

    container = inspect(rig, "byindex")
    assert container["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["1"],
            "Capabilities": [["gpu"]],
            "Options": None,
        }
    ]
    assert container["Config"]["Labels"]["deepdockd.gpu-indices"] == "1"
    assert container["Config"]["Labels"]["deepdockd.gpu-uuids"] == ""  # no UUID to pin
    status, item = await call(client, "GET", "/containers/byindex")
    assert (status, item["gpus"], item["gpu_uuids"]) == (200, ["1"], [])
    seen = ssh(answer["ssh-port"], "alice", "pw-byindex", "echo $NVIDIA_VISIBLE_DEVICES")
    assert seen.stdout == "1\n", seen.stderr
    # Held by index, the GPU is still held.
    status, error = await create(client, **body("byindex2", gpu_ids=[1]))
    assert (status, error["error"]["message"]) == (
        409,
        "GPU 1 is held by running container 'byindex'",
    )
    assert leftovers() == ["byindex"]


async def test_gpus_and_ports_held_in_another_namespace_are_not_given_again(
    aiohttp_client: ClientFactory,
    gpu_client: Client,
    test_config: Config,
    other_namespace: str,
    leftovers: Leftovers,
    ssh_ports: tuple[int, int],
) -> None:
    # A second daemon on the same Docker and the same GPUs, with a namespace of its own.
    other = Config(**{**test_config.__dict__, "namespace": other_namespace})
    other_client = await aiohttp_client(create_app(other))
    theirs = await created(other_client, **body("theirs", gpu_ids=[0]))
    assert theirs["ssh-port"] == ssh_ports[0]

    status, error = await create(gpu_client, **body("ours", gpu_ids=[0]))
    assert status == 409, error
    assert error["error"] == {
        "code": "gpu_busy",
        "message": "GPU 0 is held by running container 'theirs'",
        "details": {"gpu": 0, "holder": "theirs"},
    }
    ours = await created(gpu_client, **body("ours", gpu_ids=[1]))
    assert ours["ssh-port"] == ssh_ports[0] + 1
    assert (leftovers(), leftovers(other_namespace)) == (["ours"], ["theirs"])
    status, listing = await call(gpu_client, "GET", "/containers")
    assert (status, [c["name"] for c in listing["containers"]]) == (200, ["ours"])


@pytest.mark.parametrize(
    ("gpu_ids", "message"),
    [
        (
            [7],
            "gpu_ids: 7 is not a GPU of this host (its GPUs: 0: NVIDIA H100 80GB HBM3; 1: NVIDIA H100 80GB HBM3; 2: NVIDIA H100 80GB HBM3; 3: NVIDIA H100 80GB HBM3)",
        ),
        ([0, 0], "gpu_ids: lists GPU 0 more than once"),
        # "0" is GPU 0, as the answers' "gpus" write it; "0:1" a MIG slice (tests/test_mig.py).
        (
            ["0:1"],
            "gpu_ids: 0:1 names a MIG slice, but GPU 0 is not in MIG mode; ask for it whole as 0",
        ),
        (
            [-1],
            'gpu_ids.0: -1 is not a GPU: give its index (1, or "1") or a MIG slice of it ("1:0", as GET /gpus lists them)',
        ),
        ("0", "gpu_ids: Not a valid list."),
    ],
)
async def test_bad_gpu_ids_are_422(
    gpu_client: Client, leftovers: Leftovers, gpu_ids: object, message: str
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
        ({"password": ""}, "password: Shorter than minimum length 1."),
        ({"password": "a\nb"}, "password: must not contain a line break"),
        ({"password": "ü" * 51}, "password: must be at most 100 bytes in UTF-8 (this one is 102)"),
        # The one byte an env value cannot carry (the bootstrap's NAME=value lines), by key.
        ({"env": {"NOTE": "one\ntwo"}}, "env.NOTE.value: must not contain a line break"),
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
    gpu_client: Client, leftovers: Leftovers, fields: dict[str, Any], message: str
) -> None:
    status, error = await create(gpu_client, **(body("badbody") | fields))

    assert status == 422
    assert error["error"]["message"].startswith(message)
    assert leftovers() == []


async def test_twenty_concurrent_creates_share_nothing(
    gpu_client: Client, rig: Rig, leftovers: Leftovers, ssh_ports: tuple[int, int]
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
    ports = sorted(results[name][1]["ssh-port"] for name in winners)
    # Each its own, and the lowest ones: a loser gives nothing away and takes nothing.
    assert ports == list(range(ssh_ports[0], ssh_ports[0] + 14))
    assert leftovers() == sorted(winners)
    held = [
        inspect(rig, name)["Config"]["Labels"]["deepdockd.gpu-indices"]
        for name in winners
        if wanted[name]
    ]
    assert sorted(held) == ["0", "1", "2", "3"]


async def test_the_lowest_free_port_skips_ports_bound_on_the_host(
    aiohttp_client: ClientFactory,
    test_config: Config,
    leftovers: Leftovers,
    ssh_ports: tuple[int, int],
) -> None:
    low = ssh_ports[0]
    config = Config(**{**test_config.__dict__, "ssh_port_range": (low, low + 2)})
    client = await aiohttp_client(create_app(config))
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", low))
        squatter.listen()

        first = await create(client, **body("port1"))
        second = await create(client, **body("port2"))
        third = await create(client, **body("port3"))

    assert (first[0], first[1]["ssh-port"]) == (201, low + 1)
    assert (second[0], second[1]["ssh-port"]) == (201, low + 2)
    assert third[0] == 503
    assert third[1]["error"]["code"] == "ssh_ports_exhausted"
    assert third[1]["error"]["message"] == (
        f"no free SSH port in {low}-{low + 2}: all 3 are held by containers or bound on the "
        "host; remove containers or widen ssh_port_range"
    )
    assert leftovers() == ["port1", "port2"]


@pytest.mark.process  # two deepdockd processes, one of them killed
def test_a_killed_daemon_comes_back_without_double_booking(
    rig: Rig,
    tmp_path: Path,
    free_port: int,
    test_config: Config,
    gpus: Gpus,
    leftovers: Leftovers,
    ssh_ports: tuple[int, int],
) -> None:
    described = tmp_path / "gpus.json"
    described.write_text(json.dumps({"driver_version": "550.54.15", "gpus": gpus}))
    env = {
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent), "NVML_SIM_CONFIG": str(described),
        "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}",
        "DEEPDOCKD_NAMESPACE": test_config.namespace,
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

    def post(path: str, fields: dict[str, Any]) -> tuple[int, Any]:
        return http_json("POST", base + path, json_body=fields, timeout_s=120)

    first = Daemon(*args, env=env, log=tmp_path / "first.log")
    try:
        first.wait_until_serving(base + "/healthz")
        status, held = post("/containers/create", body("kept", gpu_ids=[2]))
    finally:
        first.process.kill()  # SIGKILL: no chance to save anything
        first.wait_for_exit()
    assert (status, held["ssh-port"]) == (201, ssh_ports[0]), held

    second = Daemon(*args, env=env, log=tmp_path / "second.log")
    try:
        second.wait_until_serving(base + "/healthz")
        busy = post("/containers/create", body("again", gpu_ids=[2]))
        other = post("/containers/create", body("other"))
    finally:
        second.stop()

    assert busy == (
        409,
        {
            "error": {
                "code": "gpu_busy",
                "message": "GPU 2 is held by running container 'kept'",
                "details": {"gpu": 2, "holder": "kept"},
            }
        },
    )
    assert (other[0], other[1]["ssh-port"]) == (201, ssh_ports[0] + 1)
    assert leftovers() == ["kept", "other"]


async def test_the_list_shows_each_change_as_the_container_answers_it(
    gpu_client: Client, rig: Rig
) -> None:
    """GET /containers keeps each container's answer encoded and encodes it again only when
    something it shows changes: a stop and a start (Docker's events), a lease extended (the
    records file). After each change the list shows it, and each entry is exactly what
    GET /containers/{name} answers."""

    def settled(entry: dict[str, Any]) -> dict[str, Any]:
        """The entry without its cgroup figures: the stats sampler may take the container's
        first sample between two reads, so those move without any change to the container."""
        return {k: v for k, v in entry.items() if k not in SAMPLED_KEYS}

    async def listed(*, each_too: bool = True) -> dict[str, Any]:
        status, answer = await call(gpu_client, "GET", "/containers")
        assert status == 200, answer
        entries = {c["name"]: settled(c) for c in answer["containers"]}
        for name, entry in entries.items() if each_too else ():
            status, alone = await call(gpu_client, "GET", f"/containers/{name}")
            assert (status, settled(alone)) == (200, entry)
        return entries

    await created(gpu_client, **body("first", lease_hours=1))
    await created(gpu_client, **body("second"))
    before = await listed()
    assert before["first"]["status"] == "running"

    rig.docker("stop", "--time", "1", "first")  # behind deepdockd's back: an event
    deadline = time.monotonic() + 10
    while (now := await listed(each_too=False))["first"]["status"] == "running":
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.05)
    now = await listed()
    assert now["first"]["ssh-port"] is None
    assert now["second"] == before["second"]

    status, answer = await call(gpu_client, "POST", "/containers/first/start")
    assert status == 200, answer
    response = await gpu_client.post("/containers/first/extend", json={"lease_hours": 3})
    assert response.status == 200, await response.text()
    lease = await response.json()
    extended = await listed()
    assert extended["first"]["status"] == "running"
    assert extended["first"]["ssh-port"] == before["first"]["ssh-port"]
    assert extended["first"]["expires_at"] == lease["expires_at"]
    assert extended["first"]["expires_at"] != before["first"]["expires_at"]

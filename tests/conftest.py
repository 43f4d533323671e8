"""Shared fixtures: the rig (private dockerd, registry, images), configs and clients."""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import os
import socket
import tarfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from deepdockd.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from daemon import Daemon
from rig import BUSYBOX_IMAGE, DEBIAN_SSH_IMAGE, REGISTRIES, REGISTRY_ADDR, Rig
from spec import response_checker, tee_streams

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

# The rig's registries listen on loopback, where pulls go only to registries the admin listed:
# every daemon of the tests lists them, as an admin of a lab's own registry would.
RIG_REGISTRIES = tuple(REGISTRIES.values())


@pytest.fixture
def aiohttp_client(aiohttp_client: ClientFactory) -> Iterator[ClientFactory]:
    """pytest-aiohttp's client factory, with every answer checked against openapi.yaml,
    streamed answers line by line: a test whose app answered outside the spec fails, whatever
    it asserted itself."""
    failures: list[str] = []

    async def make(app: web.Application) -> Client:
        app.middlewares.insert(0, response_checker(failures))
        app.on_response_prepare.append(tee_streams)
        return await aiohttp_client(app)

    yield make
    assert not failures, "answers outside openapi.yaml:\n" + "\n".join(failures)


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    """The private Docker engine and registry, up for the whole run and stopped at its end."""
    the_rig = Rig.from_env()
    try:
        the_rig.start()
        yield the_rig
    finally:
        if the_rig.held:  # a run that never got the rig (interrupted while waiting) leaves it
            the_rig.stop()
        the_rig.release()


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own, so no two tests see each other's containers."""
    return f"ddtest-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def config(rig: Rig, tmp_path: Path, namespace: str) -> Config:
    """The daemon's config for a test: the rig's Docker and registries, a namespace of its own,
    and auth off (tests of auth turn it on)."""
    return Config(
        docker_host=rig.docker_host,
        state_dir=tmp_path / "state",
        namespace=namespace,
        auth=False,
        allowed_registries=RIG_REGISTRIES,
    )


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, config: Config
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(create_app(config))


@pytest.fixture
def client_allowing(
    aiohttp_client: ClientFactory, config: Config
) -> Callable[..., Awaitable[Client]]:
    """Factory: a client of a daemon whose ``allowed_registries`` lists ``registries`` too
    (the test's own servers on loopback)."""

    async def make(*registries: str) -> Client:
        allowed = (*config.allowed_registries, *registries)
        return await aiohttp_client(
            create_app(dataclasses.replace(config, allowed_registries=allowed))
        )

    return make


@dataclass
class RunningDaemon:
    """A deepdockd process serving on the rig: its process, URL and state directory."""

    daemon: Daemon
    base: str
    state_dir: Path

    def stop(self) -> tuple[int, str]:
        return self.daemon.stop()


@pytest.fixture
def rig_daemon(rig: Rig, tmp_path: Path, free_port: int) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: deepdockd as a real process on the rig's Docker and registries and this test's
    free port, with a state directory of its own, once it serves. Whatever is left running is
    stopped when the test ends."""
    started: list[Daemon] = []

    def start(
        *args: str, env: dict[str, str] | None = None, auth: bool = False, name: str = "daemon"
    ) -> RunningDaemon:
        state_dir = tmp_path / f"state-{name}"
        env = {"DEEPDOCKD_ALLOWED_REGISTRIES": ",".join(RIG_REGISTRIES), **(env or {})}
        daemon = Daemon(
            "--port", str(free_port), "--docker-host", rig.docker_host, "--state-dir", str(state_dir),
            *args, env=env, log=tmp_path / f"{name}.log", auth=auth,
        )  # fmt: skip
        started.append(daemon)
        base = f"http://127.0.0.1:{free_port}"
        daemon.wait_until_serving(f"{base}/healthz")
        return RunningDaemon(daemon, base, state_dir)

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def registry_image(rig: Rig) -> Iterator[Callable[..., str]]:
    """Factory: push a new image of random content to a rig registry and remove it from the
    engine, so that pulling it downloads real layers. Returns ``registry/repo:tag``."""
    made: list[str] = []

    def make(
        *, size_mb: int = 1, registry: str = REGISTRY_ADDR, tags: tuple[str, ...] = ("v1",)
    ) -> str:
        repository = f"{registry}/deepdockd-test/rand-{uuid.uuid4().hex[:10]}"
        references = [f"{repository}:{tag}" for tag in tags]
        rig.docker("import", "-", references[0], input=random_layer_tar(size_mb))
        for reference in references[1:]:
            rig.docker("tag", references[0], reference)
        for reference in references:
            rig.docker("push", reference)
        rig.docker("rmi", *references)
        made.extend(references)
        return references[0]

    yield make
    for reference in made:
        if rig.image_exists(reference):
            rig.docker("rmi", "--force", reference)


def random_layer_tar(size_mb: int) -> bytes:
    """A tar of one file of random bytes: a layer no other image shares."""
    payload = os.urandom(size_mb * 1024 * 1024)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("random.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


# --- simulated GPUs ---

NVML_SIM_LIBRARY = Path(__file__).parents[1] / "build" / "nvml-sim" / "libnvidia-ml.so.1"


@pytest.fixture(scope="session", autouse=True)
def nvml_sim_library() -> None:
    """Load the simulated NVML before pynvml looks for libnvidia-ml.so.1: the loader then
    hands pynvml this library (same soname), and the real pynvml code runs against it.
    DEEPDOCKD_TEST_REAL_NVML=1 (the ``gpu`` tests on a GPU host) leaves the real one."""
    if os.environ.get("DEEPDOCKD_TEST_REAL_NVML") == "1":
        return
    if not NVML_SIM_LIBRARY.exists():
        pytest.fail(
            f"{NVML_SIM_LIBRARY} is missing: run the tests with `make test`, which builds it"
        )
    ctypes.CDLL(str(NVML_SIM_LIBRARY), mode=ctypes.RTLD_GLOBAL)


@pytest.fixture(autouse=True)
def no_sim_gpus_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test has GPUs only when it asks for them (``sim_gpus``)."""
    monkeypatch.delenv("NVML_SIM_CONFIG", raising=False)


def sim_gpu(index: int, *, stem: str = "d0c0d0c0", **overrides: object) -> dict[str, object]:
    """One simulated GPU: an H100 without a fan, readings that move. Its UUID is
    ``GPU-{stem}-0000-4000-8000-{index}``: a test that gives containers GPUs passes the stem of
    its own (the ``gpu_stem`` fixture), so that a container another test left behind, holding
    "GPU 0" by UUID, never holds this test's GPU 0."""
    gpu: dict[str, object] = {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-{stem}-0000-4000-8000-{index:012d}",
        "memory_total_mib": 81559,
        "power_limit_w": 700,
        "memory_used_mib": [1000 + index, 2000, 3000, 4500],
        "utilization": [5, 17, 42, 88, 100, 63],
        "power_w": [70.125, 95.5, 300.25, 650],
        "temperature_c": [35, 41, 58, 66, 70],
        "fan_pct": None,
    }
    gpu.update(overrides)
    return gpu


@pytest.fixture
def sim_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: describe simulated GPUs (NVML_SIM_CONFIG) for apps made after the call."""

    def describe(*gpus: dict[str, object], driver_version: str = "550.54.15") -> Path:
        path = tmp_path / "nvml-sim.json"
        path.write_text(json.dumps({"driver_version": driver_version, "gpus": list(gpus)}))
        monkeypatch.setenv("NVML_SIM_CONFIG", str(path))
        return path

    return describe


# --- what a test may allocate: SSH ports and GPU UUIDs of its own ---

# Allocation reads every namespace's containers, so a container that another test left behind
# (a failed one, in any file) holds its port and GPUs for everyone. Each test that creates
# containers takes a block of ports and a UUID stem that no other test uses, so its
# expectations ("the lowest port", "GPU 0 is free") hold whatever the others did. No other
# test uses the pool: the default range is 22000-22999, the fuzz test's 23000-23999 (and its
# service ports 24000-24999), and Linux hands out ephemeral ports from 32768. (The bench,
# 24000-24999 and a few from 25000 for its `docker run` baseline, never runs beside the tests:
# both hold the rig's lock.)
SSH_PORT_POOL = (25000, 29999)
SSH_PORT_BLOCK = 30


# The first port of each block, up to the last block that fits the pool whole.
def _blocks(pool: tuple[int, int], size: int) -> Iterator[int]:
    return iter(range(pool[0], pool[1] - size + 2, size))


def _next_block(
    blocks: Iterator[int], pool: tuple[int, int], size: int, what: str
) -> tuple[int, int]:
    low = next(blocks, None)
    if low is None:
        pytest.fail(
            f"more tests ask for {what} than {pool[0]}-{pool[1]} has blocks of {size}: widen "
            "the pool or shrink its blocks"
        )
    return low, low + size - 1


_ssh_port_blocks = _blocks(SSH_PORT_POOL, SSH_PORT_BLOCK)


@pytest.fixture
def ssh_ports() -> tuple[int, int]:
    """An ``ssh_port_range`` of this test's own: SSH_PORT_BLOCK ports that no other test of
    the run is given."""
    return _next_block(_ssh_port_blocks, SSH_PORT_POOL, SSH_PORT_BLOCK, "ssh_ports")


# The host ports of containers' published services ("ports", service_port_range) come from a
# pool of their own, between the SSH pool and the ephemeral ports, in blocks as large as the
# most a test publishes at once.
SERVICE_PORT_POOL = (30000, 32749)
SERVICE_PORT_BLOCK = 50
_service_port_blocks = _blocks(SERVICE_PORT_POOL, SERVICE_PORT_BLOCK)


@pytest.fixture
def service_ports() -> tuple[int, int]:
    """A ``service_port_range`` of this test's own: SERVICE_PORT_BLOCK ports that no other
    test of the run is given, and no SSH port."""
    return _next_block(_service_port_blocks, SERVICE_PORT_POOL, SERVICE_PORT_BLOCK, "service_ports")


@pytest.fixture
def cleanup(rig: Rig, namespace: str) -> Iterator[None]:
    """Whatever this test's namespace left in Docker goes when it ends."""
    yield
    clear_namespace(rig, namespace)


def clear_namespace(rig: Rig, namespace: str) -> None:
    """Remove whatever a test's namespace left in Docker: containers, networks, volumes."""
    label = f"label=deepdockd.namespace={namespace}"
    for kind, removal in (
        (["ps", "--all", "--quiet"], ["rm", "--force"]),
        (["network", "ls", "--quiet"], ["network", "rm"]),
        (["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
    ):
        found = rig.docker(*kind, "--filter", label).split()
        if found:
            rig.docker(*removal, *found)


def users_tokens(store: TokenStore) -> dict[str, str]:
    """The admin's token and those of two new users, alice and bob."""
    store.ensure_admin()
    return {
        "admin": store.admin_token_path.read_text().strip(),
        "alice": store.add("alice", "user"),
        "bob": store.add("bob", "user"),
    }


@pytest.fixture
def gpu_stem() -> str:
    """A UUID stem of this test's own, for ``sim_gpu(index, stem=gpu_stem)``."""
    return uuid.uuid4().hex[:8]


# --- images made for one test: SSH servers that answer late, or never ---


def derived_image(rig: Rig, base: str, script: str, command: str) -> str:
    """An image made from ``base`` by running ``script`` in it (``docker commit``)."""
    image = f"deepdockd-test/derived:{uuid.uuid4().hex[:8]}"
    builder = f"build-{uuid.uuid4().hex[:8]}"
    rig.docker("run", "--name", builder, "--entrypoint", "/bin/sh", base, "-c", script)
    rig.docker("commit", "--change", f'CMD ["{command}"]', builder, image)
    rig.docker("rm", builder)
    return image


@pytest.fixture
def silent_sshd_image(rig: Rig) -> Iterator[str]:
    """An image whose sshd never answers (it sleeps an hour): a create of it waits for its
    SSH server as long as ssh_ready_timeout lets it."""
    script = (
        "mkdir -p /usr/sbin && printf '#!/bin/sh\\nexec sleep 3600\\n' > /usr/sbin/sshd"
        " && chmod 755 /usr/sbin/sshd"
    )
    image = derived_image(rig, BUSYBOX_IMAGE, script, "/bin/sh")
    yield image
    rig.docker("rmi", "--force", image)


@pytest.fixture
def slow_sshd_image(rig: Rig) -> Iterator[str]:
    """The Debian image whose OpenSSH sshd starts 3 s late: a create that takes a while and
    then succeeds."""
    script = (
        "mv /usr/sbin/sshd /usr/sbin/sshd.real"
        " && printf '#!/bin/sh\\nsleep 3\\nexec /usr/sbin/sshd.real \"$@\"\\n' > /usr/sbin/sshd"
        " && chmod 755 /usr/sbin/sshd"
    )
    image = derived_image(rig, DEBIAN_SSH_IMAGE, script, "/bin/bash")
    yield image
    rig.docker("rmi", "--force", image)


@pytest.fixture
def shell_less_image(rig: Rig) -> Iterator[str]:
    """An image with no /bin/sh (its busybox moved to /tools), as a distroless image is: the
    bootstrap cannot run, so a create of it fails when the container starts."""
    script = "mkdir /tools && mv /bin/* /tools/ 2>/dev/null; /tools/true"
    image = derived_image(rig, BUSYBOX_IMAGE, script, "/tools/sh")
    yield image
    rig.docker("rmi", "--force", image)

"""Shared fixtures: the rig (private dockerd, registry, images), configs and clients; and the
hooks that put each test in its lanes (tests/support/lanes.py). Helpers live in tests/support/."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from deepdockd.api import app as app_module
from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.firewall.keeper import EgressFirewall

from tests.support import lanes
from tests.support.api import Client, ClientFactory
from tests.support.daemon import Daemon, RunningDaemon, Started, daemon_port
from tests.support.docker_state import clear_namespace
from tests.support.gpus import NVML_SIM_LIBRARY
from tests.support.images import derived_image, random_layer_tar
from tests.support.ports import SERVICE_PORTS, SSH_PORTS
from tests.support.rig import BUSYBOX_IMAGE, DEBIAN_SSH_IMAGE, REGISTRY_ADDR, RIG_REGISTRIES, Rig
from tests.support.spec import response_checker, tee_streams

# --- lanes: markers from what a test uses ---


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the lanes whose fixtures it uses (``rig``, ``process``, ``browser``)."""
    for item in items:
        for lane in lanes.lanes_of(getattr(item, "fixturenames", ())):
            item.add_marker(lane)


@pytest.hookimpl(tryfirst=True)  # before its fixtures are made: the session rig among them
def pytest_runtest_setup(item: pytest.Item) -> None:
    lanes.enter(marker.name for marker in item.iter_markers())


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


@pytest.fixture
def user_key(tmp_path: Path) -> Path:
    """A new ed25519 key pair (no passphrase) for SSH logins: the private half at this path,
    the public one beside it (.pub)."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


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
    auth off (tests of auth turn it on) and no egress rules in the host's firewall (the tests
    of egress turn them on)."""
    return Config(
        docker_host=rig.docker_host,
        state_dir=tmp_path / "state",
        namespace=namespace,
        auth=False,
        allowed_registries=RIG_REGISTRIES,
        egress_policy=False,
    )


@pytest.fixture
async def client(aiohttp_client: ClientFactory, config: Config) -> Client:
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


@pytest.fixture
def rig_daemon(rig: Rig, tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: deepdockd as a real process on the rig's Docker and registries and a port of
    its own (each process started gets another), with a state directory of its own, once it
    serves. Whatever is left running is stopped when the test ends."""
    started: list[Daemon] = []

    def start(
        *args: str, env: dict[str, str] | None = None, auth: bool = False, name: str = "daemon"
    ) -> RunningDaemon:
        state_dir = tmp_path / f"state-{name}"
        env = {"DEEPDOCKD_ALLOWED_REGISTRIES": ",".join(RIG_REGISTRIES), **(env or {})}
        port = daemon_port()
        daemon = Daemon(
            "--port", str(port), "--docker-host", rig.docker_host, "--state-dir", str(state_dir),
            *args, env=env, log=tmp_path / f"{name}.log", auth=auth,
        )  # fmt: skip
        started.append(daemon)
        base = f"http://127.0.0.1:{port}"
        daemon.wait_until_serving(f"{base}/healthz")
        return RunningDaemon(daemon, base, state_dir)

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """Factory: deepdockd as a process (auth off, text log, no Docker: its socket does not
    exist) on a port of its own, once it serves; ``nofile`` is its (soft, hard)
    RLIMIT_NOFILE, the rest its environment."""
    started: list[Daemon] = []

    def start(nofile: tuple[int, int] | None = None, **env: str) -> Started:
        port = daemon_port()
        daemon = Daemon(
            "--port", str(port), "--docker-host", f"unix://{tmp_path / 'no-docker.sock'}",
            "--state-dir", str(tmp_path / "state"), env=env, log=tmp_path / "daemon.log",
            nofile=nofile,
        )  # fmt: skip
        started.append(daemon)
        base = f"http://127.0.0.1:{port}"
        daemon.wait_until_serving(f"{base}/healthz")
        return Started(daemon, base, port)

    yield start
    for daemon in started:
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


# --- simulated GPUs ---


@pytest.fixture(scope="session", autouse=True)
def nvml_sim_library() -> None:
    """Load the simulated NVML before pynvml looks for libnvidia-ml.so.1: the loader then
    hands pynvml this library (same soname), and the real pynvml code runs against it.
    DEEPDOCKD_TEST_REAL_NVML=1 (the ``gpu`` tests on a GPU host) leaves the real one."""
    if os.environ.get("DEEPDOCKD_TEST_REAL_NVML") == "1":
        return
    if not NVML_SIM_LIBRARY.exists():
        pytest.fail(f"{NVML_SIM_LIBRARY} is missing: `make test` and `make test-fast` build it")
    ctypes.CDLL(str(NVML_SIM_LIBRARY), mode=ctypes.RTLD_GLOBAL)


@pytest.fixture(autouse=True)
def no_egress_rules_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process apps leave the host's firewall alone whatever their Config says (a bare
    ``Config()`` has egress_policy on, as a real daemon has): each test's namespace would leave
    rules behind, and a test without root could not start its app. The egress tests put the
    real keeper back."""
    monkeypatch.setattr(app_module, "EgressFirewall", _NoEgressRules)


class _NoEgressRules(EgressFirewall):
    @property
    def enabled(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def no_sim_gpus_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test has GPUs only when it asks for them (``sim_gpus``)."""
    monkeypatch.delenv("NVML_SIM_CONFIG", raising=False)


@pytest.fixture
def sim_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: describe simulated GPUs (NVML_SIM_CONFIG) for apps made after the call."""

    def describe(*gpus: dict[str, object], driver_version: str = "550.54.15") -> Path:
        path = tmp_path / "nvml-sim.json"
        path.write_text(json.dumps({"driver_version": driver_version, "gpus": list(gpus)}))
        monkeypatch.setenv("NVML_SIM_CONFIG", str(path))
        return path

    return describe


# --- what a test may allocate: SSH ports and GPU UUIDs of its own (tests/support/ports.py) ---


@pytest.fixture
def ssh_ports() -> tuple[int, int]:
    """An ``ssh_port_range`` of this test's own: SSH_PORT_BLOCK ports that no other test of
    the run is given."""
    return SSH_PORTS.take()


@pytest.fixture
def service_ports() -> tuple[int, int]:
    """A ``service_port_range`` of this test's own: SERVICE_PORT_BLOCK ports that no other
    test of the run is given, and no SSH port."""
    return SERVICE_PORTS.take()


@pytest.fixture
def cleanup(rig: Rig, namespace: str) -> Iterator[None]:
    """Whatever this test's namespace left in Docker goes when it ends: containers, owner
    networks, home volumes (``clear_namespace``, which fails if any of them stays)."""
    yield
    clear_namespace(rig, namespace)


@pytest.fixture(autouse=True)
def namespace_left_empty(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test on the rig with a namespace of its own, nothing of that namespace
    stays in Docker: whatever the test's own fixtures left (many remove its containers
    behind deepdockd's back, which leaves the owner networks and home volumes deepdockd made)
    is removed, and the test fails if any of it cannot be. Set up before the test's other
    fixtures, so torn down after them all: the daemons they ran have stopped."""
    names = request.fixturenames
    if "rig" not in names or "namespace" not in names:
        yield
        return
    rig: Rig = request.getfixturevalue("rig")
    namespace: str = request.getfixturevalue("namespace")
    yield
    if rig.held and rig.docker_running():
        clear_namespace(rig, namespace)


@pytest.fixture
def gpu_stem() -> str:
    """A UUID stem of this test's own, for ``sim_gpu(index, stem=gpu_stem)``."""
    return uuid.uuid4().hex[:8]


# --- images made for one test: SSH servers that answer late, or never ---


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

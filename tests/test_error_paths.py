"""Error paths made to happen for real, each asserted as a user sees it (status, code, message)
and by what it leaves behind in Docker:

- Docker refusing a call that no clearer code covers (502 ``docker_error``): a start that the
  rig's real dockerd refuses;
- the state files that fail closed, made unreadable after they were written, reached through a
  route and through the reaper (503 ``image_records_unreadable``,
  ``container_records_unreadable``);
- the rig's dockerd stopped in the middle of a create, at each of its steps (503
  ``docker_unavailable``), and nothing of the create left once it is back;
- the 503 of the routes that need Docker while it does not answer, and what ``GET /events``
  answers then;
- ``live_view = false``: every read asks Docker, and ``GET /events`` is 503 ``unavailable``;
- ``ssh_server = "bundled"`` in a deepdockd installed without its SSH server;
- the 400 and 413 of a body that is not JSON or is too large.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deepdockd import labels
from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.docker import ContainerSpec, ContainerState, Docker
from deepdockd.tokens import TokenStore

from tests.support.api import ClientFactory, body, create, created
from tests.support.daemon import RunningDaemon, http_json
from tests.support.docker_state import inspect
from tests.support.gpus import sim_gpu
from tests.support.rig import BUSYBOX_IMAGE, DEBIAN_SSH_IMAGE, Rig
from tests.support.users import users_tokens

REPO_PACKAGE = Path(__file__).parents[1] / "deepdockd"


def error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


async def answer(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


async def settled(read: Callable[[], Any], expected: Any, limit_s: float = 20) -> Any:
    """What ``read()`` gives once it gives ``expected`` (polled every 0.1 s), or what it gave
    last when ``limit_s`` ran out."""
    deadline = time.monotonic() + limit_s
    while True:
        found = read()
        if found == expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


def namespace_in_docker(rig: Rig, namespace: str) -> dict[str, list[str]]:
    """What Docker holds of the namespace: containers (any state), networks, volumes."""
    label = f"label={labels.NAMESPACE}={namespace}"
    return {
        "containers": rig.docker(
            "ps", "--all", "--format", "{{.Names}}", "--filter", label
        ).split(),
        "networks": rig.docker("network", "ls", "--format", "{{.Name}}", "--filter", label).split(),
        "volumes": rig.docker("volume", "ls", "--format", "{{.Name}}", "--filter", label).split(),
    }


# --- without Docker: the routes' 503, and bodies refused before anything is asked ---


@pytest.fixture
def no_docker(tmp_path: Path) -> Config:
    """A daemon whose Docker does not answer (its socket does not exist)."""
    return Config(
        docker_host=f"unix://{tmp_path}/none.sock",
        state_dir=tmp_path / "state",
        auth=False,
        max_body_size=1024,
    )


DOCKER_DOWN_ROUTES = [
    ("GET", "/volumes", None),
    ("DELETE", "/volumes/alice-home", None),
    ("GET", "/quota", None),
    ("POST", "/containers/x1/extend", {"lease_hours": 1}),
    ("GET", "/containers/x1/logs", None),
]


@pytest.mark.parametrize(("method", "path", "sent"), DOCKER_DOWN_ROUTES)
async def test_a_route_that_needs_docker_is_503_docker_unavailable_while_it_is_down(
    aiohttp_client: ClientFactory, no_docker: Config, method: str, path: str, sent: Any
) -> None:
    client = await aiohttp_client(create_app(no_docker))

    status, said = await answer(await client.request(method, path, json=sent))

    assert status == 503, said
    assert said["error"]["code"] == "docker_unavailable"
    assert said["error"]["message"].startswith(
        f"Docker is not reachable at {no_docker.docker_host}: "
    )
    assert said["error"]["details"] == {}


async def test_events_while_docker_is_down_open_and_wait_for_it(
    aiohttp_client: ClientFactory, no_docker: Config
) -> None:
    """openapi.yaml documents no docker_unavailable for GET /events: the stream opens, and the
    changes come once Docker answers (the view lists afresh and tells what changed)."""
    client = await aiohttp_client(create_app(no_docker))

    response = await client.get("/events", params={"timeout": "1"})
    text = await response.text()

    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert text == ": deepdockd events\n\n"


async def test_an_extend_whose_body_is_not_json_is_400(
    aiohttp_client: ClientFactory, no_docker: Config
) -> None:
    client = await aiohttp_client(create_app(no_docker))

    status, said = await answer(
        await client.post(
            "/containers/x1/extend",
            data=b"lease_hours=1",
            headers={"Content-Type": "application/json"},
        )
    )

    assert status == 400
    assert said["error"]["code"] == "bad_request"
    assert said["error"]["message"] == (
        "the request body is not valid JSON: Expecting value: line 1 column 1 (char 0)"
    )


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("/containers/x1/extend", {"lease_hours": 1, "pad": "x" * 2000}),
        ("/images", {"repo_tag": "busybox:latest", "pad": "x" * 2000}),
    ],
)
async def test_a_body_over_max_body_size_is_413(
    aiohttp_client: ClientFactory, no_docker: Config, path: str, sent: dict[str, Any]
) -> None:
    client = await aiohttp_client(create_app(no_docker))

    status, said = await answer(await client.post(path, json=sent))

    assert status == 413
    assert said["error"]["code"] == "body_too_large"
    assert "1024" in said["error"]["message"], said


# --- Docker refuses a call: 502 docker_error ---


@pytest.fixture
def workdir_is_a_file_image(rig: Rig) -> Iterator[str]:
    """An image whose working directory is a file: Docker creates its container, and its
    runtime refuses to start it (it cannot chdir into a file)."""
    image = f"deepdockd-test/derived:{uuid.uuid4().hex[:8]}"
    builder = f"build-{uuid.uuid4().hex[:8]}"
    rig.docker("create", "--name", builder, DEBIAN_SSH_IMAGE)
    rig.docker("commit", "--change", "WORKDIR /etc/passwd", builder, image)
    rig.docker("rm", builder)
    yield image
    rig.docker("rmi", "--force", image)


@pytest.fixture
def rig_config(config: Config, ssh_ports: tuple[int, int]) -> Config:
    return dataclasses.replace(config, ssh_port_range=ssh_ports, ssh_ready_timeout=60)


async def test_a_start_that_docker_refuses_is_502_docker_error_and_leaves_nothing(
    aiohttp_client: ClientFactory,
    rig_config: Config,
    rig: Rig,
    workdir_is_a_file_image: str,
    cleanup: None,
) -> None:
    client = await aiohttp_client(create_app(rig_config))

    status, said = await create(client, **body("refused", image=workdir_is_a_file_image))

    assert status == 502, said
    assert said["error"]["code"] == "docker_error"
    assert re.match(r"Docker answered (400|500): .*/etc/passwd", said["error"]["message"]), said
    assert said["error"]["details"]["docker_status"] in (400, 500)
    left = namespace_in_docker(rig, rig_config.namespace)
    assert left["containers"] == left["networks"] == [], left
    # Its port was given back: the next create has it.
    again = await created(client, **body("accepted"))
    assert again["ssh-port"] == rig_config.ssh_port_range[0]


# --- state files that fail closed ---


async def test_an_unreadable_images_json_refuses_image_routes_and_moves_no_tag(
    aiohttp_client: ClientFactory,
    config: Config,
    rig: Rig,
    registry_image: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secured = dataclasses.replace(config, auth=True)
    tokens = users_tokens(TokenStore(secured.state_dir))
    client = await aiohttp_client(create_app(secured))
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    first = registry_image()
    pulled = await client.post("/images", json={"repo_tag": first}, headers=admin)
    assert pulled.status == 200, await pulled.json()  # the record now holds who set the tag
    path = secured.state_dir / "images.json"
    written = path.read_text()
    assert first in written
    second = registry_image()

    path.write_text(written[: len(written) // 2])  # cut short: not JSON
    alices_list = await answer(await client.get("/images", headers=alice))
    alices_create = await answer(
        await client.post("/containers/create", json=body("x1", image=first), headers=alice)
    )
    admins_pull = await answer(
        await client.post("/images", json={"repo_tag": second}, headers=admin)
    )

    refusal = re.compile(
        re.escape(f"{path} cannot be read (")
        + r".+"
        + re.escape(
            "); until it is mended, image routes are refused, so that no private image shows"
        )
    )
    for status, said in (alices_list, alices_create, admins_pull):
        assert status == 503, said
        assert said["error"]["code"] == "image_records_unreadable"
        assert refusal.fullmatch(said["error"]["message"]), said
    assert not rig.image_exists(second)  # the admin's pull was refused before Docker moved it
    assert path.read_text() == written[: len(written) // 2]  # never written over
    assert rig.docker("ps", "-aq", "--filter", f"label={labels.OWNER}=alice").split() == []
    logged = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(logged) == 1, logged
    assert refusal.fullmatch(logged[0]), logged


async def test_an_unreadable_containers_json_refuses_extend_and_the_reaper_stops_nothing(
    aiohttp_client: ClientFactory,
    rig_config: Config,
    rig: Rig,
    cleanup: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    made = dataclasses.replace(rig_config, max_lease_hours=1, stop_warning_minutes=0)
    client = await aiohttp_client(create_app(made))
    lease_s = 8
    answered = await created(client, **body("extended", lease_hours=lease_s / 3600))
    labels_end = datetime.fromisoformat(answered["expires_at"])
    extended = await client.post("/containers/extended/extend", json={"lease_hours": 1})
    assert extended.status == 200, await extended.json()
    path = made.state_dir / "containers.json"
    assert labels_end > datetime.now(UTC), "the create took longer than its lease"

    path.write_text("{not json\n")
    # Three reaper ticks past the end that the labels give: a reaper that took the file as
    # empty would stop it for that lease.
    await asyncio.sleep((labels_end + timedelta(seconds=3) - datetime.now(UTC)).total_seconds())
    state = inspect(rig, "extended")["State"]["Status"]
    extend_again = await answer(
        await client.post("/containers/extended/extend", json={"lease_hours": 1})
    )
    shown = await answer(await client.get("/containers/extended"))

    assert state == "running"
    problem = f"{path} cannot be read ("
    assert extend_again[0] == 503, extend_again
    assert extend_again[1] == error(
        "container_records_unreadable",
        f"{path} cannot be read: mend it (or write it anew as {{}}, which forgets every "
        "extended lease and stop reason) and ask again",
        path=str(path),
    )
    assert shown[0] == 200
    assert shown[1]["status"] == "running"
    assert shown[1]["stopped_reason"] is None
    assert path.read_text() == "{not json\n"  # never written over
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith(problem)]
    assert len(logged) == 1, logged  # once, however many reaper ticks and requests met it
    assert logged[0].endswith(
        "until it is mended no container is stopped for its lease, leases show as they were "
        "made, and extending one is refused"
    )


# --- Docker goes away in the middle of a create ---

# "info": whether Docker remaps root, asked before the first create mounts host files;
# "archive": the bootstrap's files copied in, with mount_host_files off.
STEPS = ("network", "info", "create", "archive", "start", "sshd_wait")


class DockerThatDies(Docker):
    """The real Docker client; after the real call of ``step`` answers, the rig's dockerd is
    stopped (a real dockerd going away at that moment)."""

    def __init__(self, url: str, rig: Rig, step: str) -> None:
        super().__init__(url)
        self._rig = rig
        self._step = step
        self.died = False

    async def _maybe_die(self, step: str) -> None:
        if step == self._step and not self.died:
            self.died = True
            await asyncio.to_thread(self._rig.stop_docker)

    async def create_network(self, name: str, *, subnet: str, labels: Any) -> str:
        network_id = await super().create_network(name, subnet=subnet, labels=labels)
        await self._maybe_die("network")
        return network_id

    async def userns_remapped(self) -> bool:
        remapped = await super().userns_remapped()
        await self._maybe_die("info")
        return remapped

    async def create_container(self, spec: ContainerSpec) -> str:
        container_id = await super().create_container(spec)
        await self._maybe_die("create")
        return container_id

    async def put_archive(self, container_id: str, path: str, tar: bytes) -> None:
        await super().put_archive(container_id, path, tar)
        await self._maybe_die("archive")

    async def start_container(self, container_id: str) -> None:
        await super().start_container(container_id)
        await self._maybe_die("start")

    async def container_state(self, container_id: str) -> ContainerState | None:
        state = await super().container_state(container_id)
        await self._maybe_die("sshd_wait")
        return state


@pytest.mark.parametrize("step", STEPS)
async def test_docker_going_away_mid_create_is_503_and_leaves_nothing_once_it_is_back(
    aiohttp_client: ClientFactory,
    rig_config: Config,
    rig: Rig,
    sim_gpus: Callable[..., Path],
    gpu_stem: str,
    cleanup: None,
    step: str,
) -> None:
    sim_gpus(sim_gpu(0, stem=gpu_stem))
    docker = DockerThatDies(rig.docker_host, rig, step)
    config = dataclasses.replace(rig_config, mount_host_files=step != "archive")
    client = await aiohttp_client(create_app(config, docker=docker))
    namespace = rig_config.namespace

    try:
        status, said = await create(client, **body("dies", gpu_ids=[0]))
    finally:
        await asyncio.to_thread(rig.start_docker)

    assert docker.died
    assert status == 503, said
    assert said["error"]["code"] == "docker_unavailable"
    assert re.match(
        rf"Docker (is not reachable at|at) {re.escape(rig.docker_host)}\b", said["error"]["message"]
    ), said
    assert "container removed" not in said["error"]["message"]  # it could not be, then

    # Once Docker answers: no container and no network of the failed create (its home volume
    # may stay, as documented), nothing reserved, and its port and GPU go to the next create.
    def made() -> tuple[list[str], list[str]]:
        left = namespace_in_docker(rig, namespace)
        return left["containers"], left["networks"]

    assert await settled(made, ([], [])) == ([], [])
    bootstrap_dirs = rig_config.state_dir / "bootstrap" / namespace
    assert not bootstrap_dirs.exists() or list(bootstrap_dirs.iterdir()) == []
    quota = await answer(await client.get("/quota"))
    assert quota[0] == 200
    assert quota[1]["used"]["containers"] == quota[1]["used"]["gpus"] == 0, quota
    again = await created(client, **body("after", gpu_ids=[0]))
    assert again["ssh-port"] == rig_config.ssh_port_range[0]
    assert namespace_in_docker(rig, namespace)["containers"] == ["after"]


# --- live_view = false ---


async def test_without_the_live_view_every_read_asks_docker_and_events_are_503(
    aiohttp_client: ClientFactory, rig_config: Config, rig: Rig, cleanup: None
) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(rig_config, live_view=False)))
    namespace = rig_config.namespace
    owner_labels = {
        labels.NAMESPACE: namespace,
        labels.OWNER: "anonymous",
        labels.SSH_USER: "alice",
        labels.SSH_PORT: "",
        labels.CREATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z"),
    }
    flags = [arg for k, v in owner_labels.items() for arg in ("--label", f"{k}={v}")]

    rig.docker("create", "--name", "made-by-hand", *flags, BUSYBOX_IMAGE)
    listed = await answer(await client.get("/containers"))
    got = await answer(await client.get("/containers/made-by-hand"))
    rig.docker("rm", "--force", "made-by-hand")
    listed_after = await answer(await client.get("/containers"))
    got_after = await answer(await client.get("/containers/made-by-hand"))
    events = await answer(await client.get("/events", params={"timeout": "1"}))

    assert listed[0] == 200
    assert [c["name"] for c in listed[1]["containers"]] == ["made-by-hand"]
    assert got[0] == 200
    assert got[1]["status"] == "created"
    assert listed_after == (200, {"containers": []})
    assert got_after[0] == 404
    assert events == (
        503,
        error(
            "unavailable",
            "GET /events needs the live view, and this daemon runs with live_view = false",
            setting="live_view",
        ),
    )


# --- ssh_server = "bundled" in a deepdockd installed without its SSH server ---


@pytest.fixture
def package_without_ssh_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the deepdockd package as a checkout without `make ssh-server` has it, first on
    the daemon's PYTHONPATH; the daemon runs from a directory that holds no other deepdockd."""
    site = tmp_path / "site"
    shutil.copytree(
        REPO_PACKAGE,
        site / "deepdockd",
        ignore=shutil.ignore_patterns("ssh-server", "__pycache__"),
    )
    monkeypatch.chdir(tmp_path)
    return site


def test_bundled_ssh_server_not_installed_is_503_unavailable_and_leaves_nothing(
    rig_daemon: Callable[..., RunningDaemon],
    package_without_ssh_server: Path,
    rig: Rig,
    namespace: str,
    ssh_ports: tuple[int, int],
    cleanup: None,
) -> None:
    daemon = rig_daemon(
        env={
            "PYTHONPATH": str(package_without_ssh_server),
            "DEEPDOCKD_NAMESPACE": namespace,
            "DEEPDOCKD_SSH_SERVER": "bundled",
            "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}",
        }
    )

    health = http_json("GET", f"{daemon.base}/healthz")
    status, said = http_json(
        "POST", f"{daemon.base}/containers/create", json_body=body("no-bundle")
    )

    assert health[1]["ssh_server"] == {"setting": "bundled", "bundled": None}
    assert (status, said) == (
        503,
        error(
            "unavailable",
            "ssh_server is bundled, but this deepdockd was installed without its SSH server;"
            " build it with `make ssh-server` (or install a package that carries it)",
            setting="ssh_server",
        ),
    )
    left = namespace_in_docker(rig, namespace)
    assert left["containers"] == left["networks"] == [], left

"""The one door to the Docker engine: every aiodocker call goes through :class:`Docker`.

aiodocker hands back raw JSON and raises its own ``DockerError`` (status 900 when the socket
does not answer). Here both are turned into the project's dataclasses and errors, so nothing
above this module imports aiodocker, sees its exceptions, or reads Docker's JSON:

- what goes in is ours too: a create takes a :class:`ContainerSpec`, and the JSON Docker wants
  is built from it here (:func:`create_config`);
- Docker's errors become typed ones (:class:`DockerNotFound`, :class:`DockerConflict`,
  :class:`PortTaken`, :class:`SubnetTaken`, and the registry's :class:`RegistryFailed` kinds),
  chosen in one place, :func:`docker_error`, from Docker's HTTP status and, where Docker says
  it only in English, its words. No service branches on Docker's status or matches its text.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiodocker
import aiohttp
from aiodocker.utils import compose_auth_header

from deepdockd.errors import ApiError, ServiceUnavailable

# aiodocker's status for "could not connect to the socket".
_NO_CONNECTION = 900

# A quick call (version, list, inspect) that takes longer than this means the engine is stuck
# (the default of Docker(quick_call_timeout_s=...)).
QUICK_CALL_TIMEOUT_S = 10.0
# A pull that yields no progress event at all for this long is ended as a registry that timed
# out. Docker sends an event for every chunk downloaded or extracted, so only a registry (or a
# layer download) that stopped answering goes this long without one; Docker itself sets no
# limit on a registry that accepts a connection and never answers.
PULL_STALL_TIMEOUT_S = 300.0
# A question to a registry through Docker (the digest it serves) that takes longer than this:
# Docker's own dial (30 s) and TLS handshake (10 s) limits, and time for the answer.
REGISTRY_ANSWER_TIMEOUT_S = 60.0


class DockerUnavailable(ServiceUnavailable):
    code = "docker_unavailable"


class DockerFailed(ApiError):
    """Docker answered with an error that no service turned into a clearer one.
    ``docker_status`` is Docker's HTTP status (0 for an error inside a progress stream)."""

    status = 502
    code = "docker_error"

    def __init__(self, docker_status: int, docker_message: str) -> None:
        super().__init__(
            f"Docker answered {docker_status}: {docker_message}",
            details={"docker_status": docker_status},
        )
        self.docker_status = docker_status
        self.docker_message = docker_message


# Each typed error below answers a client exactly as DockerFailed does (502, "docker_error")
# wherever no service turns it into a clearer one: the type only says what Docker meant.


class DockerNotFound(DockerFailed):
    """What the call named is not there (Docker's 404): no such container, image, volume,
    network."""


class DockerConflict(DockerFailed):
    """Docker refused because of the state of things (its 409): a name that is taken, an
    image or a volume that a container uses."""


class PortTaken(DockerFailed):
    """A start that Docker refused because something else holds one of the host ports the
    container publishes (another container, or a process on the host)."""

    def __init__(self, docker_status: int, docker_message: str) -> None:
        super().__init__(docker_status, docker_message)
        # Docker names the address it could not bind as IP:PORT ("Bind for 0.0.0.0:22000
        # failed", "listen tcp4 0.0.0.0:22000: bind"): every number after a colon, so that a
        # caller can tell which of its ports it was.
        self.ports_named = frozenset(int(p) for p in re.findall(r":(\d+)\b", docker_message))


class SubnetTaken(DockerFailed):
    """A network create that Docker refused because another network of the engine holds an
    overlapping subnet."""


class StorageLimitRefused(DockerFailed):
    """A create whose size limit (``StorageOpt``) the engine's storage cannot apply: overlay2
    applies one only over XFS mounted with pquota."""


class RegistryFailed(DockerFailed):
    """A pull, or a question to a registry through Docker, that failed; the subclass says how.
    ``reason`` is the detail in our own words ("" where there is none). Show a client that,
    never Docker's message: it can carry what a registry, or whatever else listens where a
    reference points, sent back (a web server's whole 404 page, an SSH banner).

    ``failed_at`` is the ``host[:port]`` whose request failed, where Docker's message proves
    it (see :func:`failed_at`), else None: a registry can send a pull elsewhere (a redirect,
    a token realm), and the kind says what failed, not where."""

    def __init__(self, docker_status: int, docker_message: str, reason: str = "") -> None:
        super().__init__(docker_status, docker_message)
        self.reason = reason
        self.failed_at = failed_at(docker_message)


class RegistryBadAnswer(RegistryFailed):
    """A registry that answered, but not as a registry does."""


class RegistryDenied(RegistryFailed):
    """Docker Hub's answer for a repository that does not exist or is private."""


class RegistryUnauthorized(RegistryFailed):
    """A registry that refused the credentials, or wants some."""


class RegistryNotFound(RegistryFailed):
    """A registry without the repository or the tag."""


class RegistryNotReached(RegistryFailed):
    """The registry could not be reached at all."""


class LayerFailed(RegistryFailed):
    """The registry answered as one, but a layer it serves could not be had."""


@dataclass(frozen=True)
class DockerVersion:
    version: str
    api_version: str
    os: str
    arch: str


@dataclass(frozen=True)
class Image:
    id: str  # "sha256:<64 hex>"
    tags: tuple[str, ...]  # "repo:tag"
    digests: tuple[str, ...]  # "repo@sha256:..."
    size_bytes: int
    created: str  # ISO 8601, UTC
    # What a container of it runs unless told otherwise (known from an inspect, not a list).
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    env: tuple[str, ...] = ()  # "NAME=value", as the image's Config.Env lists them

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class PullProgress:
    """One event of a pull, as Docker reports it: ``layer`` is the layer's short id,
    ``current``/``total`` the bytes done and expected where Docker gives them."""

    status: str
    layer: str | None
    current: int | None
    total: int | None


@dataclass(frozen=True)
class ContainerSummary:
    id: str
    name: str
    image: str  # the reference it was created from (or the image id, once that tag moved)
    image_id: str
    state: str  # created, running, paused, restarting, removing, exited, dead
    labels: Mapping[str, str]
    published: Mapping[int, int]  # container TCP port -> host port, while running
    volumes: tuple[str, ...] = ()  # the named volumes it mounts
    addresses: tuple[str, ...] = ()  # its IPv4 addresses on its networks, while running


@dataclass(frozen=True)
class ContainerEvent:
    action: str  # "create", "start", "die", "destroy", "health_status: healthy", ...
    container_id: str
    time_ns: int  # when Docker saw it, in nanoseconds since the epoch


@dataclass(frozen=True)
class VolumeSummary:
    name: str
    labels: Mapping[str, str]
    created: str  # RFC 3339, as Docker writes it


@dataclass(frozen=True)
class ContainerState:
    running: bool
    status: str
    exit_code: int
    restart_count: int
    pid: int = 0  # its main process on the host while running; 0: none


@dataclass(frozen=True)
class NetworkSummary:
    id: str
    name: str
    labels: Mapping[str, str]
    subnets: tuple[str, ...]  # of its IPAM config, as Docker writes them ("10.213.0.0/24")


@dataclass(frozen=True)
class ImageRemoval:
    """What a removal of an image did: the references it untagged, the image ids it deleted."""

    untagged: tuple[str, ...]
    deleted: tuple[str, ...]


@dataclass(frozen=True)
class DiskEntry:
    id: str  # the container's id, or the volume's name
    name: str
    labels: Mapping[str, str]
    size_bytes: int  # a container's writable layer (SizeRw); a volume's UsageData.Size


@dataclass(frozen=True)
class DiskUsage:
    """What Docker's ``system/df`` says containers and volumes hold on disk."""

    containers: tuple[DiskEntry, ...]
    volumes: tuple[DiskEntry, ...]
    # Images, each by what only it holds (Size less SharedSize): a commit's own layer.
    images: tuple[DiskEntry, ...] = ()


@dataclass(frozen=True)
class ExecResult:
    """A command run in a container to its end (docker exec, attached)."""

    exit_code: int
    output: str  # its stdout and stderr together, as text


@dataclass(frozen=True)
class ImageConfig:
    """What a commit writes as the new image's config (its command, user, Env, labels);
    Docker fills what is empty from the container's own config."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: str
    env: tuple[str, ...]
    labels: Mapping[str, str]


# --- what a create asks of Docker ---


@dataclass(frozen=True)
class BindMount:
    """A directory of the host in the container."""

    source: str  # the host path
    target: str
    read_only: bool


@dataclass(frozen=True)
class VolumeMount:
    """A named volume in the container; Docker makes it, with ``labels``, if it is missing."""

    volume: str
    target: str
    labels: Mapping[str, str]
    # True: a new volume starts empty, without a copy of what the image has at ``target``.
    no_copy: bool


@dataclass(frozen=True)
class Limits:
    """The cgroup limits of a container."""

    shm_size_mib: int  # /dev/shm
    memory_mib: int | None  # None: no limit; swap is counted in (no going past it by swapping)
    cpus: float | None  # None: no limit
    pids: int | None  # None: no limit


@dataclass(frozen=True)
class LogRotation:
    """Docker's json-file log of a container, rotated so one container cannot fill a disk."""

    max_size: str  # as the json-file driver reads it: "10m"
    max_files: int


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a create asks of Docker, in our words; :func:`create_config` writes it as
    Docker's JSON."""

    name: str
    image_id: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: str  # the user that the entrypoint runs as ("0": root)
    env: tuple[str, ...]  # "NAME=value"
    hostname: str
    labels: Mapping[str, str]
    # container TCP port -> (host address, host port) it is published on
    published_ports: Mapping[int, tuple[str, int]]
    mounts: tuple[BindMount | VolumeMount, ...]
    limits: Limits
    capabilities: tuple[str, ...]  # root's only capabilities in it: every other one is dropped
    log_rotation: LogRotation
    network: str | None  # None: Docker's default bridge
    gpu_device_ids: tuple[str, ...]  # through Docker's "nvidia" driver, UUIDs or indices
    init: bool  # Docker's init (tini) as PID 1: it reaps zombies and passes signals on
    restart_unless_stopped: bool  # started again with dockerd (and the host), unless stopped
    # A hard limit on the writable layer (StorageOpt size=, overlay2 on XFS with pquota only).
    storage_size_gb: float | None = None
    # tmpfs mounts: container path -> mount options ("mode=0700,size=16m").
    tmpfs: Mapping[str, str] | None = None


class Docker:
    """Two aiodocker clients for one Docker address, opened and closed by the app: ``client``
    for the quick calls (inspect, list, create, start, stop, exec), each under a time limit,
    and ``streams`` for the calls that last (log streams, the event stream, pulls and the
    questions to registries). Each has its own connection pool, so streams, however many,
    never take a connection that a quick call waits for: aiodocker's one pool (100
    connections) was shared by both, and 100 log follows stopped every other call."""

    def __init__(
        self,
        url: str,
        *,
        quick_call_timeout_s: float = QUICK_CALL_TIMEOUT_S,
        pull_stall_timeout_s: float = PULL_STALL_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.quick_call_timeout_s = quick_call_timeout_s
        self.pull_stall_timeout_s = pull_stall_timeout_s
        self._client: aiodocker.Docker | None = None
        self._streams: aiodocker.Docker | None = None

    async def open(self) -> None:
        # Created here, not in __init__: aiohttp sessions belong to a running loop.
        self._client = aiodocker.Docker(url=self.url)
        self._streams = _stream_client(self.url)

    async def close(self) -> None:
        for client in (self._client, self._streams):
            if client is not None:
                await client.close()
                # aiodocker leaves a connector it was given to its giver.
                await client.connector.close()
        self._client = self._streams = None

    @property
    def client(self) -> aiodocker.Docker:
        """The quick calls' client."""
        if self._client is None:
            raise RuntimeError("Docker client used before open()")
        return self._client

    @property
    def streams(self) -> aiodocker.Docker:
        """The long calls' client, on a pool of its own."""
        if self._streams is None:
            raise RuntimeError("Docker client used before open()")
        return self._streams

    async def version(self) -> DockerVersion:
        async with self.translate_errors():
            data = await self.client.version()
        return DockerVersion(
            version=str(data.get("Version", "")),
            api_version=str(data.get("ApiVersion", "")),
            os=str(data.get("Os", "")),
            arch=str(data.get("Arch", "")),
        )

    async def userns_remapped(self) -> bool:
        """Whether Docker maps a container's root to another uid of the host (userns-remap)."""
        async with self.translate_errors():
            data = await self.client.system.info()
        options = data.get("SecurityOptions") or []
        return any(str(option).startswith("name=userns") for option in options)

    async def list_images(self) -> list[Image]:
        async with self.translate_errors():
            items = await self.client.images.list()
        return [_image_from_list(item) for item in items]

    async def inspect_image(self, ref: str) -> Image | None:
        """The image ``ref`` (id, short id or reference) names, or None."""
        try:
            async with self.translate_errors():
                data = await self.client.images.inspect(ref)
        except DockerNotFound:
            return None
        return _image_from_inspect(data)

    async def pull_image(
        self, repository: str, tag_or_digest: str, *, auth: Mapping[str, str] | None = None
    ) -> AsyncIterator[PullProgress]:
        """Pull, yielding progress, on the streams' pool. No limit on the whole: pulls of
        tens of GB take long; but one that makes no progress for ``pull_stall_timeout_s``
        ends as a registry that timed out. A pull that fails raises a
        :class:`RegistryFailed`."""
        if tag_or_digest.startswith("sha256:") or ":" in tag_or_digest:
            image, tag = f"{repository}@{tag_or_digest}", None
        else:
            image, tag = repository, tag_or_digest
        async with self.translate_errors(timeout_s=None, registry=True):
            stream = self.streams.images.pull(
                image, tag=tag, auth=dict(auth) if auth else None, stream=True
            )
            try:
                while True:
                    try:
                        async with asyncio.timeout(self.pull_stall_timeout_s):
                            event = await anext(stream)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        why = f"no progress for {self.pull_stall_timeout_s:g} s"
                        raise RegistryNotReached(0, why, why) from None
                    yield _progress(event)
            finally:
                if isinstance(stream, AsyncGenerator):  # ends Docker's pull with our request
                    await stream.aclose()

    async def registry_digest(
        self, reference: str, *, registry: str, auth: Mapping[str, str] | None = None
    ) -> str:
        """The digest the registry serves for ``reference`` now ("sha256:..."), asked of the
        registry through Docker without pulling anything (``GET /distribution/NAME/json``);
        a registry that cannot say raises a :class:`RegistryFailed`, as for a pull."""
        headers = {"X-Registry-Auth": compose_auth_header(dict(auth), registry)} if auth else None
        # On the streams' pool: a registry that does not answer holds the call, and Docker
        # sets no limit of its own on one that accepts a connection and stays silent.
        try:
            async with (
                self.translate_errors(timeout_s=None, registry=True),
                asyncio.timeout(REGISTRY_ANSWER_TIMEOUT_S),
            ):
                data = await self.streams._query_json(
                    f"distribution/{reference}/json", headers=headers
                )
        except TimeoutError:
            why = f"no answer within {REGISTRY_ANSWER_TIMEOUT_S:g} s"
            raise RegistryNotReached(0, why, why) from None
        return str(data["Descriptor"]["digest"])

    async def remove_image(self, ref: str, *, force: bool) -> ImageRemoval:
        """Untag ``ref`` and delete the image if no tag is left (all its tags with ``force``).
        A container that uses it is a :class:`DockerConflict`."""
        async with self.translate_errors():
            answer: list[dict[str, str]] = await self.client.images.delete(ref, force=force)
        return ImageRemoval(
            untagged=tuple(item["Untagged"] for item in answer if "Untagged" in item),
            deleted=tuple(item["Deleted"] for item in answer if "Deleted" in item),
        )

    async def list_containers(
        self, *, filters: Mapping[str, list[str]] | None = None
    ) -> list[ContainerSummary]:
        """All containers, running or not, that match ``filters`` (one Docker call)."""
        params: dict[str, Any] = {"all": "1"}
        if filters:
            params["filters"] = json.dumps(filters)
        async with self.translate_errors():
            containers = await self.client.containers.list(**params)
        return [_container_summary(container) for container in containers]

    async def create_container(self, spec: ContainerSpec) -> str:
        """Create (not start) a container; its full id. A name that is taken is a
        :class:`DockerConflict`."""
        async with self.translate_errors():
            container = await self.client.containers.create(create_config(spec), name=spec.name)
        return container.id

    async def put_archive(self, container_id: str, path: str, tar: bytes) -> None:
        """Unpack ``tar`` at ``path`` in the container (docker cp); works before it starts."""
        async with self.translate_errors():
            container = self.client.containers.container(container_id)
            await container.put_archive(path, tar)  # type: ignore[no-untyped-call]

    async def start_container(self, container_id: str) -> None:
        """Start it; a host port that something else holds is a :class:`PortTaken`."""
        async with self.translate_errors(timeout_s=60):
            await self.client.containers.container(container_id).start()

    async def stop_container(self, container_id: str, *, grace_s: int = 10) -> None:
        async with self.translate_errors(timeout_s=grace_s + 30):
            await self.client.containers.container(container_id).stop(t=grace_s)

    async def restart_container(self, container_id: str, *, grace_s: int = 10) -> None:
        async with self.translate_errors(timeout_s=grace_s + 60):
            await self.client.containers.container(container_id).restart(t=grace_s)

    async def pause_container(self, container_id: str) -> None:
        """Freeze its processes (the cgroup freezer); one that is not running, or is paused
        already, is a :class:`DockerConflict`."""
        async with self.translate_errors():
            await self.client.containers.container(container_id).pause()

    async def unpause_container(self, container_id: str) -> None:
        """Thaw its processes; one that is not paused is a :class:`DockerConflict`."""
        async with self.translate_errors():
            await self.client.containers.container(container_id).unpause()

    async def remove_container(self, container_id: str, *, force: bool) -> None:
        async with self.translate_errors(timeout_s=60):
            await self.client.containers.container(container_id).delete(force=force, v=True)

    async def exec_detached(
        self, container_id: str, command: list[str], *, user: str = "0"
    ) -> None:
        """Run ``command`` in the running container and return at once (docker exec -d)."""
        async with self.translate_errors():
            container = self.client.containers.container(container_id)
            execution = await container.exec(command, stdout=False, stderr=False, user=user)
            await execution.start(detach=True)

    async def exec_run(
        self, container_id: str, command: list[str], *, user: str = "0", timeout_s: float = 60
    ) -> ExecResult:
        """Run ``command`` in the running container to its end (docker exec, attached): its
        exit status and output. A paused or stopped container is a :class:`DockerConflict`."""
        async with self.translate_errors(timeout_s=timeout_s):
            container = self.client.containers.container(container_id)
            execution = await container.exec(command, stdout=True, stderr=True, user=user)
            chunks: list[bytes] = []
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    chunks.append(message.data)
            # The stream ends as the process does; Docker may say so a moment later.
            info = await execution.inspect()
            for _ in range(100):
                if not info.get("Running"):
                    break
                await asyncio.sleep(0.01)
                info = await execution.inspect()
            exit_code = info.get("ExitCode")
        return ExecResult(
            exit_code=-1 if exit_code is None else int(exit_code),
            output=b"".join(chunks).decode(errors="replace"),
        )

    async def commit_container(
        self, container_id: str, config: ImageConfig, *, message: str, pause: bool
    ) -> str:
        """Docker's commit of the container's writable layer (mounts and volumes are left
        out), untagged, paused while it copies where ``pause``; the new image's id."""
        body = {
            # [] rather than null: Docker takes the container's own where a field is empty.
            "Entrypoint": list(config.entrypoint),
            "Cmd": list(config.cmd),
            "User": config.user,
            "Env": list(config.env),
            "Labels": dict(config.labels),
        }
        # A big writable layer takes minutes to copy: a long limit, not the quick one.
        async with self.translate_errors(timeout_s=1800):
            container = self.client.containers.container(container_id)
            answer = await container.commit(message=message or None, config=body, pause=pause)
        return str(answer["Id"])

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        """Point ``repository:tag`` at the image (docker tag): a tag it named before moves."""
        async with self.translate_errors():
            await self.client.images.tag(image_id, repository, tag=tag)

    async def _inspect(self, container_id: str) -> dict[str, Any] | None:
        """Docker's inspect of the container, or None when it is gone."""
        try:
            async with self.translate_errors():
                data: dict[str, Any] = await self.client.containers.container(container_id).show()
        except DockerNotFound:
            return None
        return data

    async def container_state(self, container_id: str) -> ContainerState | None:
        """The container's state, or None when it is gone."""
        data = await self._inspect(container_id)
        if data is None:
            return None
        state = data.get("State") or {}
        return ContainerState(
            running=bool(state.get("Running")),
            status=str(state.get("Status", "")),
            exit_code=int(state.get("ExitCode") or 0),
            restart_count=int(data.get("RestartCount") or 0),
            pid=int(state.get("Pid") or 0),
        )

    async def container_summary(self, container_id: str) -> ContainerSummary | None:
        """The container as the list shows it, read from Docker's inspect, or None when it is
        gone. Unlike the list, inspect reads the container itself: right after an event (or a
        change of ours) the list may still show what was before."""
        data = await self._inspect(container_id)
        if data is None:
            return None
        config = data.get("Config") or {}
        ports = (data.get("NetworkSettings") or {}).get("Ports") or {}
        published = {}
        for port, bindings in ports.items():
            number, _, protocol = port.partition("/")
            if protocol == "tcp" and bindings and number.isdecimal():
                host_port = str(bindings[0].get("HostPort") or "")
                if host_port.isdecimal():
                    published[int(number)] = int(host_port)
        return ContainerSummary(
            id=data["Id"],
            name=str(data.get("Name") or "").lstrip("/"),
            image=str(config.get("Image") or ""),
            image_id=str(data.get("Image") or ""),
            state=str((data.get("State") or {}).get("Status") or ""),
            labels=config.get("Labels") or {},
            published=published,
            volumes=tuple(
                str(m["Name"])
                for m in data.get("Mounts") or []
                if m.get("Type") == "volume" and m.get("Name")
            ),
            addresses=_addresses(data.get("NetworkSettings")),
        )

    async def container_logs(self, container_id: str, *, tail: int = 40) -> str:
        async with self.translate_errors():
            lines = await self.client.containers.container(container_id).log(
                stdout=True, stderr=True, tail=tail
            )
        return "".join(lines)

    async def container_output(
        self, container_id: str, *, follow: bool, tail: int | None, timestamps: bool
    ) -> AsyncGenerator[bytes]:
        """The container's stdout and stderr as Docker stored them, chunk by chunk, without
        holding them all in memory; with ``follow``, until the container stops. On the
        streams' pool; Docker's answer must begin within the quick call limit."""
        params = {
            "stdout": "1",
            "stderr": "1",
            "follow": "1" if follow else "0",
            "timestamps": "1" if timestamps else "0",
            "tail": "all" if tail is None else str(tail),
        }
        async with self.translate_errors():
            query = self.streams._query(  # aiodocker's own log() decodes and lists it all
                f"containers/{container_id}/logs", params=params, timeout=None
            )
            response = await query.__aenter__()
        try:
            async with self.translate_errors(timeout_s=None):
                # Never a TTY here: each frame is an 8-byte header (stream, size) + payload.
                while True:
                    try:
                        header = await response.content.readexactly(8)
                    except asyncio.IncompleteReadError:
                        return
                    size = int.from_bytes(header[4:8], "big")
                    yield await response.content.readexactly(size)
        finally:
            response.close()  # aiodocker's _query leaves a response to its caller
            await query.__aexit__(None, None, None)

    @asynccontextmanager
    async def container_events(
        self, *, filters: Mapping[str, list[str]]
    ) -> AsyncIterator[AsyncIterator[ContainerEvent]]:
        """Docker's event stream of containers that match ``filters``, from the moment this
        is entered (the stream is open then) until Docker or the caller ends it, on the
        streams' pool. A stream that breaks raises DockerUnavailable."""
        params = {"filters": json.dumps({**filters, "type": ["container"]})}
        async with self.translate_errors():
            query = self.streams._query("events", params=params, timeout=None)
            response = await query.__aenter__()
        try:
            yield self._events(response)
        finally:
            response.close()  # aiodocker's _query leaves a response to its caller
            await query.__aexit__(None, None, None)

    async def _events(self, response: aiohttp.ClientResponse) -> AsyncIterator[ContainerEvent]:
        async with self.translate_errors(timeout_s=None):
            async for line in response.content:
                if not line.strip():
                    continue
                item = json.loads(line)
                actor = item.get("Actor") or {}
                yield ContainerEvent(
                    action=str(item.get("Action") or item.get("status") or ""),
                    container_id=str(actor.get("ID") or item.get("id") or ""),
                    time_ns=int(item.get("timeNano") or 0),
                )
        raise DockerUnavailable(f"Docker at {self.url} ended its event stream")

    @asynccontextmanager
    async def translate_errors(
        self, *, timeout_s: float | Literal["quick"] | None = "quick", registry: bool = False
    ) -> AsyncIterator[None]:
        """Run a block of Docker calls; an unreachable or stuck engine becomes
        :class:`DockerUnavailable`, any other Docker error the :class:`DockerFailed` that
        :func:`docker_error` chooses (``registry``: the block pulls or asks a registry).
        ``timeout_s`` "quick" is the limit of a quick call, None no limit."""
        if timeout_s == "quick":
            timeout_s = self.quick_call_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                yield
        except TimeoutError:
            raise DockerUnavailable(
                f"Docker at {self.url} did not answer within {timeout_s:g} s"
            ) from None
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise DockerUnavailable(
                    f"Docker is not reachable at {self.url}: {_connection_reason(exc)}"
                ) from None
            raise docker_error(exc.status, exc.message, registry=registry) from None
        except aiohttp.ClientError as exc:
            # A connection that breaks mid-answer (dockerd stopping) is not a DockerError.
            raise DockerUnavailable(f"Docker at {self.url} dropped the connection: {exc}") from None

    # --- volumes ---

    async def list_volumes(
        self, *, filters: Mapping[str, list[str]] | None = None
    ) -> list[VolumeSummary]:
        async with self.translate_errors():
            answer = await self.client.volumes.list(filters=filters)  # type: ignore[no-untyped-call]
        return [
            VolumeSummary(
                name=item["Name"],
                labels=item.get("Labels") or {},
                created=str(item.get("CreatedAt") or ""),
            )
            for item in answer.get("Volumes") or []
        ]

    async def volume(self, name: str) -> VolumeSummary | None:
        """One volume by name, or None when there is none."""
        try:
            async with self.translate_errors():
                item = await aiodocker.volumes.DockerVolume(self.client, name).show()  # type: ignore[no-untyped-call]
        except DockerNotFound:
            return None
        return VolumeSummary(
            name=item["Name"],
            labels=item.get("Labels") or {},
            created=str(item.get("CreatedAt") or ""),
        )

    async def create_volume(self, name: str, *, labels: Mapping[str, str]) -> None:
        """A local volume; Docker answers with the existing one when the name is taken."""
        async with self.translate_errors():
            await self.client.volumes.create({"Name": name, "Labels": dict(labels)})  # type: ignore[no-untyped-call]

    async def remove_volume(self, name: str) -> None:
        """Remove it; one that a container mounts is a :class:`DockerConflict`."""
        async with self.translate_errors(timeout_s=60):
            await aiodocker.volumes.DockerVolume(self.client, name).delete()  # type: ignore[no-untyped-call]

    # --- networks ---

    async def list_networks(
        self, *, filters: Mapping[str, list[str]] | None = None
    ) -> list[NetworkSummary]:
        """Every network of the engine that matches ``filters`` (one Docker call)."""
        async with self.translate_errors():
            items = await self.client.networks.list(filters=filters)
        return [_network_summary(item) for item in items]

    async def create_network(self, name: str, *, subnet: str, labels: Mapping[str, str]) -> str:
        """A bridge network on ``subnet`` (its gateway the first address); its id. Docker
        refuses a name that exists (:class:`DockerConflict`) and a subnet that overlaps
        another network's (:class:`SubnetTaken`)."""
        config = {
            "Name": name,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Labels": dict(labels),
            "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet}]},
        }
        async with self.translate_errors():
            network = await self.client.networks.create(config)
        return str(network.id)

    async def remove_network(self, network_id: str) -> None:
        async with self.translate_errors():
            network = aiodocker.networks.DockerNetwork(self.client, network_id)  # type: ignore[no-untyped-call]
            await network.delete()

    # --- disk ---

    async def disk_usage(self, *, timeout_s: float = 120) -> DiskUsage:
        """Docker's ``GET /system/df``: the size of each container's writable layer
        (``SizeRw``) and of each local volume (``UsageData.Size``), in bytes; a size that
        Docker could not give (-1, or none) is left out. Docker walks the layers and volumes
        to answer, so it is slow on a big host: call it on a slow cadence, never in a request."""
        async with self.translate_errors(timeout_s=timeout_s):
            data = await self.client._query_json("system/df")
        containers = tuple(
            DiskEntry(
                id=str(item["Id"]),
                name=str((item.get("Names") or ["/"])[0]).lstrip("/"),
                labels=item.get("Labels") or {},
                size_bytes=size,
            )
            for item in data.get("Containers") or []
            if isinstance(size := item.get("SizeRw"), int) and size >= 0
        )
        volumes = tuple(
            DiskEntry(
                id=str(item["Name"]),
                name=str(item["Name"]),
                labels=item.get("Labels") or {},
                size_bytes=size,
            )
            for item in data.get("Volumes") or []
            if isinstance(size := (item.get("UsageData") or {}).get("Size"), int) and size >= 0
        )
        images = tuple(
            DiskEntry(
                id=str(item["Id"]),
                name=str((item.get("RepoTags") or [""])[0]),
                labels=item.get("Labels") or {},
                size_bytes=size - max(int(item.get("SharedSize") or 0), 0),
            )
            for item in data.get("Images") or []
            if isinstance(size := item.get("Size"), int) and size >= 0
        )
        return DiskUsage(containers=containers, volumes=volumes, images=images)


def _stream_client(url: str) -> aiodocker.Docker:
    """The streams' client. On a Unix socket (the usual Docker address) its pool has no
    limit: how many streams there are is capped per user, above (``max_streams_per_user``),
    and a limit here would only make one user's streams wait behind another's. Elsewhere
    aiodocker's own pool (100 connections), still apart from the quick calls'."""
    if url.startswith("unix://"):
        connector = aiohttp.UnixConnector(url.removeprefix("unix://"), limit=0)
        return aiodocker.Docker(url="unix://localhost", connector=connector)
    return aiodocker.Docker(url=url)


# --- Docker's errors in our words ---

# Docker's words for a host port that something else holds (moby's port allocator, and its
# userland proxy when a process of the host binds the port).
_PORT_TAKEN = ("port is already allocated", "address already in use")
# Docker's words for a subnet that another network of the engine holds already (libnetwork's
# IPAM: "Pool overlaps with other one on this address space").
_SUBNET_TAKEN = ("overlaps",)
# Docker 20.10's refusal of a StorageOpt size: "--storage-opt is supported only for overlay
# over xfs with 'pquota' mount option" (and the other drivers' wordings of it).
_STORAGE_LIMIT_REFUSED = ("storage-opt", "storage opt", "storageopt")

# What a registry's failure, as Docker passes it on, was: each list holds (words in Docker's
# message, lower-cased; what we call it), first match first.
#
# A registry that answered, but not as a registry does (Go's net/http and distribution's
# client). Looked for first: what follows these words is the other side's text.
_BAD_ANSWERS = (
    (r"received unexpected http status: (\d{3})", "unexpected HTTP status {0}"),
    (r"error parsing http (\d{3}) response body",
     "HTTP status {0} with a body that is not a registry's"),
    (r"malformed http", "an answer that is not HTTP"),
    (r"error unmarshalling content|unsupported manifest media type|manifest invalid",
     "content that is not an image manifest"),
    (r"toomanyrequests|too many requests", "too many requests (a rate limit)"),
    (r"\beof\b", "the connection closed before a whole answer came"),
)  # fmt: skip
# Docker Hub's answer for a repository that does not exist or is private.
_NOT_FOUND_OR_PRIVATE = "pull access denied"
# A registry that refused or wanted credentials (distribution 2.x and Docker Hub).
_AUTH_FAILURES = ("unauthorized", "authentication required", "no basic auth credentials")
# A registry without the repository or the tag.
_NOT_FOUND = ("manifest unknown", "name unknown", "not found", "does not exist")
# Go's network errors as Docker passes them on (net, crypto/tls, net/http): the registry could
# not be reached at all.
_UNREACHABLE = (
    ("connection refused", "connection refused"),
    ("no such host", "no such host"),
    ("server misbehaving", "no such host"),  # the resolver's word for a name it cannot look up
    ("name resolution", "no such host"),
    ("connection reset", "connection reset"),
    ("network is unreachable", "network unreachable"),
    ("no route to host", "no route to host"),
    ("timeout", "timed out"),
    ("deadline exceeded", "timed out"),
    ("x509:", "its TLS certificate is not trusted"),
    ("tls:", "TLS failed"),
    ("server gave http response to https client", "it answers HTTP, not HTTPS"),
    ("dial tcp", "cannot connect"),
)
# Failures after the registry answered as one: the layers it serves.
_LAYER_FAILURES = (
    ("unknown blob", "a layer is missing from the registry"),
    ("blob unknown", "a layer is missing from the registry"),
    ("verification failed", "a layer's content does not match its digest"),
    ("no matching manifest", "the image has no variant for this host's platform"),
)


def docker_error(status: int, message: str, *, registry: bool = False) -> DockerFailed:
    """The typed error for Docker's answer: its HTTP ``status`` (0 for an error inside a
    progress stream) and its ``message``. ``registry``: the answer to a pull or to a
    question to a registry, whose errors are the registry's (see :func:`_registry_error`).
    The one place that reads Docker's status codes and words."""
    if registry:
        return _registry_error(status, message)
    if status == 404:
        return DockerNotFound(status, message)
    if status == 409:
        return DockerConflict(status, message)
    # Docker answers these two with a 500 (a start) and a 403 (a network create).
    if any(words in message for words in _PORT_TAKEN):
        return PortTaken(status, message)
    if any(words in message for words in _SUBNET_TAKEN):
        return SubnetTaken(status, message)
    if any(words in message.lower() for words in _STORAGE_LIMIT_REFUSED):
        return StorageLimitRefused(status, message)
    return DockerFailed(status, message)


# Where a registry's failure happened, when Docker's message proves it. Go's HTTP client writes
# a failed request as `Op "URL": error` (net/url's Error: the URL is the last one asked, after
# any redirect; Go quotes it with %q, so it holds no bare '"'); Docker chains one for each
# request inside another (`Head "REGISTRY/…": Get "REALM/token?…": dial tcp …` for a token
# realm). Only a chain that starts the message counts, and only when what follows its last
# link is Go's or Docker's own words about that request (it never reached an answer, or the
# answer was not HTTP): those name no other place. An answer's text (a registry's error, a web
# page) can follow a link of a request that did not fail there itself (a token realm's answer
# follows the registry's link), so it proves nothing.
_REQUEST_LINK = re.compile(r'(?:Get|Head|Post|Put|Patch|Delete) "([^"\\]+)": ')
_OWN_WORDS = re.compile(
    r"dial tcp|read tcp|write tcp|x509: |tls: |remote error: tls: |net/http: "
    r"|http: server gave HTTP response to HTTPS client$|malformed HTTP |(unexpected )?EOF$"
    r"|context deadline exceeded$|no basic auth credentials$"
)


def failed_at(message: str) -> str | None:
    """The ``host[:port]`` of the request whose failure Docker's ``message`` reports, as the
    URL names it (``127.0.0.1:5000``, ``registry.lab``), or None where the message does not
    prove one (see ``_REQUEST_LINK``)."""
    url, end = None, 0
    while link := _REQUEST_LINK.match(message, end):
        url, end = link.group(1), link.end()
    if url is None or not _OWN_WORDS.match(message, end):
        return None
    return urlsplit(url).netloc.rpartition("@")[2] or None


def _registry_error(status: int, message: str) -> RegistryFailed:
    said = message.lower()
    for pattern, phrase in _BAD_ANSWERS:
        if found := re.search(pattern, said):
            return RegistryBadAnswer(status, message, phrase.format(*found.groups()))
    if _NOT_FOUND_OR_PRIVATE in said:
        return RegistryDenied(status, message)
    if any(words in said for words in _AUTH_FAILURES):
        return RegistryUnauthorized(status, message)
    if status == 404 or any(words in said for words in _NOT_FOUND):
        return RegistryNotFound(status, message)
    for words, phrase in _UNREACHABLE:
        if words in said:
            return RegistryNotReached(status, message, phrase)
    for words, phrase in _LAYER_FAILURES:
        if words in said:
            return LayerFailed(status, message, phrase)
    return RegistryFailed(status, message)


# --- our types as Docker's JSON ---

MIB = 1024 * 1024


def create_config(spec: ContainerSpec) -> dict[str, Any]:
    """Docker's JSON for ``spec``: the body of ``POST /containers/create``."""
    host_config: dict[str, Any] = {
        "Init": spec.init,
        "PortBindings": {
            f"{inside}/tcp": [{"HostIp": address, "HostPort": str(outside)}]
            for inside, (address, outside) in spec.published_ports.items()
        },
        "Mounts": [_mount(mount) for mount in spec.mounts],
        **_limits(spec.limits),
        "RestartPolicy": {"Name": "unless-stopped" if spec.restart_unless_stopped else "no"},
        "CapDrop": ["ALL"],
        "CapAdd": list(spec.capabilities),
        "LogConfig": {
            "Type": "json-file",
            "Config": {
                "max-size": spec.log_rotation.max_size,
                "max-file": str(spec.log_rotation.max_files),
            },
        },
    }
    if spec.storage_size_gb:
        host_config["StorageOpt"] = {"size": f"{round(spec.storage_size_gb * 1024)}M"}
    if spec.network is not None:
        host_config["NetworkMode"] = spec.network
    if spec.tmpfs:
        host_config["Tmpfs"] = dict(spec.tmpfs)
    if spec.gpu_device_ids:
        # Capabilities must be sent: without them no device driver matches the request.
        host_config["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(spec.gpu_device_ids), "Capabilities": [["gpu"]]}
        ]
    return {
        "Image": spec.image_id,
        "Entrypoint": list(spec.entrypoint),
        "Cmd": list(spec.cmd),
        "User": spec.user,
        "Env": list(spec.env),
        "Hostname": spec.hostname,
        "ExposedPorts": {f"{inside}/tcp": {} for inside in spec.published_ports},
        "Labels": dict(spec.labels),
        "HostConfig": host_config,
    }


def _mount(mount: BindMount | VolumeMount) -> dict[str, Any]:
    if isinstance(mount, BindMount):
        return {
            "Type": "bind",
            "Source": mount.source,
            "Target": mount.target,
            "ReadOnly": mount.read_only,
        }
    return {
        "Type": "volume",
        "Source": mount.volume,
        "Target": mount.target,
        "VolumeOptions": {"NoCopy": mount.no_copy, "Labels": dict(mount.labels)},
    }


def _limits(limits: Limits) -> dict[str, int]:
    config = {"ShmSize": limits.shm_size_mib * MIB}
    if limits.memory_mib is not None:
        # Swap counted in: a container cannot go past its limit by swapping.
        config["Memory"] = config["MemorySwap"] = limits.memory_mib * MIB
    if limits.cpus is not None:
        config["NanoCpus"] = round(limits.cpus * 1e9)
    if limits.pids is not None:
        config["PidsLimit"] = limits.pids
    return config


# --- Docker's JSON as our types ---


def _connection_reason(exc: aiodocker.DockerError) -> str:
    # aiodocker's message is "Cannot connect to Docker Engine via URL [... [reason]]": keep
    # the innermost reason.
    reasons = re.findall(r"\[([^\[\]]+)\]", exc.message)
    return reasons[-1] if reasons else exc.message


def _iso_from_unix(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _none_tags(values: list[str] | None, none: str) -> tuple[str, ...]:
    # Docker lists "<none>:<none>" / "<none>@<none>" for an untagged image; we list nothing.
    return tuple(v for v in values or () if v != none)


def _image_from_list(item: Mapping[str, Any]) -> Image:
    return Image(
        id=item["Id"],
        tags=_none_tags(item.get("RepoTags"), "<none>:<none>"),
        digests=_none_tags(item.get("RepoDigests"), "<none>@<none>"),
        size_bytes=int(item.get("Size") or 0),
        created=_iso_from_unix(int(item.get("Created") or 0)),
    )


def _image_from_inspect(data: Mapping[str, Any]) -> Image:
    config = data.get("Config") or {}
    return Image(
        id=data["Id"],
        tags=_none_tags(data.get("RepoTags"), "<none>:<none>"),
        digests=_none_tags(data.get("RepoDigests"), "<none>@<none>"),
        size_bytes=int(data.get("Size") or 0),
        created=str(data.get("Created", "")),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        user=str(config.get("User") or ""),
        env=tuple(str(entry) for entry in config.get("Env") or ()),
    )


def _progress(event: Mapping[str, Any]) -> PullProgress:
    detail = event.get("progressDetail") or {}
    current, total = detail.get("current"), detail.get("total")
    status = str(event.get("status", ""))
    # In "Pulling from REPO" Docker's id is the tag, not a layer.
    layer = None if status.startswith("Pulling from") else event.get("id")
    return PullProgress(
        status=status,
        layer=layer,
        current=int(current) if current is not None else None,
        total=int(total) if total is not None else None,
    )


def _container_summary(container: aiodocker.containers.DockerContainer) -> ContainerSummary:
    names = container["Names"] or [""]
    published = {
        int(port["PrivatePort"]): int(port["PublicPort"])
        for port in container["Ports"] or []
        if port.get("PublicPort") and port.get("Type") == "tcp"
    }
    return ContainerSummary(
        id=container["Id"],
        name=names[0].lstrip("/"),
        image=container["Image"] or "",
        image_id=container["ImageID"] or "",
        state=container["State"] or "",
        labels=container["Labels"] or {},
        published=published,
        volumes=tuple(
            str(mount["Name"])
            for mount in _mounts(container)
            if mount.get("Type") == "volume" and mount.get("Name")
        ),
        addresses=_addresses(_field(container, "NetworkSettings")),
    )


def _field(container: aiodocker.containers.DockerContainer, key: str) -> Any:
    # A DockerContainer is indexed like a dict, but has no get().
    return container[key] if key in container else None  # noqa: SIM401


def _addresses(settings: Mapping[str, Any] | None) -> tuple[str, ...]:
    networks = (settings or {}).get("Networks") or {}
    return tuple(str(n["IPAddress"]) for n in networks.values() if n and n.get("IPAddress"))


def _mounts(container: aiodocker.containers.DockerContainer) -> list[Mapping[str, Any]]:
    # A DockerContainer is indexed like a dict, but has no get().
    if "Mounts" not in container:
        return []
    mounts: list[Mapping[str, Any]] = container["Mounts"] or []
    return mounts


def _network_summary(item: Mapping[str, Any]) -> NetworkSummary:
    ipam = item.get("IPAM") or {}
    return NetworkSummary(
        id=item["Id"],
        name=item.get("Name") or "",
        labels=item.get("Labels") or {},
        subnets=tuple(str(c["Subnet"]) for c in ipam.get("Config") or [] if c.get("Subnet")),
    )

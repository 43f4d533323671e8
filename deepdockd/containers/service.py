"""Containers: create (with GPUs and an SSH login), list, start, stop, restart, remove.

Only containers labelled with this daemon's namespace exist here; any other container is
invisible, even by name. Everything the service knows is in those labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import re
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources

from deepdockd import labels
from deepdockd.config import Config, SharedMount
from deepdockd.containers.allocation import (
    SSH_CONTAINER_PORT,
    Gpu,
    PortReleases,
    Reservation,
    Reservations,
    check_gpus_free,
    choose_service_ports,
    choose_ssh_port,
)
from deepdockd.containers.homes import HomeVolume, HomeVolumes
from deepdockd.containers.networks import OwnerNetworks
from deepdockd.containers.passwords import sha512_crypt_hash
from deepdockd.containers.resources import Resources, resources_for
from deepdockd.containers.ssh_server import BUNDLE_DIR, SshServerBundle, bundled_server
from deepdockd.containers.sshkeys import HostKey, PublicHostKey
from deepdockd.containers.view import ContainerView
from deepdockd.docker import ContainerSummary, Docker, DockerFailed, Image
from deepdockd.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)
from deepdockd.fairshare.leases import (
    LeaseExpired,
    lease_from,
    lease_hours_for,
    lease_of,
    now_utc,
)
from deepdockd.fairshare.policy import PolicyHolder
from deepdockd.fairshare.quotas import Ask, QuotaLimits, Usage, check_quota, usage_of
from deepdockd.fairshare.records import (
    EMPTY,
    ContainerRecords,
    Lease,
    Record,
    RecordsUnreadable,
    iso,
)
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.images.service import ImageService
from deepdockd.tokens import Caller

log = logging.getLogger(__name__)

BOOTSTRAP_DIR = "/.deepdockd"
# How often a create looks for sshd's greeting: each look is a Docker inspect and a connect.
SSH_POLL_INTERVAL_S = 0.05
_FAILED_MARK = "deepdockd-bootstrap: FAILED: "
_NO_SHELL = "exec /bin/sh failed: No such file or directory"
# Docker's words for a host port that something else holds.
_PORT_TAKEN = ("port is already allocated", "address already in use")
# The only capabilities root has in a container: Docker's default set less NET_RAW (raw
# frames: forged ARP replies), MKNOD, SETFCAP, SETPCAP and NET_BIND_SERVICE (Docker >= 20.10
# lets any process bind a container's low ports). Each kept one was measured (README,
# Security): without it, on Debian with OpenSSH,
CONTAINER_CAPABILITIES = (
    "CHOWN",  # useradd and dpkg fail: they give files to users and groups
    "DAC_OVERRIDE",  # apt fails, and root cannot write into a user's home (the bootstrap)
    "FOWNER",  # the bootstrap cannot chmod the user's ~/.ssh; apt and sudo's chmod fail
    "FSETID",  # dpkg silently drops setgid bits (openssh-client's ssh-agent lost its)
    "KILL",  # root (sudo) cannot signal another user's processes
    "SETGID",  # sshd's privilege separation, apt's sandbox user, su and sudo fail
    "SETUID",
    "SYS_CHROOT",  # sshd's pre-login child cannot chroot: every login is refused
    # sshd built with Linux audit (Debian's, Ubuntu's, RHEL's) writes a login record for every
    # session with a terminal and ends the session when the kernel refuses it: without this,
    # `ssh host` (interactive) is closed at once; only commands without a terminal work.
    "AUDIT_WRITE",
)


class SshUnavailable(InvalidInput):
    """The image cannot give the container an SSH login."""

    code = "ssh_unavailable"


class SshTimeout(ApiError):
    status = 504
    code = "ssh_timeout"


@dataclass(frozen=True)
class CreateRequest:
    name: str
    image: str
    user_name: str
    owner: str
    password: str | None = None  # None: key logins only
    env: dict[str, str] = field(default_factory=dict)
    gpu_ids: list[int] = field(default_factory=list)
    ssh_keys: list[str] = field(default_factory=list)
    persistent_home: bool = True
    command: list[str] | None = None  # None: the image's Cmd
    shm_size_mb: int | None = None  # None: the config's default, for these three
    memory_mb: int | None = None
    cpus: float | None = None
    ports: list[int] = field(default_factory=list)  # container ports to publish
    lease_hours: float | None = None  # None: the config's default_lease_hours
    idle_reclaim: bool = True  # False (admins only): never stopped for idle GPUs
    # The container's own SSH host key, made with the request: its public half goes into a
    # label, its private half into the container with the bootstrap.
    host_key: HostKey = field(default_factory=HostKey.generate, compare=False)

    def __repr__(self) -> str:  # never let a password reach a log line or a traceback
        return f"CreateRequest(name={self.name!r}, image={self.image!r}, user={self.user_name!r})"


@dataclass(frozen=True)
class ManagedContainer:
    id: str
    name: str
    state: str
    image: str  # the reference its create asked for
    image_id: str  # the image it runs: what that reference named when it was created
    created: str  # RFC 3339 with nanoseconds
    ssh_port: int | None  # the allocated port, running or not
    published_ssh_port: int | None  # the port SSH answers on now (None unless running)
    gpu_indices: list[int]
    gpu_uuids: list[str]
    owner: str
    ssh_user: str
    ssh_host_keys: list[PublicHostKey]  # the container's own, as its sshd presents them
    ports: dict[int, int]  # container port -> host port, allocated (running or not)
    memory_mb: int | None  # None: no limit
    cpus: float | None  # None: no limit
    shm_size_mb: int | None  # None: made before deepdockd set it (Docker's 64 MiB)
    home_volume: str | None  # None: a throwaway home
    expires_at: datetime | None  # the end of its lease; None: no lease
    lease_set_at: datetime | None  # when that end was set
    stopped_reason: str | None  # why the reaper stopped it, while it is not running
    idle_reclaim: bool  # False: never stopped for idle GPUs

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @classmethod
    def from_summary(cls, summary: ContainerSummary, record: Record = EMPTY) -> ManagedContainer:
        """The container as its labels and its fair-share ``record`` describe it."""
        label = summary.labels.get
        port = label(labels.SSH_PORT, "")
        lease = lease_of(summary.labels, record)
        return cls(
            id=summary.id,
            name=summary.name,
            state=summary.state,
            # Containers made before these labels: what Docker says it was created from.
            image=label(labels.IMAGE) or summary.image,
            image_id=label(labels.IMAGE_ID) or summary.image_id,
            created=label(labels.CREATED, ""),
            ssh_port=int(port) if port.isdecimal() else None,
            published_ssh_port=summary.published.get(SSH_CONTAINER_PORT),
            gpu_indices=labels.gpu_indices(summary.labels),
            gpu_uuids=[u for u in label(labels.GPU_UUIDS, "").split(",") if u],
            owner=label(labels.OWNER, ""),
            ssh_user=label(labels.SSH_USER, ""),
            ssh_host_keys=[
                key
                for line in labels.ssh_host_keys(summary.labels)
                if (key := PublicHostKey.parse(line)) is not None
            ],
            ports=labels.ports(summary.labels),
            memory_mb=_int_label(label(labels.MEMORY_MB, "")),
            cpus=_float_label(label(labels.CPUS, "")),
            shm_size_mb=_int_label(label(labels.SHM_SIZE_MB, "")),
            home_volume=label(labels.HOME_VOLUME) or None,
            expires_at=lease.expires_at,
            lease_set_at=lease.set_at,
            stopped_reason=record.stopped_reason if summary.state != "running" else None,
            idle_reclaim=label(labels.IDLE_RECLAIM) != "false",
        )


class ContainerService:
    def __init__(
        self,
        docker: Docker,
        images: ImageService,
        gpus: GpuSampler,
        config: Config,
        view: ContainerView,
        *,
        policy: PolicyHolder | None = None,
        records: ContainerRecords | None = None,
    ) -> None:
        self._docker = docker
        self._view = view
        self._images = images
        self._gpus = gpus
        self._config = config
        self.homes = HomeVolumes(docker, config)
        self.policy = policy if policy is not None else PolicyHolder(config)
        self.records = records if records is not None else ContainerRecords(config.state_dir)
        # Containers the reaper is stopping: a start or restart meanwhile is refused.
        self._reclaiming: set[str] = set()
        # When each container was last started through the API (time.monotonic()): the
        # reaper's idle clock of a container starts there.
        self.started_at: dict[str, float] = {}
        # Held while a port or GPUs are chosen; the choice is then a reservation until Docker
        # has the container running.
        self._allocation = asyncio.Lock()
        self._reservations = Reservations()
        self._port_releases = PortReleases()
        # Each owner's containers on a network of the owner's own (network_isolation); the
        # network of an owner whose create is in flight is never taken away.
        self._networks = OwnerNetworks(
            docker,
            config,
            in_flight=lambda: [h.labels[labels.OWNER] for h in self._reservations.holders()],
        )

    # --- reading ---

    async def list_all(self, caller: Caller) -> list[ManagedContainer]:
        """The caller's containers (an admin's: all of this namespace's), from the live view
        (or one Docker call while it is stale), whatever their number."""
        summaries = await self._view.summaries()
        return sorted(
            (self.describe(s) for s in summaries if _may_see(caller, s)),
            key=lambda c: c.created,
            reverse=True,  # newest first, as Docker lists them
        )

    async def get(self, name: str, caller: Caller) -> ManagedContainer:
        """The container, if the caller may see it: another user's is as absent as one that
        does not exist, so that names do not leak."""
        for summary in await self._view.summaries():
            if summary.name == name and _may_see(caller, summary):
                return self.describe(summary)
        raise NotFound(f"no container {name!r}", details={"name": name})

    def describe(self, summary: ContainerSummary) -> ManagedContainer:
        return ManagedContainer.from_summary(summary, self.records.get(summary.id))

    async def quota(self, user: str, caller: Caller) -> tuple[QuotaLimits, Usage]:
        """``user``'s limits and use (from the live view and the operations in flight)."""
        if user != caller.user and not caller.is_admin:
            raise Forbidden("only an admin may read another user's quota", details={"user": user})
        is_admin = caller.is_admin if user == caller.user else False
        limits = self.policy.current.quotas.limits_for(user, is_admin=is_admin)
        ours = await self._view.summaries() + self._reservations.holders()
        return limits, usage_of(user, ours)

    # --- create ---

    async def create(self, request: CreateRequest, caller: Caller) -> ManagedContainer:
        """:meth:`_create`; one that fails gives back the network it made for an owner who
        has no other container."""
        try:
            return await self._create(request, caller)
        except BaseException:
            await self._networks.release(request.owner)
            raise

    async def _create(self, request: CreateRequest, caller: Caller) -> ManagedContainer:
        """Create and start the container, and wait until its sshd answers. Anything that
        fails after Docker made it removes it, which gives back its port and GPUs. The image
        reference is resolved to an image id once, here: the container runs that image, and
        a later pull that re-points the tag changes nothing for it."""
        resources = resources_for(
            self._config,
            shm_size_mb=request.shm_size_mb,
            memory_mb=request.memory_mb,
            cpus=request.cpus,
        )
        if not request.idle_reclaim and not caller.is_admin:
            raise Forbidden(
                "idle_reclaim: only an admin may exempt a container from idle-GPU reclaim",
                details={"field": "idle_reclaim"},
            )
        lease_hours = lease_hours_for(request.lease_hours, self.policy.current)
        image = await self._images.image_to_run(request.image, caller)
        gpus = await self._resolve_gpus(request.gpu_ids)
        lease = lease_from(lease_hours, now_utc())  # from now: a slow pull costs no lease
        home = None
        if request.persistent_home:  # kept, like every volume, if the create fails
            home = await self.homes.ensure(request.owner, request.user_name)
        async with self._allocation:  # the decision only; Docker's slow steps come after
            everyone = await self._holders()
            self._check_quota(
                caller, everyone, Ask(len(gpus), 1, resources.memory_mb, resources.cpus)
            )
            if not self._config.gpu_sharing:
                check_gpus_free(gpus, everyone, viewer=_viewer(caller))
            port = choose_ssh_port(
                everyone,
                self._config.ssh_port_range,
                address=self._config.ssh_bind_address,
                released_at=self._port_releases.released_at,
            )
            ports = choose_service_ports(
                request.ports,
                everyone,
                self._config.service_port_range,
                address=self._config.ssh_bind_address,
                released_at=self._port_releases.released_at,
            )
            reservation = self._reservations.add(
                Reservation(
                    request.name,
                    request.owner,
                    port,
                    tuple(gpus),
                    ports=ports,
                    memory_mb=resources.memory_mb,
                    cpus=resources.cpus,
                )
            )
        setup = Setup(image, gpus, port, ports, resources, home, lease)
        try:
            await self._networks.ensure(request.owner)
            container_id = await self._make(request, setup)
            try:
                tar = await _bootstrap_tar(request, setup.home, self._config.ssh_server)
                await self._docker.put_archive(container_id, "/", tar)
                await self._start(container_id, port, ports)
                self._started(container_id)
            except BaseException:
                await self._discard(container_id, request.name)
                raise
        finally:
            self._reservations.remove(reservation)  # running now: Docker's labels hold it
        try:
            await self._wait_for_sshd(container_id, port)
        except ApiError as exc:
            await self._discard(container_id, request.name)
            raise type(exc)(f"{exc.message}; container removed", details=exc.details) from None
        except BaseException:
            await self._discard(container_id, request.name)
            raise
        log.info(
            "created container %s for %s: ssh port %d, GPUs %s",
            request.name, request.owner, port, [g.index for g in gpus] or "none",
        )  # fmt: skip
        await self._view.refresh(container_id)  # the caller's next list shows it
        return await self.get(request.name, caller)

    async def _resolve_gpus(self, gpu_ids: list[int]) -> list[Gpu]:
        if not gpu_ids:
            return []
        await self._gpus.wait_until_tried()
        if not self._gpus.available:
            # NVML cannot list them (no library here, say): pin by index, as asked.
            return [Gpu(index=i, uuid=None) for i in gpu_ids]
        known = {g.index: g for g in self._gpus.gpus}
        unknown = [i for i in gpu_ids if i not in known]
        if unknown:
            listing = "; ".join(f"{g.index}: {g.name}" for g in known.values()) or "none"
            raise InvalidInput(
                f"gpu_ids: {', '.join(map(str, unknown))} is not a GPU of this host "
                f"(its GPUs: {listing})",
                details={"field": "gpu_ids", "gpus": sorted(known)},
            )
        return [Gpu(index=i, uuid=known[i].uuid) for i in gpu_ids]

    async def _make(self, request: CreateRequest, setup: Setup) -> str:
        try:
            return await self._docker.create_container(
                request.name, self._container_config(request, setup)
            )
        except DockerFailed as exc:
            if exc.docker_status == 409:
                raise Conflict(
                    f"the name {request.name!r} is taken; choose another",
                    details={"name": request.name},
                ) from None
            raise

    def _container_config(self, request: CreateRequest, setup: Setup) -> dict[str, object]:
        # The request's env is not the container's: root's bootstrap and every root process
        # would inherit it (PATH, LD_PRELOAD). It travels in the bootstrap tar, for the user's
        # sessions only.
        env: list[str] = []
        image, gpus, port = setup.image, setup.gpus, setup.ssh_port
        address = self._config.ssh_bind_address
        published = {SSH_CONTAINER_PORT: port, **setup.ports}
        host_config: dict[str, object] = {
            "Init": True,
            "PortBindings": {
                f"{inside}/tcp": [{"HostIp": address, "HostPort": str(outside)}]
                for inside, outside in published.items()
            },
            "Mounts": _mounts(request, setup.home, self._config.shared_mounts),
            **setup.resources.host_config(),
            "RestartPolicy": {"Name": "unless-stopped"},
            "CapDrop": ["ALL"],
            "CapAdd": list(CONTAINER_CAPABILITIES),
            # One container's output cannot fill the host's disk.
            "LogConfig": {
                "Type": "json-file",
                "Config": {
                    "max-size": self._config.log_max_size,
                    "max-file": str(self._config.log_max_file),
                },
            },
        }
        if (network := self._networks.name(request.owner)) is not None:
            host_config["NetworkMode"] = network  # the owner's own (network_isolation)
        if gpus:
            device_ids = [g.uuid or str(g.index) for g in gpus]
            host_config["DeviceRequests"] = [
                {"Driver": "nvidia", "DeviceIDs": device_ids, "Capabilities": [["gpu"]]}
            ]
        else:
            # An image whose default is "all GPUs" (NVIDIA's CUDA images) must see none.
            env.append("NVIDIA_VISIBLE_DEVICES=void")
        # The bootstrap runs the image's own command beside sshd, as the image's user.
        command = [*image.entrypoint, *(image.cmd if request.command is None else request.command)]
        resources = setup.resources
        return {
            "Image": image.id,
            "Entrypoint": ["/bin/sh", f"{BOOTSTRAP_DIR}/bootstrap.sh"],
            "Cmd": [image.user, "--", *command],
            # The bootstrap is root's; it runs the command as the image's User itself.
            "User": "0",
            "Env": env,
            "Hostname": request.name[:63],
            "ExposedPorts": {f"{inside}/tcp": {} for inside in published},
            "Labels": {
                labels.NAMESPACE: self._config.namespace,
                labels.OWNER: request.owner,
                labels.SSH_USER: request.user_name,
                labels.SSH_PORT: str(port),
                labels.GPU_INDICES: ",".join(str(g.index) for g in gpus),
                labels.GPU_UUIDS: ",".join(g.uuid for g in gpus if g.uuid),
                labels.CREATED: _now_rfc3339_ns(),
                labels.IMAGE: request.image,
                labels.IMAGE_ID: image.id,
                labels.SSH_HOST_KEYS: request.host_key.public.public_key,
                labels.PORTS: labels.format_ports(setup.ports),
                labels.MEMORY_MB: "" if resources.memory_mb is None else str(resources.memory_mb),
                labels.CPUS: "" if resources.cpus is None else f"{resources.cpus:g}",
                labels.SHM_SIZE_MB: str(resources.shm_size_mb),
                labels.HOME_VOLUME: setup.home.name if setup.home else "",
                labels.LEASE_EXPIRES: iso(setup.lease.expires_at) or "",
                labels.IDLE_RECLAIM: "true" if request.idle_reclaim else "false",
            },
            "HostConfig": host_config,
        }

    async def _start(
        self, container_id: str, port: int | None, ports: Mapping[int, int] | None = None
    ) -> None:
        try:
            await self._docker.start_container(container_id)
        except DockerFailed as exc:
            if not any(text in exc.docker_message for text in _PORT_TAKEN):
                raise
            for inside, outside in (ports or {}).items():
                if re.search(rf":{outside}\b", exc.docker_message):
                    raise Conflict(
                        f"port {outside} (the container's {inside}) is taken on the host: "
                        f"{exc.docker_message}",
                        details={"port": outside},
                    ) from None
            raise Conflict(
                f"SSH port {port} is taken on the host: {exc.docker_message}",
                details={"ssh_port": port},
            ) from None

    async def _wait_for_sshd(
        self, container_id: str, port: int | None, *, restarts_before: int = 0
    ) -> None:
        """Until sshd greets on the published port; the bootstrap's error if it gives up
        (the container stops, or Docker restarts it)."""
        deadline = time.monotonic() + self._config.ssh_ready_timeout
        address = self._config.ssh_bind_address
        host = "127.0.0.1" if address in ("0.0.0.0", "::") else address
        while True:
            state = await self._docker.container_state(container_id)
            if state is None or not state.running or state.restart_count > restarts_before:
                raise SshUnavailable(await self._bootstrap_error(container_id))
            if port is None:  # not ours to wait for (a container without an SSH port label)
                return
            if await ssh_greets(host, port):
                return
            if time.monotonic() > deadline:
                raise SshTimeout(
                    f"the SSH server did not answer on port {port} within "
                    f"{self._config.ssh_ready_timeout:g} s (ssh_ready_timeout)"
                )
            await asyncio.sleep(SSH_POLL_INTERVAL_S)

    async def _bootstrap_error(self, container_id: str) -> str:
        with contextlib.suppress(ApiError):
            output = await self._docker.container_logs(container_id)
            if _NO_SHELL in output:  # tini, the container's init, could not start the bootstrap
                return (
                    "the container could not provide SSH: the image has no /bin/sh, which"
                    " deepdockd's bootstrap needs to set up the"
                    " SSH login (an image without a shell, such as a distroless one, cannot be"
                    " used): choose an image with a shell"
                )
            failures = [
                line.split(_FAILED_MARK, 1)[1]
                for line in output.splitlines()
                if _FAILED_MARK in line
            ]
            if failures:
                return f"the container could not provide SSH: {failures[-1]}"
            tail = " | ".join(output.strip().splitlines()[-3:])
            if tail:
                return f"the container stopped before its sshd answered: {tail}"
        return "the container stopped before its sshd answered"

    async def _discard(self, container_id: str, name: str) -> None:
        """Remove a container whose create failed; never raises, even when cancelled."""
        try:
            await asyncio.shield(self._docker.remove_container(container_id, force=True))
        except (ApiError, asyncio.CancelledError) as exc:
            log.error(
                "could not remove the failed container %s (%s): %s", name, container_id[:12], exc
            )
        else:
            log.info("removed the failed container %s", name)
            self._view.forget(container_id)

    # --- life cycle ---

    async def start(self, name: str, caller: Caller) -> None:
        """Start it and wait until its sshd answers (a login works when this returns)."""
        async with self._allocation:
            container = await self.get(name, caller)
            self._check_may_run(container)
            if await self._running(container.id):  # Docker's word, not the view's
                return
            await self._check_may_hold(container, caller)
            reservation = self._reservations.add(_reservation_of(container))
        try:
            restarts = await self._restart_count(container.id)
            await self._start(container.id, container.ssh_port, container.ports)
            self._started(container.id)
        finally:
            self._reservations.remove(reservation)
        try:
            await self._wait_for_sshd(container.id, container.ssh_port, restarts_before=restarts)
        finally:
            await self._view.refresh(container.id)

    async def stop(self, name: str, caller: Caller) -> None:
        container = await self.get(name, caller)
        try:
            await self._docker.stop_container(container.id)
        finally:
            await self._view.refresh(container.id)

    async def restart(self, name: str, caller: Caller) -> None:
        async with self._allocation:
            container = await self.get(name, caller)
            self._check_may_run(container)
            if not await self._running(container.id):  # Docker's word, not the view's
                await self._check_may_hold(container, caller)
            # Held through the stop and the start, so that nobody takes its GPUs in between.
            reservation = self._reservations.add(_reservation_of(container))
        try:
            restarts = await self._restart_count(container.id)
            await self._docker.restart_container(container.id)
            self._started(container.id)
        finally:
            self._reservations.remove(reservation)
        try:
            await self._wait_for_sshd(container.id, container.ssh_port, restarts_before=restarts)
        finally:
            await self._view.refresh(container.id)

    def _started(self, container_id: str) -> None:
        self.started_at[container_id] = time.monotonic()
        self.records.started(container_id)

    async def _running(self, container_id: str) -> bool:
        state = await self._docker.container_state(container_id)
        return state is not None and state.running

    async def _restart_count(self, container_id: str) -> int:
        state = await self._docker.container_state(container_id)
        return state.restart_count if state else 0

    async def remove(self, name: str, caller: Caller, *, force: bool) -> None:
        container = await self.get(name, caller)
        if container.state in ("running", "restarting", "paused") and not force:
            raise Conflict(
                f"container {name!r} is {container.state}; stop it first, or ask again with "
                "?force=true",
                details={"name": name, "state": container.state},
            )
        await self._docker.remove_container(container.id, force=force)
        self._view.forget(container.id)
        self.records.forget(container.id)
        self.started_at.pop(container.id, None)
        self._port_releases.release(container.ssh_port, *container.ports.values())
        await self._networks.release(container.owner)

    async def _holders(self) -> list[ContainerSummary]:
        """Every namespace's containers, and the choices of the operations in flight."""
        everyone = await self._docker.list_containers(filters={"label": [labels.NAMESPACE]})
        return everyone + self._reservations.holders()

    async def _check_may_hold(self, container: ManagedContainer, caller: Caller) -> None:
        """Whether the stopped ``container`` may run again: within its owner's quota (when
        the owner asks), and on GPUs that no other running container holds."""
        holders = await self._holders()
        if caller.user == container.owner:
            ask = Ask(len(container.gpu_indices), 0, container.memory_mb, container.cpus)
            self._check_quota(caller, holders, ask, exclude_name=container.name)
        if self._config.gpu_sharing or not container.gpu_indices:
            return
        gpus = _reservation_of(container).gpus
        check_gpus_free(gpus, holders, exclude_id=container.id, viewer=_viewer(caller))

    def _check_quota(
        self,
        caller: Caller,
        holders: list[ContainerSummary],
        ask: Ask,
        *,
        exclude_name: str | None = None,
    ) -> None:
        """The caller's own quota, counted over this namespace's containers (a reservation
        has no namespace label: every one is ours)."""
        namespace = self._config.namespace
        ours = [c for c in holders if c.labels.get(labels.NAMESPACE, namespace) == namespace]
        limits = self.policy.current.quotas.limits_for(caller.user, is_admin=caller.is_admin)
        use = usage_of(caller.user, ours, exclude_name=exclude_name)
        check_quota(caller.user, limits, use, ask)

    def _check_may_run(self, container: ManagedContainer) -> None:
        if container.id in self._reclaiming:
            raise Conflict(
                f"container {container.name!r} is being stopped by deepdockd's reaper; "
                "start it again once it has stopped",
                details={"name": container.name},
            )
        if container.expires_at is not None and container.expires_at <= now_utc():
            raise LeaseExpired(
                f"the lease of container {container.name!r} ended at "
                f"{iso(container.expires_at)}: extend it first (POST /containers/"
                f'{container.name}/extend with {{"lease_hours": N}}), then start it',
                details={"name": container.name, "expires_at": iso(container.expires_at)},
            )

    # --- fair share ---

    async def extend(self, name: str, lease_hours: float, caller: Caller) -> ManagedContainer:
        """A new end for the container's lease, ``lease_hours`` from now (0: none), within
        max_lease_hours."""
        hours = lease_hours_for(lease_hours, self.policy.current)
        async with self._allocation:  # the reaper decides under it, from this record
            container = await self.get(name, caller)
            self.records.set_lease(container.id, lease_from(hours, now_utc()))
        log.info("lease of %s set to %s hours by %s", name, f"{hours:g}", caller.user)
        return await self.get(name, caller)

    async def reclaim(
        self, container_id: str, reason_to_stop: Callable[[ManagedContainer], str | None]
    ) -> ManagedContainer | None:
        """Stop the container if ``reason_to_stop`` still gives a reason when asked under
        the allocation lock, about the container as Docker's labels and state show it now
        (never the view's copy); the stopped container, or None when it was left running.
        The stop is recorded with its reason. It never removes anything."""
        async with self._allocation:
            summary = await self._docker.container_summary(container_id)
            if summary is None or summary.state != "running" or container_id in self._reclaiming:
                return None
            container = self.describe(summary)
            reason = reason_to_stop(container)
            if reason is None:
                return None
            self._reclaiming.add(container_id)
        try:
            await self._docker.stop_container(container_id)
            try:
                self.records.stopped(container_id, reason, now_utc())
            except RecordsUnreadable as exc:  # stopped all the same; the log and audit say why
                log.error("could not record why %s was stopped: %s", container.name, exc)
        finally:
            self._reclaiming.discard(container_id)
            await self._view.refresh(container_id)
        return container


@dataclass(frozen=True)
class Setup:
    """What a create chose for its container before Docker makes it."""

    image: Image
    gpus: list[Gpu]
    ssh_port: int
    ports: dict[int, int]  # container port -> host port
    resources: Resources
    home: HomeVolume | None
    lease: Lease


def _mounts(
    request: CreateRequest, home: HomeVolume | None, shared: tuple[SharedMount, ...]
) -> list[dict[str, object]]:
    """The user's home volume and the admin's shared host directories; never a host path of
    the request's."""
    mounts: list[dict[str, object]] = [
        {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
        for m in shared
    ]
    if home is not None:
        mounts.append(
            {
                "Type": "volume",
                "Source": home.name,
                "Target": f"/home/{request.user_name}",
                # Not the image's /home/<user>: the home is the volume's, whatever the image.
                # Its labels too, should Docker have to make it again (removed meanwhile).
                "VolumeOptions": {"NoCopy": True, "Labels": dict(home.labels)},
            }
        )
    return mounts


def _int_label(text: str) -> int | None:
    return int(text) if text.isdecimal() else None


def _float_label(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _reservation_of(container: ManagedContainer) -> Reservation:
    """The GPUs an existing container takes when it starts (its port is its own already)."""
    uuids: list[str | None] = [*container.gpu_uuids] or [None] * len(container.gpu_indices)
    gpus = tuple(Gpu(i, u) for i, u in zip(container.gpu_indices, uuids, strict=False))
    return Reservation(
        container.name, container.owner, None, gpus, container_id=container.id,
        memory_mb=container.memory_mb, cpus=container.cpus,
    )  # fmt: skip


def _may_see(caller: Caller, container: ContainerSummary) -> bool:
    return caller.is_admin or container.labels.get(labels.OWNER) == caller.user


def _viewer(caller: Caller) -> str | None:
    """Whose containers a caller may see named: None for an admin (everyone's)."""
    return None if caller.is_admin else caller.user


@functools.cache
def _bootstrap_script() -> bytes:
    return resources.files("deepdockd.containers").joinpath("bootstrap.sh").read_bytes()


async def _bootstrap_tar(request: CreateRequest, home: HomeVolume | None, ssh_server: str) -> bytes:
    """What the bootstrap needs, to unpack at / before the container's first start, in a
    directory that only root may read:

    - ``bootstrap.sh``, the entrypoint;
    - ``settings``: shell assignments of checked values (the user name, the home volume's
      uid or "", whether password logins are allowed);
    - ``secret``: ``user:HASH``, the password's SHA-512 crypt hash (``*``, which no password
      matches, when the request gave keys only); the password itself never leaves this
      process, so no binary of the image ever sees it;
    - ``authorized_keys``: the request's public keys, added to ~/.ssh/authorized_keys at the
      first start (never in labels, env or a command line);
    - ``env``: the request's env as ``NAME=value`` lines (the schema refuses line breaks),
      for the user's sessions only;
    - ``ssh_host_ed25519_key``: the container's own host key, the only one its sshd presents.

    Unless ``ssh_server`` is "image", the bundled SSH server goes beside it, in BUNDLE_DIR.
    """
    if request.password is None:
        password_hash = "*"
    else:
        password_hash = await asyncio.to_thread(sha512_crypt_hash, request.password)
    settings = {
        "user_name": request.user_name,
        "home_uid": str(home.uid) if home else "",
        "password_login": "no" if request.password is None else "yes",
        "ssh_server": ssh_server,
    }
    bundle = bundled_server() if ssh_server != "image" else None
    if ssh_server == "bundled" and bundle is None:
        raise ServiceUnavailable(
            "ssh_server is bundled, but this deepdockd was installed without its SSH server;"
            " build it with `make ssh-server` (or install a package that carries it)",
            details={"setting": "ssh_server"},
        )
    files = (
        ("bootstrap.sh", _bootstrap_script(), 0o700),
        ("settings", "".join(f"{k}='{v}'\n" for k, v in settings.items()).encode(), 0o600),
        ("secret", f"{request.user_name}:{password_hash}\n".encode(), 0o600),
        ("authorized_keys", "".join(f"{key}\n" for key in request.ssh_keys).encode(), 0o600),
        ("env", "".join(f"{k}={v}\n" for k, v in request.env.items()).encode(), 0o600),
        ("ssh_host_ed25519_key", request.host_key.private_openssh, 0o600),
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo(BOOTSTRAP_DIR.lstrip("/"))
        directory.type, directory.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(directory)
        for name, data, mode in files:
            info = tarfile.TarInfo(f"{BOOTSTRAP_DIR.lstrip('/')}/{name}")
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        if bundle is not None:
            _add_bundle(tar, bundle)
    return buffer.getvalue()


def _add_bundle(tar: tarfile.TarFile, bundle: SshServerBundle) -> None:
    """The bundled server at BUNDLE_DIR: root's, readable and runnable by every user (their
    sessions run its scp and sftp-server), writable by none."""
    folder = BUNDLE_DIR.lstrip("/")
    directory = tarfile.TarInfo(folder)
    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(directory)
    for name, data in bundle.files:
        info = tarfile.TarInfo(f"{folder}/{name}")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    for name, target in bundle.links:
        link = tarfile.TarInfo(f"{folder}/{name}")
        link.type, link.linkname, link.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(link)


async def ssh_greets(host: str, port: int) -> bool:
    """Whether an SSH server sends its greeting ("SSH-2.0-...") on host:port."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                greeting = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return greeting.startswith(b"SSH-")


def _now_rfc3339_ns() -> str:
    """Now as Docker writes times: RFC 3339 in UTC with nanoseconds."""
    ns = time.time_ns()
    seconds = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{ns % 1_000_000_000:09d}Z"

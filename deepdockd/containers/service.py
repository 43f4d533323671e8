"""Containers: create (with GPUs and an SSH login), list, start, stop, restart, remove.

Only containers labelled with this daemon's namespace exist here; any other container is
invisible, even by name. Everything the service knows is in those labels.

This module orchestrates; the container's shape for Docker is ``spec``, what goes into it
before its first start ``bootstrap``, the wait for its sshd ``sshd_wait``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from deepdockd import labels
from deepdockd.clock import iso, now_utc
from deepdockd.config import Config
from deepdockd.containers.allocation import (
    Gpu,
    PortReleases,
    Reservation,
    Reservations,
    check_gpus_free,
    choose_service_ports,
    choose_ssh_port,
)
from deepdockd.containers.bootstrap import bootstrap_files, bootstrap_tar, bundle_for
from deepdockd.containers.bootstrap_inputs import BootstrapInputs
from deepdockd.containers.descriptions import Descriptions
from deepdockd.containers.disk import DiskMeter
from deepdockd.containers.gpu_choice import resolve_gpus
from deepdockd.containers.homes import HomeVolumes
from deepdockd.containers.leftovers import Leftovers
from deepdockd.containers.model import CreateRequest, ManagedContainer
from deepdockd.containers.networks import OwnerNetworks
from deepdockd.containers.passwords import password_hash
from deepdockd.containers.phases import PhaseClock
from deepdockd.containers.resources import resources_for
from deepdockd.containers.spec import Setup, container_spec
from deepdockd.containers.ssh_server import SshServerOnHost
from deepdockd.containers.sshd_wait import ssh_server_chosen, wait_for_sshd
from deepdockd.containers.view import ContainerView
from deepdockd.docker import (
    ContainerSummary,
    Docker,
    DockerConflict,
    PortTaken,
    StorageLimitRefused,
)
from deepdockd.errors import ApiError, Conflict, Forbidden, NotFound
from deepdockd.fairshare.leases import LeaseExpired, lease_from, lease_hours_for
from deepdockd.fairshare.policy import PolicyHolder
from deepdockd.fairshare.quotas import Ask, Usage, check_disk, check_quota, usage_of
from deepdockd.fairshare.records import ContainerRecords, Record, RecordsUnreadable
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.images.service import ImageService
from deepdockd.labels import GpuId
from deepdockd.quota_settings import QuotaLimits
from deepdockd.tokens import Caller

# The HTTP layer reads the request and the answer's dataclasses from here.
__all__ = ["ContainerService", "CreateRequest", "ManagedContainer"]

log = logging.getLogger(__name__)


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
        disk: DiskMeter | None = None,
        is_admin: Callable[[str], bool] = lambda user: False,
    ) -> None:
        self._docker = docker
        self._view = view
        self._images = images
        self._gpus = gpus
        self._config = config
        self.homes = HomeVolumes(docker, config)
        # Disk use, measured on a slow cadence (containers/disk.py); the app runs its task.
        self.disk = disk or DiskMeter(docker, config.namespace, config.disk_usage_interval)
        # Whether a user is an admin, by their token (auth off: everyone is): the reaper's disk
        # warnings judge an owner by the quota that applies to them.
        self._is_admin = is_admin
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
        self._port_releases = PortReleases(self.records.directory)  # in the same state dir
        # Each owner's containers on a network of the owner's own (network_isolation); the
        # network of an owner whose create is in flight is never taken away.
        self._networks = OwnerNetworks(
            docker,
            config,
            in_flight=lambda: [h.labels[labels.OWNER] for h in self._reservations.holders()],
        )
        self.descriptions = Descriptions(self.records)
        # The bundled SSH server and the bootstrap's files, mounted read-only into the
        # containers where they can be.
        self.ssh_server = SshServerOnHost(config)
        self.bootstrap_inputs = BootstrapInputs(docker, config)
        # What failed creates could not undo because Docker did not answer.
        self.leftovers = Leftovers(docker, view, self._networks, self.bootstrap_inputs)

    # --- reading ---

    async def list_all(self, caller: Caller) -> list[ManagedContainer]:
        """The caller's containers (an admin's: all of this namespace's), from the live view
        (or one Docker call while it is stale), whatever their number."""
        described = self.descriptions.all_of(await self._view.summaries())
        return sorted(
            (c for c in described if _may_see(caller, c)),
            key=_created,
            reverse=True,  # newest first, as Docker lists them
        )

    async def get(self, name: str, caller: Caller) -> ManagedContainer:
        """The container, if the caller may see it: another user's is as absent as one that
        does not exist, so that names do not leak."""
        for summary in await self._view.summaries():
            if summary.name == name and _may_see(caller, summary):
                return self.describe(summary)
        raise NotFound(f"no container {name!r}", details={"name": name})

    def describe(self, summary: ContainerSummary, record: Record | None = None) -> ManagedContainer:
        return self.descriptions.of(summary, record)

    async def quota(self, user: str, caller: Caller) -> tuple[QuotaLimits, Usage, float | None]:
        """``user``'s limits and use (from the live view and the operations in flight), and
        their disk use in MiB as last measured (None before the first measurement)."""
        if user != caller.user and not caller.is_admin:
            raise Forbidden("only an admin may read another user's quota", details={"user": user})
        is_admin = caller.is_admin if user == caller.user else False
        limits = self.policy.current.quotas.limits_for(user, is_admin=is_admin)
        summaries = await self._view.summaries()
        ours = summaries + self._reservations.holders()
        disk_mb = self.disk.owner_mb(user, {s.id for s in summaries})
        return limits, usage_of(user, ours), disk_mb

    def over_disk_quota(self, owner: str, container_ids: set[str]) -> tuple[float, float] | None:
        """(MiB used, GiB allowed) where ``owner``'s measured disk use has reached their
        max_disk_gb (``container_ids``: the containers that still exist); else None."""
        is_admin = self._is_admin(owner)
        limits = self.policy.current.quotas.limits_for(owner, is_admin=is_admin)
        used_mb = self.disk.owner_mb(owner, container_ids)
        if not limits.max_disk_gb or used_mb is None or used_mb < limits.max_disk_gb * 1024:
            return None
        return used_mb, limits.max_disk_gb

    # --- create ---

    async def create(
        self, request: CreateRequest, caller: Caller, clock: PhaseClock | None = None
    ) -> ManagedContainer:
        """:meth:`_create`, its phases timed on ``clock``; one that fails gives back the
        network it made for an owner who has no other container."""
        clock = clock or PhaseClock()
        # The password's hash, the slowest step that is deepdockd's own (containers/
        # passwords.py), is made in a thread from the first moment, while the create decides
        # and Docker makes the container.
        hashing = asyncio.ensure_future(password_hash(request.password))
        try:
            created = await self._create(request, caller, clock, hashing)
            log.debug("create %s: %s", request.name, clock)
            return created
        except BaseException:
            hashing.cancel()
            await self.leftovers.release_network(request.owner)
            raise

    async def _create(
        self,
        request: CreateRequest,
        caller: Caller,
        clock: PhaseClock,
        hashing: asyncio.Future[str],
    ) -> ManagedContainer:
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
        bundle = bundle_for(self._config.ssh_server)  # a 503 before anything is made
        image = await self._images.image_to_run(request.image, caller)
        gpus = await self._resolve_gpus(request.gpu_ids)
        lease = lease_from(lease_hours, now_utc())  # from now: a slow pull costs no lease
        clock.done("resolve")
        async with self._allocation:  # the decision only; Docker's slow steps come after
            everyone = await self._holders()
            _check_name_free(request.name, everyone)
            self._check_quota(
                caller,
                everyone,
                Ask(len(gpus), 1, resources.memory_mb, resources.cpus, len(request.ports)),
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
                address=self._config.service_bind_address,
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
        clock.done("allocate")
        try:
            # Only now, decided and reserved, is anything made: a create that the quota, a
            # held GPU, the ports or a taken name refuse leaves no home and no network.
            home = None
            if request.persistent_home:  # kept, like every volume, if a later step fails
                home = await self.homes.ensure(request.owner, request.user_name)
            await self._networks.ensure(request.owner)
            token = await self.bootstrap_inputs.make()  # None: the files are copied in
            bootstrap = (token, self.bootstrap_inputs.directory(token)) if token else None
            setup = Setup(
                image, gpus, port, ports, resources, home, lease,
                ssh_server_dir=await self.ssh_server.directory(), bootstrap=bootstrap,
            )  # fmt: skip
            clock.done("home_network")
            try:
                container_id = await self._make(request, setup)
            except BaseException:
                self.bootstrap_inputs.remove(token)
                raise
            clock.done("docker_create")
            try:
                files = bootstrap_files(
                    request,
                    setup.home,
                    self._config.ssh_server,
                    password_hash=await hashing,
                    image_env=setup.image.env,
                )
                clock.done("hash_wait")
                if token is not None:
                    await self.bootstrap_inputs.fill(token, files)
                else:
                    copied = bundle if setup.ssh_server_dir is None else None
                    tar = bootstrap_tar(files, copied)
                    await self._docker.put_archive(container_id, "/", tar)
                clock.done("bootstrap_files")
                await self._start(container_id, port, ports)
                self._started(container_id)
                clock.done("start")
            except BaseException:
                await self._discard(container_id, request.name, token)
                raise
        finally:
            self._reservations.remove(reservation)  # running now: Docker's labels hold it
        try:
            await self._wait_for_sshd(container_id, port)
            clock.done("sshd_ready")
        except ApiError as exc:
            if await self._discard(container_id, request.name, token):
                raise type(exc)(f"{exc.message}; container removed", details=exc.details) from None
            raise
        except BaseException:
            await self._discard(container_id, request.name, token)
            raise
        if token is not None:
            self.bootstrap_inputs.used(token)  # the hash and the keys: set by now
        server = await ssh_server_chosen(self._docker, container_id)
        log.info(
            "created container %s for %s: ssh port %d, GPUs %s, SSH server: %s",
            request.name, request.owner, port, [str(g.id) for g in gpus] or "none", server,
        )  # fmt: skip
        await self._view.refresh(container_id)  # the caller's next list shows it
        created = replace(await self.get(request.name, caller), ssh_server=server)
        clock.done("answer")
        return created

    async def _resolve_gpus(self, gpu_ids: list[GpuId]) -> list[Gpu]:
        if not gpu_ids:
            return []
        await self._gpus.wait_until_tried()
        # Without NVML (no library here, say): pinned by index, as asked.
        return resolve_gpus(gpu_ids, self._gpus.gpus if self._gpus.available else None)

    async def _make(self, request: CreateRequest, setup: Setup) -> str:
        network = self._networks.name(request.owner)  # the owner's own (network_isolation)
        spec = container_spec(request, setup, self._config, network=network)
        limit_gb = self._config.container_disk_limit_gb
        if limit_gb:
            spec = replace(spec, storage_size_gb=limit_gb)
        try:
            return await self._docker.create_container(spec)
        except DockerConflict:
            raise _name_taken(request.name) from None
        except StorageLimitRefused as exc:
            # Docker applies a size only on overlay2 over XFS mounted with pquota (and a few
            # other drivers); anywhere else it refuses every create: the admin's setting.
            raise DiskLimitUnsupported(
                f"container_disk_limit_gb is {limit_gb:g} in deepdockd's config, and Docker "
                f"refused that limit on this host's storage: {exc.docker_message}. It needs "
                "Docker's overlay2 on an XFS file system mounted with pquota "
                "(docs/fair-share.md#disk); an admin sets container_disk_limit_gb = 0 "
                "otherwise",
                details={"setting": "container_disk_limit_gb", "value": limit_gb},
            ) from None

    async def _start(
        self, container_id: str, port: int | None, ports: Mapping[int, int] | None = None
    ) -> None:
        try:
            await self._docker.start_container(container_id)
        except PortTaken as exc:
            for inside, outside in (ports or {}).items():
                if outside in exc.ports_named:
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
        await wait_for_sshd(
            self._docker,
            container_id,
            port,
            bind_address=self._config.ssh_bind_address,
            timeout_s=self._config.ssh_ready_timeout,
            restarts_before=restarts_before,
        )

    async def _discard(self, container_id: str, name: str, bootstrap: str | None) -> bool:
        return await self.leftovers.discard(container_id, name, bootstrap)

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
        self.bootstrap_inputs.remove(container.bootstrap)
        self.records.forget(container.id)
        self.started_at.pop(container.id, None)
        self._port_releases.release(container.ssh_port, *container.ports.values())
        await self._networks.release(container.owner)

    async def _holders(self) -> list[ContainerSummary]:
        """Every namespace's containers, and the choices of the operations in flight (after
        what failed creates left while Docker was away is removed: it holds nothing)."""
        await self.leftovers.undo()
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
        disk_mb = self.disk.owner_mb(caller.user, {c.id for c in ours})
        check_disk(caller.user, limits, disk_mb, use.all)

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
            live = summary is not None and summary.state in ("running", "paused")
            if summary is None or not live or container_id in self._reclaiming:
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


class DiskLimitUnsupported(ApiError):
    """The admin's container_disk_limit_gb, which this host's Docker storage cannot apply."""

    status = 503
    code = "disk_limit_unsupported"


def _name_taken(name: str) -> Conflict:
    return Conflict(f"the name {name!r} is taken; choose another", details={"name": name})


def _check_name_free(name: str, holders: list[ContainerSummary]) -> None:
    """Before anything is made: a name that a deepdockd container (of any namespace) or a
    create in flight holds. Docker's own refusal at create still covers the others'."""
    if any(holder.name == name for holder in holders):
        raise _name_taken(name)


def _reservation_of(container: ManagedContainer) -> Reservation:
    """The GPUs an existing container takes when it starts (its port is its own already)."""
    uuids: list[str | None] = [*container.gpu_uuids] or [None] * len(container.gpu_indices)
    gpus = tuple(Gpu(i.gpu, u, i.slice) for i, u in zip(container.gpu_indices, uuids, strict=False))
    return Reservation(
        container.name, container.owner, None, gpus, container_id=container.id,
        memory_mb=container.memory_mb, cpus=container.cpus,
    )  # fmt: skip


def _created(container: ManagedContainer) -> str:
    return container.created


def _may_see(caller: Caller, container: ContainerSummary | ManagedContainer) -> bool:
    if isinstance(container, ManagedContainer):
        return caller.is_admin or container.owner == caller.user
    return caller.is_admin or container.labels.get(labels.OWNER) == caller.user


def _viewer(caller: Caller) -> str | None:
    """Whose containers a caller may see named: None for an admin (everyone's)."""
    return None if caller.is_admin else caller.user

"""What a new or starting container may take: an SSH port that nobody holds, and GPUs that no
other running container holds. Both are read from Docker's labels on every call, so they
survive any restart. The caller holds a lock only while it decides; what it chose is then a
:class:`Reservation` until Docker shows it (the container made and running), so that Docker's
slow steps run outside the lock and no two operations wait on each other beyond the choice."""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deepdockd import labels
from deepdockd.docker import ContainerSummary
from deepdockd.errors import Conflict, ServiceUnavailable
from deepdockd.state_files import StateDirectory, StateFileMissing

log = logging.getLogger(__name__)

SSH_CONTAINER_PORT = 22
# States in which a container holds its GPUs.
_HOLDING_STATES = frozenset({"running", "restarting", "paused"})


class PortsExhausted(ServiceUnavailable):
    code = "ssh_ports_exhausted"


class ServicePortsExhausted(ServiceUnavailable):
    code = "service_ports_exhausted"


class GpuBusy(Conflict):
    code = "gpu_busy"


@dataclass(frozen=True)
class Gpu:
    index: int  # the GPU's; for a MIG slice, its parent GPU's
    uuid: str | None  # None: NVML does not know the GPUs; pinned by index. A slice: "MIG-..."
    slice: int | None = None  # a MIG slice of GPU ``index`` (its MIG device index); None: whole

    @property
    def id(self) -> labels.GpuId:
        return labels.GpuId(self.index, self.slice)


_reservation_keys = itertools.count()


@dataclass(frozen=True)
class Reservation:
    """An operation's choice that Docker does not show yet: the SSH port and GPUs of a create
    before its container runs, or the GPUs of a start or restart until it has."""

    name: str
    owner: str
    ssh_port: int | None
    gpus: tuple[Gpu, ...]
    container_id: str = ""  # "" for a create: the container does not exist yet
    ports: Mapping[int, int] = field(default_factory=dict)  # container port -> host port
    memory_mb: int | None = None  # its limits, which quotas count (None: no limit)
    cpus: float | None = None
    key: int = field(default_factory=lambda: next(_reservation_keys), compare=False)

    def as_holder(self) -> ContainerSummary:
        """The reservation as the running container it is about to be, with the labels the
        checks below read."""
        return ContainerSummary(
            id=self.container_id,
            name=self.name,
            image="",
            image_id="",
            state="running",
            labels={
                labels.OWNER: self.owner,
                labels.SSH_PORT: "" if self.ssh_port is None else str(self.ssh_port),
                labels.GPU_INDICES: ",".join(str(g.id) for g in self.gpus),
                labels.GPU_UUIDS: ",".join(g.uuid for g in self.gpus if g.uuid),
                labels.PORTS: labels.format_ports(self.ports),
                labels.MEMORY_MB: "" if self.memory_mb is None else str(self.memory_mb),
                labels.CPUS: "" if self.cpus is None else f"{self.cpus:g}",
            },
            published={},
        )


class Reservations:
    """The reservations of the operations in flight. Added under the allocation lock,
    removed when the operation is over, whether it worked or not."""

    def __init__(self) -> None:
        self._held: dict[int, Reservation] = {}

    def add(self, reservation: Reservation) -> Reservation:
        self._held[reservation.key] = reservation
        return reservation

    def remove(self, reservation: Reservation) -> None:
        self._held.pop(reservation.key, None)

    def holders(self) -> list[ContainerSummary]:
        return [r.as_holder() for r in self._held.values()]


class PortRecordsUnreadable(ServiceUnavailable):
    """The ports' release times cannot be read: no port is handed out, since the one freed
    last may be among them."""

    code = "port_records_unreadable"


class PortReleases:
    """When each host port was last given back by a removed container, so that a freed port
    goes to a new container only when no port has been free for longer: a user who
    connects to their old port must not meet someone else's sshd there at once.

    The times (seconds since the epoch) outlive a restart in ``STATE_DIR/ports.json``, a state
    file that fails closed (``state_files.py``): ``{"released_at": {"22000": 1764320400.0}}``.
    """

    def __init__(
        self, state: StateDirectory | Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        directory = state if isinstance(state, StateDirectory) else StateDirectory(state)
        self._file = directory.file("ports.json")
        self.path = self._file.path
        self._clock = clock
        self._released_at: dict[int, float] = {}
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) last read
        self._problem: PortRecordsUnreadable | None = None

    @property
    def released_at(self) -> dict[int, float]:
        """{port: when it was last given back}; raises :class:`PortRecordsUnreadable`."""
        self._refresh()
        return dict(self._released_at)

    def release(self, *ports: int | None) -> None:
        """Note the ports given back now. While the file cannot be read, nothing is noted
        (writing it would lose what it holds), and a line in the log says which."""
        try:
            self._refresh()
        except PortRecordsUnreadable:
            freed = [p for p in ports if p is not None]
            log.error("ports %s were freed, but %s cannot be read to note it", freed, self.path)
            return
        now = self._clock()
        changed = False
        for port in ports:
            if port is not None:
                self._released_at[port] = now
                changed = True
        if changed:
            document = {"released_at": {str(p): t for p, t in sorted(self._released_at.items())}}
            self._file.write(json.dumps(document) + "\n")
            info = self.path.stat()
            self._seen = (info.st_ino, info.st_size, info.st_mtime_ns)

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._released_at = None, {}
            try:
                self._file.check_absent()
            except StateFileMissing as exc:
                raise self._fail(
                    f"{exc}: until {exc.until}, no port is handed out, since one freed just "
                    "before the loss would go to someone else at once (writing it anew as {} "
                    "forgets when each port was freed)"
                ) from None
            self._problem = None
            return
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen != self._seen:
            self._seen = seen
            try:
                self._released_at, self._problem = _parse_releases(self._file.read() or "{}"), None
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._released_at = {}
                self._fail(
                    f"{self.path} cannot be read ({exc}): until it is mended, no port is handed "
                    "out (writing it anew as {} forgets when each port was freed)"
                )
            except StateFileMissing:  # removed between the stat and the read: asked again
                self._seen = None
                self._refresh()
        if self._problem is not None:
            raise self._problem

    def _fail(self, message: str) -> PortRecordsUnreadable:
        """Logged once, until the message changes."""
        if self._problem is None or self._problem.message != message:
            log.error("%s", message)
        self._problem = PortRecordsUnreadable(message)
        return self._problem


def _parse_releases(text: str) -> dict[int, float]:
    released = json.loads(text).get("released_at", {})
    return {int(port): float(at) for port, at in released.items()}


def host_port_free(address: str, port: int) -> bool:
    """Whether a process could bind ``address:port`` now (nothing else listens there)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As Docker's proxy binds: connections in TIME_WAIT do not make a port taken, a
        # listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def held_ports(containers: Iterable[ContainerSummary]) -> set[int]:
    """The host ports deepdockd containers hold, running or not (a stopped one starts again
    on its ports): SSH ports, service ports, and whatever Docker shows published."""
    held: set[int] = set()
    for container in containers:
        tags = container.labels
        held.update(_labelled_ports(tags.get(labels.SSH_PORT, ""), tags.get(labels.PORTS, "")))
        held.update(container.published.values())
    return held


@functools.lru_cache(maxsize=16384)
def _labelled_ports(ssh_port: str, ports: str) -> tuple[int, ...]:
    """The host ports of a container's labels, parsed once per pair of label values (every
    scrape and every allocation asks again, of hundreds of containers that rarely change)."""
    held = [int(ssh_port)] if ssh_port.isdecimal() else []
    return (*held, *labels.ports({labels.PORTS: ports}).values())


def choose_ports(
    count: int,
    held: set[int],
    port_range: tuple[int, int],
    *,
    address: str,
    released_at: Mapping[int, float] | None = None,
    is_free: Callable[[str, int], bool] = host_port_free,
) -> list[int] | None:
    """``count`` ports of the range that are not ``held`` and that nothing on the host binds:
    the lowest that were never given back (``released_at``), else those given back longest
    ago; None when the range has fewer."""
    low, high = port_range
    released_at = released_at or {}
    never = float("-inf")
    candidates = sorted(
        (port for port in range(low, high + 1) if port not in held),
        key=lambda port: (released_at.get(port, never), port),
    )
    chosen: list[int] = []
    for port in candidates:
        if len(chosen) == count:
            break
        if is_free(address, port):
            chosen.append(port)
    return chosen if len(chosen) == count else None


def choose_ssh_port(
    containers: Iterable[ContainerSummary],
    port_range: tuple[int, int],
    *,
    address: str,
    released_at: Mapping[int, float] | None = None,
    is_free: Callable[[str, int], bool] = host_port_free,
) -> int:
    """A port of the range that no deepdockd container holds and that nothing on the host
    binds (:func:`choose_ports`)."""
    held = held_ports(containers)
    chosen = choose_ports(
        1, held, port_range, address=address, released_at=released_at, is_free=is_free
    )
    if chosen is None:
        low, high = port_range
        raise PortsExhausted(
            f"no free SSH port in {low}-{high}: all {high - low + 1} are held by containers or "
            "bound on the host; remove containers or widen ssh_port_range",
            details={"ssh_port_range": f"{low}-{high}"},
        )
    return chosen[0]


def choose_service_ports(
    wanted: Sequence[int],
    containers: Iterable[ContainerSummary],
    port_range: tuple[int, int],
    *,
    address: str,
    released_at: Mapping[int, float] | None = None,
    is_free: Callable[[str, int], bool] = host_port_free,
) -> dict[int, int]:
    """A free host port of ``port_range`` for each container port ``wanted``, chosen as SSH
    ports are: {container port: host port}."""
    if not wanted:
        return {}
    held = held_ports(containers)
    chosen = choose_ports(
        len(wanted), held, port_range, address=address, released_at=released_at, is_free=is_free
    )
    if chosen is None:
        low, high = port_range
        raise ServicePortsExhausted(
            f"not enough free ports in {low}-{high} to publish {len(wanted)}: the others are "
            "held by containers or bound on the host; remove containers or widen "
            "service_port_range",
            details={"service_port_range": f"{low}-{high}", "ports": list(wanted)},
        )
    return dict(zip(wanted, chosen, strict=True))


def check_gpus_free(
    wanted: Sequence[Gpu],
    containers: Iterable[ContainerSummary],
    *,
    exclude_id: str | None = None,
    viewer: str | None = None,
) -> None:
    """409 naming the GPU and its holder when a running container holds one of ``wanted``.
    For a ``viewer`` (a user who is not an admin) another user's container stays unnamed. A
    MIG slice is a GPU of its own here; a whole GPU and a slice of it also clash."""
    for container in containers:
        if container.id == exclude_id or container.state not in _HOLDING_STATES:
            continue
        held_uuids = set(filter(None, container.labels.get(labels.GPU_UUIDS, "").split(",")))
        held_ids = set(labels.gpu_ids(container.labels))
        for gpu in wanted:
            # By UUID where both sides know it (indices can change across reboots).
            clash = gpu.uuid in held_uuids if gpu.uuid and held_uuids else gpu.id in held_ids
            clash = clash or any(  # GPU 1 whole against its slice 1:0, either way round
                held.gpu == gpu.index and (held.slice is None) != (gpu.slice is None)
                for held in held_ids
            )
            if clash and viewer is not None and container.labels.get(labels.OWNER) != viewer:
                raise GpuBusy(
                    f"GPU {gpu.id} is held by another user's running container",
                    details={"gpu": _detail(gpu)},
                )
            if clash:
                raise GpuBusy(
                    f"GPU {gpu.id} is held by running container {container.name!r}",
                    details={"gpu": _detail(gpu), "holder": container.name},
                )


def _detail(gpu: Gpu) -> int | str:
    """A whole GPU by its index, as before; a MIG slice as "1:0"."""
    return gpu.index if gpu.slice is None else str(gpu.id)

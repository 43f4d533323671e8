"""What a new or starting container may take: an SSH port that nobody holds, and GPUs that no
other running container holds. Both are read from Docker's labels on every call, so they
survive any restart; the caller holds a lock from the choice until Docker has the container."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from deepdockd import labels
from deepdockd.docker import ContainerSummary
from deepdockd.errors import Conflict, ServiceUnavailable

SSH_CONTAINER_PORT = 22
# States in which a container holds its GPUs.
_HOLDING_STATES = frozenset({"running", "restarting", "paused"})


class PortsExhausted(ServiceUnavailable):
    code = "ssh_ports_exhausted"


class GpuBusy(Conflict):
    code = "gpu_busy"


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str | None  # None: NVML does not know the GPUs; pinned by index


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


def choose_ssh_port(
    containers: Iterable[ContainerSummary],
    port_range: tuple[int, int],
    *,
    address: str,
    is_free: Callable[[str, int], bool] = host_port_free,
) -> int:
    """The lowest port of the range that no deepdockd container holds (running or not: a
    stopped one starts again on its port) and that nothing on the host binds."""
    held = set()
    for container in containers:
        if container.labels.get(labels.SSH_PORT, "").isdecimal():
            held.add(int(container.labels[labels.SSH_PORT]))
        held.update(container.published.values())
    low, high = port_range
    for port in range(low, high + 1):
        if port not in held and is_free(address, port):
            return port
    raise PortsExhausted(
        f"no free SSH port in {low}-{high}: all {high - low + 1} are held by containers or "
        "bound on the host; remove containers or widen ssh_port_range",
        details={"ssh_port_range": f"{low}-{high}"},
    )


def check_gpus_free(
    wanted: Sequence[Gpu],
    containers: Iterable[ContainerSummary],
    *,
    exclude_id: str | None = None,
    viewer: str | None = None,
) -> None:
    """409 naming the GPU and its holder when a running container holds one of ``wanted``.
    For a ``viewer`` (a user who is not an admin) another user's container stays unnamed."""
    for container in containers:
        if container.id == exclude_id or container.state not in _HOLDING_STATES:
            continue
        held_uuids = set(filter(None, container.labels.get(labels.GPU_UUIDS, "").split(",")))
        held_indices = set(labels.gpu_indices(container.labels))
        for gpu in wanted:
            # By UUID where both sides know it (indices can change across reboots).
            clash = gpu.uuid in held_uuids if gpu.uuid and held_uuids else gpu.index in held_indices
            if clash and viewer is not None and container.labels.get(labels.OWNER) != viewer:
                raise GpuBusy(
                    f"GPU {gpu.index} is held by another user's running container",
                    details={"gpu": gpu.index},
                )
            if clash:
                raise GpuBusy(
                    f"GPU {gpu.index} is held by running container {container.name!r}",
                    details={"gpu": gpu.index, "holder": container.name},
                )

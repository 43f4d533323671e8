"""The container service's own words: what a create asks for (:class:`CreateRequest`) and
what a managed container is (:class:`ManagedContainer`, read from its labels and its
fair-share record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from deepdockd import labels
from deepdockd.containers.allocation import SSH_CONTAINER_PORT
from deepdockd.containers.sshkeys import HostKey, PublicHostKey
from deepdockd.docker import ContainerSummary
from deepdockd.errors import Conflict
from deepdockd.fairshare.leases import lease_of
from deepdockd.fairshare.records import EMPTY, Record


class ContainerNotRunning(Conflict):
    """What needs a running container (its proxy, a pause, a commit) asked of one that is not."""

    code = "container_not_running"


@dataclass(frozen=True)
class CreateRequest:
    name: str
    image: str
    user_name: str
    owner: str
    password: str | None = None  # None: key logins only
    env: dict[str, str] = field(default_factory=dict)
    gpu_ids: list[labels.GpuId] = field(default_factory=list)  # whole GPUs and MIG slices
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
    gpu_indices: list[labels.GpuId]  # whole GPUs ("1") and MIG slices ("1:0"), as labelled
    gpu_uuids: list[str]  # in the same order ("GPU-...", a slice's "MIG-...")
    owner: str
    ssh_user: str
    ssh_host_keys: list[PublicHostKey]  # the container's own, as its sshd presents them
    ports: dict[int, int]  # container port -> host port, allocated (running or not)
    addresses: tuple[str, ...]  # its addresses on its networks, while running
    memory_mb: int | None  # None: no limit
    cpus: float | None  # None: no limit
    shm_size_mb: int | None  # None: made before deepdockd set it (Docker's 64 MiB)
    home_volume: str | None  # None: a throwaway home
    expires_at: datetime | None  # the end of its lease; None: no lease
    lease_set_at: datetime | None  # when that end was set
    stopped_reason: str | None  # why the reaper stopped it, while it is not running
    idle_reclaim: bool  # False: never stopped for idle GPUs
    bootstrap: str | None = None  # its bootstrap's directory on the host, by token
    # Which SSH server its bootstrap started and why: known to the create's answer only.
    ssh_server: str | None = None

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
            gpu_indices=labels.gpu_ids(summary.labels),
            gpu_uuids=[u for u in label(labels.GPU_UUIDS, "").split(",") if u],
            owner=label(labels.OWNER, ""),
            ssh_user=label(labels.SSH_USER, ""),
            ssh_host_keys=[
                key
                for line in labels.ssh_host_keys(summary.labels)
                if (key := PublicHostKey.parse(line)) is not None
            ],
            ports=labels.ports(summary.labels),
            addresses=summary.addresses,
            memory_mb=_int_label(label(labels.MEMORY_MB, "")),
            cpus=_float_label(label(labels.CPUS, "")),
            shm_size_mb=_int_label(label(labels.SHM_SIZE_MB, "")),
            home_volume=label(labels.HOME_VOLUME) or None,
            expires_at=lease.expires_at,
            lease_set_at=lease.set_at,
            stopped_reason=(
                None if summary.state in ("running", "paused") else record.stopped_reason
            ),
            idle_reclaim=label(labels.IDLE_RECLAIM) != "false",
            bootstrap=label(labels.BOOTSTRAP) or None,
        )


def _int_label(text: str) -> int | None:
    return int(text) if text.isdecimal() else None


def _float_label(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None

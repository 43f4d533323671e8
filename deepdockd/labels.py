"""The Docker labels that make a container ours. Docker is the only store of truth: every
fact deepdockd needs to rebuild its state after a restart is in these labels."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "deepdockd."
NAMESPACE = PREFIX + "namespace"
OWNER = PREFIX + "owner"
SSH_USER = PREFIX + "ssh-user"
SSH_PORT = PREFIX + "ssh-port"
GPU_INDICES = PREFIX + "gpu-indices"  # "0,1"; a MIG slice "1:0" (GpuId)
GPU_UUIDS = PREFIX + "gpu-uuids"  # "GPU-...,GPU-..."; a slice's "MIG-..."
CREATED = PREFIX + "created"  # RFC 3339 with nanoseconds, as Docker's own "Created"
IMAGE = PREFIX + "image"  # the image reference the create asked for, as asked
IMAGE_ID = PREFIX + "image-id"  # the image id it resolved to then, which the container runs
# The container's own SSH host keys, public halves: "ssh-ed25519 AAAA…[,…]". Not a secret.
SSH_HOST_KEYS = PREFIX + "ssh-host-keys"
# Container ports published on host ports of service_port_range: "8888:23000,6006:23001".
PORTS = PREFIX + "ports"
MEMORY_MB = PREFIX + "memory-mb"  # "" or absent: no limit
CPUS = PREFIX + "cpus"  # "" or absent: no limit
SHM_SIZE_MB = PREFIX + "shm-size-mb"
HOME_VOLUME = PREFIX + "home-volume"  # the volume at the user's home; absent: a throwaway home
# The end of its lease as made, ISO 8601 UTC ("" or absent: none); an extension is a record
# (fairshare/records.py), since labels cannot change.
LEASE_EXPIRES = PREFIX + "lease-expires"
IDLE_RECLAIM = PREFIX + "idle-reclaim"  # "false": an admin exempted it from idle reclaim
# The token of its bootstrap's directory on the host (containers/bootstrap_inputs.py); absent:
# its bootstrap's files were copied into it.
BOOTSTRAP = PREFIX + "bootstrap"
# On volumes: what the volume is ("home") and the uid its files belong to.
KIND = PREFIX + "kind"
UID = PREFIX + "uid"
# On an image that a commit made (containers/commit.py): who committed it, in which namespace
# (its size counts toward their disk quota). Not NAMESPACE/OWNER: a container made by hand
# from the image inherits its labels, and must not look like ours.
COMMITTED_BY = PREFIX + "committed-by"
COMMITTED_IN = PREFIX + "committed-in"


def namespace_filter(namespace: str) -> dict[str, list[str]]:
    """The Docker list filter for the containers of one namespace."""
    return {"label": [f"{NAMESPACE}={namespace}"]}


def gpu_indices(labels: Mapping[str, str]) -> list[int]:
    """The whole GPUs of GPU_INDICES (its MIG slices, "1:0", are left out: see gpu_ids)."""
    text = labels.get(GPU_INDICES, "")
    return [int(i) for i in text.split(",") if i.strip().isdecimal()]


@dataclass(frozen=True)
class GpuId:
    """A GPU as the API and GPU_INDICES name it: "1" is GPU 1 whole, "1:0" its MIG device
    at index 0 (nvmlDeviceGetMigDeviceHandleByIndex), a slice held and freed as a GPU is."""

    gpu: int
    slice: int | None = None  # None: the whole GPU

    def __str__(self) -> str:
        return str(self.gpu) if self.slice is None else f"{self.gpu}:{self.slice}"

    @classmethod
    def parse(cls, text: str) -> GpuId:
        """A whole GPU, "1", or a MIG slice, "1:0"; ValueError for anything else."""
        gpu, colon, index = text.strip().partition(":")
        if not (gpu + index).isascii() or not gpu.isdecimal() or (colon and not index.isdecimal()):
            raise ValueError(f'{text!r} is not a GPU index ("1") or a MIG slice ("1:0")')
        return cls(int(gpu), int(index) if colon else None)


def gpu_ids(labels: Mapping[str, str]) -> list[GpuId]:
    """Every GPU and MIG slice of GPU_INDICES, in order."""
    found = []
    for text in labels.get(GPU_INDICES, "").split(","):
        with contextlib.suppress(ValueError):
            found.append(GpuId.parse(text))
    return found


def ssh_host_keys(labels: Mapping[str, str]) -> list[str]:
    """The public key lines of the container's host keys ("ssh-ed25519 AAAA…")."""
    return [key.strip() for key in labels.get(SSH_HOST_KEYS, "").split(",") if key.strip()]


def ports(labels: Mapping[str, str]) -> dict[int, int]:
    """{container port: host port} from "8888:23000,6006:23001"."""
    published = {}
    for pair in labels.get(PORTS, "").split(","):
        inside, _, outside = pair.partition(":")
        if inside.isdecimal() and outside.isdecimal():
            published[int(inside)] = int(outside)
    return published


def format_ports(published: Mapping[int, int]) -> str:
    return ",".join(f"{inside}:{outside}" for inside, outside in published.items())

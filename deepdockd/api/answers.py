"""The JSON shapes of the answers: the seed's keys, kept exactly (``"ssh-port"`` keeps its
hyphen, ``"image"`` is a list of tags, ``"gpus"`` a list of strings), and ours beside them.
openapi.yaml defines each one; a handler builds its answer from these."""

from __future__ import annotations

from typing import Any

from deepdockd.accounting import GpuAccounting
from deepdockd.clock import iso
from deepdockd.containers.disk import DiskMeter
from deepdockd.containers.homes import HomeVolume
from deepdockd.containers.service import ManagedContainer
from deepdockd.docker import Image, PullProgress
from deepdockd.errors import ApiError
from deepdockd.images.service import PullResult
from deepdockd.metrics import GpuEntry, SliceEntry, VisibleProcess
from deepdockd.stats.sampler import ContainerStats
from deepdockd.tokens import HostToken

MIB = 1024 * 1024


def error(exc: ApiError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}


def container(
    c: ManagedContainer,
    accounting: GpuAccounting,
    disk: DiskMeter | None = None,
    stats: ContainerStats | None = None,
) -> dict[str, Any]:
    return {**container_described(c), **container_use(c, accounting, disk, stats)}


def container_described(c: ManagedContainer) -> dict[str, Any]:
    """What a container's answer takes from its description alone (Docker's labels and
    state, its fair-share record): the same until one of them changes."""
    running = c.state in ("running", "paused")  # a paused one keeps its published port
    return {
        "id": c.short_id,
        "name": c.name,
        "status": c.state,
        "image": [c.image],
        "image_id": c.image_id,
        "created": c.created,
        "ssh-port": c.published_ssh_port if running else None,
        "gpus": [str(i) for i in c.gpu_indices],
        "gpu_uuids": c.gpu_uuids,
        "owner": c.owner,
        "ssh_user": c.ssh_user,
        "ssh_host_keys": [
            {"type": key.type, "public_key": key.public_key, "fingerprint": key.fingerprint}
            for key in c.ssh_host_keys
        ],
        "ports": ports(c),
        "memory_mb": c.memory_mb,
        "cpus": c.cpus,
        "shm_size_mb": c.shm_size_mb,
        "home_volume": c.home_volume,
        "expires_at": iso(c.expires_at),
        "stopped_reason": c.stopped_reason,
        "idle_reclaim": c.idle_reclaim,
    }


def container_use(
    c: ManagedContainer,
    accounting: GpuAccounting,
    disk: DiskMeter | None = None,
    stats: ContainerStats | None = None,
) -> dict[str, Any]:
    """What a container's answer takes from the measurements, which change on their own
    cadence: what its processes use on the GPUs (null without NVML), its writable layer
    as last measured (null until then, and where disk is not given), and its cgroup's
    latest figures (null while it is not running or not sampled yet: deepdockd/stats/)."""
    use = accounting.latest.container_use(c.id) if accounting.available else None
    return {
        "gpu_memory_used_mib": use.memory_used_mib if use is not None else None,
        "gpu_utilization": use.utilization if use is not None else None,
        "disk_used_mb": disk.container_mb(c.id) if disk is not None else None,
        **container_stats(c, stats),
    }


def container_stats(c: ManagedContainer, stats: ContainerStats | None) -> dict[str, Any]:
    reading = stats.latest(c.id) if stats is not None and c.state == "running" else None
    if reading is None:
        return dict.fromkeys(("cpu_percent", "memory_used_mb", "memory_limit_mb", "pids"))
    cpu = reading.cpu_percent
    working_set, limit = reading.memory_working_set_bytes, reading.memory_limit_bytes
    return {
        "cpu_percent": round(cpu, 1) if cpu is not None else None,
        "memory_used_mb": round(working_set / MIB, 1) if working_set is not None else None,
        "memory_limit_mb": round(limit / MIB, 1) if limit is not None else None,
        "pids": reading.pids,
    }


def created(c: ManagedContainer) -> dict[str, Any]:
    return {
        "message": "container created",
        "id": c.short_id,
        "name": c.name,
        "ssh-port": c.ssh_port,
        "ports": ports(c),
        "expires_at": iso(c.expires_at),
        "ssh_server": c.ssh_server,
    }


def ports(c: ManagedContainer) -> dict[str, int]:
    return {str(inside): outside for inside, outside in c.ports.items()}


def lease(name: str, c: ManagedContainer) -> dict[str, Any]:
    ends = iso(c.expires_at)
    what = f"extended to {ends}" if ends else "removed: it has no end now"
    return {"message": f"lease of container '{name}' {what}", "name": name, "expires_at": ends}


def volume(home: HomeVolume, disk: DiskMeter | None = None) -> dict[str, Any]:
    return {
        "name": home.name,
        "owner": home.owner,
        "user_name": home.user_name,
        "uid": home.uid,
        "containers": list(home.containers),
        "created": home.created,
        "disk_used_mb": disk.volume_mb(home.name) if disk is not None else None,
    }


def image(i: Image) -> dict[str, Any]:
    return {
        "id": i.short_id,
        "tag": i.tags[0] if i.tags else "<none>:<none>",
        "digest": i.digests[0] if i.digests else None,
        "size_mb": _mib(i.size_bytes),
        "tags": list(i.tags),
        "created": i.created,
    }


def pull_result(result: PullResult) -> dict[str, Any]:
    return {
        "message": f"Image '{result.reference}' pulled successfully.",
        "id": result.image.short_id,
        "tags": list(result.image.tags),
        "size_mb": _mib(result.image.size_bytes),
    }


def pull_progress(event: PullProgress) -> dict[str, Any]:
    return {
        "status": event.status,
        "layer": event.layer,
        "current": event.current,
        "total": event.total,
    }


def gpu(entry: GpuEntry) -> dict[str, Any]:
    return {
        "index": entry.info.index,
        "uuid": entry.info.uuid,
        "name": entry.info.name,
        "memory_total_mib": entry.info.memory_total_mib,
        "power_limit_w": entry.info.power_limit_w,
        "containers": entry.holders,
        "held": entry.held,
        "health": "ok" if entry.error is None else entry.error,
        "points": entry.points,
        "memory_reserved_mib": entry.memory_reserved_mib,
        "mig_mode": entry.info.mig_mode,
        "mig_slices": [mig_slice(entry.info.index, found) for found in entry.mig_slices],
        "profiling": entry.profiling,
        "processes": (
            [gpu_process(p) for p in entry.processes] if entry.processes is not None else None
        ),
    }


def mig_slice(index: int, entry: SliceEntry) -> dict[str, Any]:
    return {
        "id": f"{index}:{entry.info.index}",
        "uuid": entry.info.uuid,
        "profile": entry.info.profile,
        "memory_total_mib": entry.info.memory_total_mib,
        "memory_used_mib": entry.memory_used_mib,
        "held": entry.held,
        "holders": (
            [{"container": name, "owner": owner} for name, owner in entry.holders]
            if entry.holders is not None
            else None
        ),
    }


def gpu_process(process: VisibleProcess) -> dict[str, Any]:
    use = process.use
    if not process.whole:
        return {"memory_used_mib": use.memory_used_mib, "kind": use.kind}
    return {
        "pid": use.pid,
        "kind": use.kind,
        "container": use.container,
        "owner": use.owner,
        "command": use.command,
        "memory_used_mib": use.memory_used_mib,
        "sm_utilization": use.sm_utilization,
        "stray": use.stray,
    }


def _mib(size_bytes: int) -> float:
    return round(size_bytes / MIB, 2)


def host_token(entry: HostToken) -> dict[str, Any]:
    """A self-made token as listed: never the token itself."""
    return {
        "id": entry.id,
        "name": entry.name,
        "user": entry.user,
        "role": entry.role,
        "created": entry.created,
    }

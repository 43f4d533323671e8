"""The GPUs a create asks for (``gpu_ids``), checked against the host's: whole GPUs by NVML
index ("1"), and the MIG slices of a GPU in MIG mode ("1:0", its MIG device at index 0). A
GPU in MIG mode is given out only as its slices, never whole."""

from __future__ import annotations

from collections.abc import Sequence

from deepdockd.containers.allocation import Gpu
from deepdockd.errors import InvalidInput
from deepdockd.gpu.nvml import GpuInfo
from deepdockd.labels import GpuId


def resolve_gpus(asked: Sequence[GpuId], host: Sequence[GpuInfo] | None) -> list[Gpu]:
    """The GPUs and slices ``asked``, pinned by UUID; a 422 naming the first that the host
    cannot give. ``host`` None: NVML cannot list them, so each is pinned by its index as
    asked (NVIDIA's container runtime takes "1:0" for a slice too)."""
    if host is None:
        return [Gpu(index=g.gpu, uuid=None, slice=g.slice) for g in asked]
    known = {info.index: info for info in host}
    return [_resolve(gpu_id, known) for gpu_id in asked]


def _resolve(gpu_id: GpuId, known: dict[int, GpuInfo]) -> Gpu:
    info = known.get(gpu_id.gpu)
    if info is None:
        listing = "; ".join(f"{g.index}: {g.name}" for g in known.values()) or "none"
        raise InvalidInput(
            f"gpu_ids: {gpu_id} is not a GPU of this host (its GPUs: {listing})",
            details={"field": "gpu_ids", "gpus": sorted(known)},
        )
    slices = [f"{info.index}:{s.index}" for s in info.slices]
    if gpu_id.slice is None:
        if info.mig_mode:
            offer = f"ask for one of its slices: {', '.join(slices)}" if slices else "it has none"
            raise InvalidInput(
                f"gpu_ids: GPU {info.index} is in MIG mode, so it is given out only as its MIG "
                f"slices, never whole; {offer} (see GET /gpus)",
                details={"field": "gpu_ids", "gpu": info.index, "mig_slices": slices},
            )
        return Gpu(index=info.index, uuid=info.uuid)
    if not info.mig_mode:
        raise InvalidInput(
            f"gpu_ids: {gpu_id} names a MIG slice, but GPU {info.index} is not in MIG mode; "
            f"ask for it whole as {info.index}",
            details={"field": "gpu_ids", "gpu": str(gpu_id)},
        )
    for found in info.slices:
        if found.index == gpu_id.slice:
            return Gpu(index=info.index, uuid=found.uuid, slice=found.index)
    listing = ", ".join(f"{i} ({s.profile})" for i, s in zip(slices, info.slices, strict=True))
    raise InvalidInput(
        f"gpu_ids: {gpu_id} is not a MIG slice of GPU {info.index} (its slices: "
        f"{listing or 'none'})",
        details={"field": "gpu_ids", "gpu": str(gpu_id), "mig_slices": slices},
    )

"""The metrics of one scrape, from what the daemon already keeps: the sampler's latest
readings, the GPU accounting, and one read of the namespace's containers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from deepdockd import labels
from deepdockd.accounting import Attribution
from deepdockd.containers.allocation import held_ports
from deepdockd.containers.disk import DiskMeasurement
from deepdockd.docker import ContainerSummary
from deepdockd.gpu import gpm
from deepdockd.gpu.nvml import GpuReading
from deepdockd.gpu.sampler import GpuStatus
from deepdockd.stats.exposition import container_families
from deepdockd.stats.sampler import ContainerReading

# dcgm-exporter's labels, so that NVIDIA's Grafana dashboard works unchanged, and the two it
# cannot give outside Kubernetes.
GPU_LABELS = (
    "gpu", "UUID", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION",
    "container", "owner",
)  # fmt: skip

# dcgm-exporter's name, its help, and the reading (in dcgm-exporter's unit).
_DCGM_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (%).", "utilization_pct"),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (MiB).", "memory_used_mib"),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (MiB).", "memory_free_mib"),
    ("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (MiB).", "memory_reserved_mib"),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (W).", "power_w"),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (C).", "temperature_c"),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (MHz).", "sm_clock_mhz"),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (MHz).", "memory_clock_mhz"),
    # GPM's profiling metrics (Hopper and newer): absent, not 0, on a GPU without GPM.
    *((metric.dcgm_name, metric.help, metric.field) for metric in gpm.METRICS),
)

_PROCESS_LABELS = ("gpu", "UUID", "pid", "kind", "container", "owner", "stray")


@dataclass(frozen=True)
class ScrapeData:
    hostname: str
    nvml_available: bool
    driver_version: str | None
    gpus: Sequence[GpuStatus]
    attribution: Attribution
    containers: Sequence[ContainerSummary] | None  # None: Docker did not answer
    port_ranges: dict[str, tuple[int, int]]  # "ssh", "service" -> the configured range
    sampler_ticks: int
    sampler_tick_seconds: float
    disk: DiskMeasurement | None = None  # None: not measured yet
    # GPU-seconds per (owner, "held"|"busy") since the usage database began.
    gpu_seconds: Mapping[tuple[str, str], float] | None = None
    # Each running container's latest cgroup figures, by container id (deepdockd/stats/).
    container_stats: Mapping[str, ContainerReading] | None = None


class ScrapeCollector(Collector):
    """Yields the metric families of ``data``, which the scrape sets just before it
    serialises the registry (synchronously, so two scrapes never see each other's)."""

    def __init__(self) -> None:
        self.data: ScrapeData | None = None

    def collect(self) -> Iterator[Metric]:
        data = self.data
        if data is None:
            return
        yield from _gpu_gauges(data)
        yield from _process_gauges(data)
        yield from _container_gauges(data)
        yield from _disk_gauges(data)
        yield from _daemon_metrics(data)
        yield from _usage_counters(data)
        yield from container_families(data.containers or (), data.container_stats or {})


def _gpu_gauges(data: ScrapeData) -> Iterator[Metric]:
    families = [
        GaugeMetricFamily(name, help_, labels=GPU_LABELS) for name, help_, _ in _DCGM_GAUGES
    ]
    holders = _holders(data.containers or ())
    for status in data.gpus:
        reading = status.latest
        if reading is None:
            continue
        info = status.info
        names, owners = holders.get(info.index, ([], []))
        label_values = (
            str(info.index), info.uuid, f"nvidia{info.index}", info.name, data.hostname,
            data.driver_version or "", ",".join(names), ",".join(sorted(set(owners))),
        )  # fmt: skip
        for family, (_, _, field) in zip(families, _DCGM_GAUGES, strict=True):
            value = _reading(reading, field)
            if value is not None:  # dcgm-exporter leaves out what a GPU does not report
                family.add_metric(label_values, value)
    yield from families


def _reading(reading: GpuReading, field: str) -> float | None:
    value: float | None = getattr(reading, field)
    return value


def _holders(containers: Sequence[ContainerSummary]) -> dict[int, tuple[list[str], list[str]]]:
    """GPU -> the names and owners of the running containers that hold it."""
    held: dict[int, tuple[list[str], list[str]]] = {}
    running = (c for c in containers if c.state in ("running", "paused"))  # paused ones hold
    for container in sorted(running, key=lambda c: c.name):
        for index in labels.gpu_indices(container.labels):
            names, owners = held.setdefault(index, ([], []))
            names.append(container.name)
            owners.append(container.labels.get(labels.OWNER, ""))
    return held


def _process_gauges(data: ScrapeData) -> Iterator[Metric]:
    memory = GaugeMetricFamily(
        "deepdockd_gpu_process_memory_used_mib",
        "GPU memory used by one process (MiB), with the container and owner it belongs to;"
        " kind is deepdockd, container (not deepdockd's) or host (owner: its user).",
        labels=_PROCESS_LABELS,
    )
    sm = GaugeMetricFamily(
        "deepdockd_gpu_process_sm_utilization",
        "SM utilization of one process (% of the GPU), as NVML samples it.",
        labels=_PROCESS_LABELS,
    )
    uuids = {status.info.index: status.info.uuid for status in data.gpus}
    for gpu, uses in sorted(data.attribution.by_gpu.items()):
        for use in uses or ():
            label_values = (
                str(gpu), uuids.get(gpu, ""), str(use.pid), use.kind, use.container or "",
                use.owner or "", "true" if use.stray else "false",
            )  # fmt: skip
            if use.memory_used_mib is not None:
                memory.add_metric(label_values, use.memory_used_mib)
            if use.sm_utilization is not None:
                sm.add_metric(label_values, use.sm_utilization)
    yield memory
    yield sm


def _container_gauges(data: ScrapeData) -> Iterator[Metric]:
    if data.containers is None:  # Docker is down: no figure rather than a wrong one
        return
    states: dict[tuple[str, str], int] = {}
    gpus_held: dict[str, int] = {}
    for container in data.containers:
        owner = container.labels.get(labels.OWNER, "")
        states[(container.state, owner)] = states.get((container.state, owner), 0) + 1
        if container.state in ("running", "paused"):  # a paused one keeps its GPUs
            count = len(labels.gpu_ids(container.labels))  # a MIG slice counts as one
            gpus_held[owner] = gpus_held.get(owner, 0) + count
    by_state = GaugeMetricFamily(
        "deepdockd_containers", "deepdockd's containers, by state and owner.",
        labels=("state", "owner"),
    )  # fmt: skip
    for (state, owner), count in sorted(states.items()):
        by_state.add_metric((state, owner), count)
    held = GaugeMetricFamily(
        "deepdockd_gpus_held", "GPUs held by running containers, by owner.", labels=("owner",)
    )
    for owner, count in sorted(gpus_held.items()):
        held.add_metric((owner,), count)
    free = GaugeMetricFamily(
        "deepdockd_free_ports",
        "Ports of each configured range that no deepdockd container holds.",
        labels=("kind",),
    )
    taken = held_ports(data.containers)
    for kind, (low, high) in sorted(data.port_ranges.items()):
        # Counted from the ports held, not by walking the range (tens of thousands).
        held_here = sum(1 for port in taken if low <= port <= high)
        free.add_metric((kind,), high - low + 1 - held_here)
    yield by_state
    yield held
    yield free


def _disk_gauges(data: ScrapeData) -> Iterator[Metric]:
    """The last measurement of Docker's system/df (its age: the timestamp gauge)."""
    disk = data.disk
    if disk is None:  # not measured yet: no figure rather than a wrong one
        return
    containers = GaugeMetricFamily(
        "deepdockd_container_disk_used_bytes",
        "Size of a container's writable layer (Docker's SizeRw), as last measured.",
        labels=("container", "owner"),
    )
    for entry in sorted(disk.containers.values(), key=lambda e: e.name):
        containers.add_metric((entry.name, entry.labels.get(labels.OWNER, "")), entry.size_bytes)
    volumes = GaugeMetricFamily(
        "deepdockd_volume_disk_used_bytes",
        "Size of a volume (a home: Docker's UsageData.Size), as last measured.",
        labels=("volume", "owner", "user_name"),
    )
    for entry in sorted(disk.volumes.values(), key=lambda e: e.name):
        owner = entry.labels.get(labels.OWNER, "")
        volumes.add_metric(
            (entry.name, owner, entry.labels.get(labels.SSH_USER, "")), entry.size_bytes
        )
    yield containers
    yield volumes
    yield GaugeMetricFamily(
        "deepdockd_disk_measured_timestamp_seconds",
        "When the disk use above was measured (Unix time).",
        value=disk.measured_at.timestamp(),
    )


def _usage_counters(data: ScrapeData) -> Iterator[Metric]:
    # Totals from the usage history (docs/usage.md), so a restart does not reset them.
    if data.gpu_seconds is None:
        return
    family = CounterMetricFamily(
        "deepdockd_gpu_seconds",
        "GPU-seconds held by deepdockd containers, and held seconds weighted by the GPU's"
        " activity (busy), since the usage history began.",
        labels=("owner", "kind"),
    )
    for (owner, kind), seconds in sorted(data.gpu_seconds.items()):
        family.add_metric([owner, kind], seconds)
    yield family


def _daemon_metrics(data: ScrapeData) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "deepdockd_docker_up",
        "1 while the Docker engine answers, 0 while it does not.",
        value=0 if data.containers is None else 1,
    )
    yield GaugeMetricFamily(
        "deepdockd_nvml_up",
        "1 while NVML is loaded, 0 without it.",
        value=1 if data.nvml_available else 0,
    )
    yield SummaryMetricFamily(
        "deepdockd_gpu_sampler_tick_seconds",
        "Time the GPU sampler's ticks took (all GPUs read, processes listed).",
        count_value=data.sampler_ticks,
        sum_value=data.sampler_tick_seconds,
    )

"""The containers' figures in the Prometheus exposition, under cAdvisor's names and units
(cAdvisor's metrics/prometheus.go), so that Grafana boards made for cAdvisor work: the
labels ``name`` (Docker's container name, as cAdvisor's docker handler sets it), ``id``
(``/docker/<id>``, the cgroup path cAdvisor names a Docker container by), ``image``, and ours:
``container`` (the name again, the label dcgm-exporter's series carry here) and ``owner``.

CPU, block I/O and network are counters since the container started (its cgroup's); a
restart starts them again, which ``rate()`` takes as a counter reset, as with cAdvisor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from deepdockd import labels
from deepdockd.docker import ContainerSummary
from deepdockd.stats.sampler import ContainerReading

LABELS = ("name", "container", "id", "image", "owner")

# (cAdvisor's name, its kind, help, the reading's field). Units as cAdvisor's: seconds, bytes.
_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("container_cpu_usage_seconds_total", "counter",
     "Cumulative CPU time consumed, all cores, in seconds.", "cpu_seconds"),
    ("container_memory_usage_bytes", "gauge",
     "Current memory usage in bytes, page cache included.", "memory_usage_bytes"),
    ("container_memory_working_set_bytes", "gauge",
     "Current working set in bytes: usage less the inactive file cache.",
     "memory_working_set_bytes"),
    ("container_spec_memory_limit_bytes", "gauge",
     "Memory limit of the container in bytes (0: unlimited, as cAdvisor).",
     "memory_limit_bytes"),
    ("container_fs_reads_bytes_total", "counter",
     "Cumulative bytes read from block devices.", "block_read_bytes"),
    ("container_fs_writes_bytes_total", "counter",
     "Cumulative bytes written to block devices.", "block_write_bytes"),
    ("container_network_receive_bytes_total", "counter",
     "Cumulative bytes received, every interface but lo.", "network_receive_bytes"),
    ("container_network_transmit_bytes_total", "counter",
     "Cumulative bytes transmitted, every interface but lo.", "network_transmit_bytes"),
    ("container_processes", "gauge",
     "Number of processes (tasks) in the container's cgroup: pids.current.", "pids"),
)  # fmt: skip


def container_families(
    containers: Sequence[ContainerSummary], latest: Mapping[str, ContainerReading]
) -> Iterator[Metric]:
    """One family per cAdvisor metric, one sample per running container sampled."""
    families: list[GaugeMetricFamily | CounterMetricFamily] = []
    for name, kind, help_, _ in _FAMILIES:
        if kind == "counter":
            # The family's name without _total: prometheus-client adds it back.
            families.append(CounterMetricFamily(name.removesuffix("_total"), help_, labels=LABELS))
        else:
            families.append(GaugeMetricFamily(name, help_, labels=LABELS))
    # Only the sampled ones are sorted: a scrape of 1,000 listed containers, few running,
    # should not pay for the rest (bench/: GET /metrics/prometheus).
    sampled = [c for c in containers if c.id in latest and c.state == "running"]
    for container in sorted(sampled, key=lambda c: c.name):
        reading = latest[container.id]
        label_values = (
            container.name,
            container.name,
            f"/docker/{container.id}",
            container.image,
            container.labels.get(labels.OWNER, ""),
        )
        for family, (_, _, _, field) in zip(families, _FAMILIES, strict=True):
            value: float | None = getattr(reading, field)
            if field == "memory_limit_bytes" and value is None:
                value = 0  # cAdvisor's unlimited
            if value is not None:
                family.add_metric(label_values, value)
    yield from families

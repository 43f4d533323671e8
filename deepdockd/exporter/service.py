"""GET /metrics/prometheus: one scrape reads the sampler's latest values, the GPU accounting
and, at most, one Docker list (none while the live view is fresh); it never calls NVML."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, generate_latest

from deepdockd.accounting import GpuAccounting
from deepdockd.config import Config
from deepdockd.containers.disk import DiskMeter
from deepdockd.containers.view import ContainerView
from deepdockd.docker import ContainerSummary, DockerUnavailable
from deepdockd.exporter.collector import ScrapeCollector, ScrapeData
from deepdockd.exporter.requests import RequestMetrics
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.stats.sampler import ContainerStats
from deepdockd.usage.recorder import UsageRecorder

# The classic text format, which every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Exporter:
    def __init__(
        self,
        config: Config,
        sampler: GpuSampler,
        accounting: GpuAccounting,
        view: ContainerView,
        *,
        disk: DiskMeter | None = None,
        usage: UsageRecorder | None = None,
        stats: ContainerStats | None = None,
    ) -> None:
        self._stats = stats
        self._disk = disk
        self._usage = usage
        self._config = config
        self._sampler = sampler
        self._accounting = accounting
        self._view = view
        self._hostname = socket.gethostname()
        # The app's own registry, not prometheus-client's global one: two apps in one
        # process (the tests) never share a series.
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestMetrics(self.registry)
        self._collector = ScrapeCollector()
        self.registry.register(self._collector)

    async def scrape(self) -> bytes:
        containers: list[ContainerSummary] | None
        try:
            containers = await self._view.summaries()
        except DockerUnavailable:
            containers = None
        self._collector.data = ScrapeData(
            hostname=self._hostname,
            nvml_available=self._sampler.available,
            driver_version=self._sampler.driver_version,
            gpus=self._sampler.statuses(),
            attribution=self._accounting.latest,
            containers=containers,
            port_ranges={
                "ssh": self._config.ssh_port_range,
                "service": self._config.service_port_range,
            },
            sampler_ticks=self._sampler.ticks,
            sampler_tick_seconds=self._sampler.tick_seconds,
            disk=self._disk.latest if self._disk is not None else None,
            gpu_seconds=self._usage.totals() if self._usage is not None else None,
            container_stats=self._stats.all_latest() if self._stats is not None else {},
        )
        try:
            return generate_latest(self.registry)
        finally:
            self._collector.data = None

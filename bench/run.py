"""deepdockd's benchmarks, on the test rig (private dockerd, simulated GPUs).

Every figure is a ratio against a baseline that does the same work, measured in the same run
the same way, or a resource figure, or (where nothing else does the same work: the scrape) a
time reported with its spread and no ratio. Two absolute times are rules: the event lag's
second, which clients of the live view are promised, and the half second of the dashboard's
day plot (DAY_PLOT_TARGET_MS). Prints one table; a full run writes it to bench/results.json
and into docs/benchmarks.md (bench/report.py renders it), with the commit it measured:
tests/test_bench_table.py fails once a file of bench/measured.txt differs from that commit.

    make bench        (or: .venv/bin/python -m bench.run [list memory series cpu create ...])
"""

# ruff: noqa: RUF001  (the table's ratios use the multiplication sign, on purpose)

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

# The daemon's own readiness probe for sshd, so that the baseline of "create -> first SSH
# login" waits for its sshd exactly as a create does.
from deepdockd.config import Config
from deepdockd.containers.passwords import sha512_crypt_hash
from deepdockd.containers.spec import CONTAINER_CAPABILITIES
from deepdockd.containers.sshd_wait import probe_delays, ssh_greets
from deepdockd.docker import ContainerSpec, Limits, LogRotation, create_config
from deepdockd.tokens import TokenStore

from bench import measured, report, stats_figure, usage_figure
from tests.support.daemon import Daemon
from tests.support.rig import (
    BUSYBOX_IMAGE,
    DEBIAN_NOSSH_IMAGE,
    DEBIAN_SSH_IMAGE,
    DEBIAN_WEBAPP_IMAGE,
    REGISTRY_ADDR,
    WEBAPP_PORT,
    Rig,
)
from tests.support.silent_registry import silent_registry

ROOT = Path(__file__).resolve().parents[1]
SIM_LIBRARY = ROOT / "build" / "nvml-sim" / "libnvidia-ml.so.1"
RESULTS = ROOT / "bench" / "results.json"
# The page that shows the last full run's table, between report.BEGIN and report.END.
TABLE_PAGE = ROOT / "docs" / "benchmarks.md"
PORTS = "24000-24999"
LIST_SIZES = (10, 100, 300, 1000)
# The list size that the list's targets are set at (issue 34); the larger one is reported.
TARGET_LIST_SIZE = 300
# The figures that list the containers that the figure before made, adding what is missing.
# Any other figure starts with none in the namespace: a daemon with a new state directory
# refuses to create beside containers it did not make (its state files look lost), and the
# list figure makes its own from the first.
LISTING = ("scrape", "memory")
# The event lag: this many of the listed containers started, then each stopped through
# Docker, with GET /containers polled this often until it shows the change.
LAG_SAMPLES = 30
LIST_POLL_S = 0.005
# Clients of GET /events held open during the concurrent creates and the RSS figure.
EVENT_CLIENTS = 50
FULL_RETENTION_S = 24 * 3600  # the shipped gpu_retention
FULL_RETENTION_POINTS = FULL_RETENTION_S // 10  # of the shipped 10 s buckets
# The dashboard's day plot, GET /metrics/gpus?step=720 over 24 h: what a click on "24 hours"
# waits for before the plots redraw (the other answers it waits for take milliseconds).
# A second is where a wait starts to interrupt the user's flow of thought (Nielsen, Usability
# Engineering, 1993); half of it is left for the browser and a slower network.
DAY_PLOT_TARGET_MS = 500
GPUS = 8
# What one NVML call costs on a real H100 (driver 580, measured for the design notes):
# memory, utilization, power, temperature and clocks 2-8 us each; the top of that range is
# used. Fan speed is NOT_SUPPORTED there and was not timed: taken as the same. The process
# lists cost about 9 us; the per-process SM samples were not timed apart: taken as the same.
# The slow calls measured there (total energy about 3 ms, PCIe throughput about 21 ms) are
# not made by the sampler, so the simulator has none of them.
H100_CALL_DELAY_US = {
    "nvmlDeviceGetMemoryInfo": 8,
    "nvmlDeviceGetMemoryInfo_v2": 8,
    "nvmlDeviceGetUtilizationRates": 8,
    "nvmlDeviceGetPowerUsage": 8,
    "nvmlDeviceGetTemperature": 8,
    "nvmlDeviceGetFanSpeed": 8,
    "nvmlDeviceGetClockInfo": 8,
    "nvmlDeviceGetComputeRunningProcesses_v3": 9,
    "nvmlDeviceGetGraphicsRunningProcesses_v3": 9,
    "nvmlDeviceGetProcessUtilization": 9,
}
# GPM (profiling metrics): NOT measured on an H100, an estimate until one is at hand. Each
# read is one nvmlGpmSampleGet (it reads the GPU's performance counters: an ioctl, taken as
# 25 times a reading's 8 us) and one nvmlGpmMetricsGet (computed by the library from the two
# samples, taken as 100 us for the nine metrics); nvmlGpmQueryDeviceSupport is once, at start.
GPM_CALL_DELAY_US_ESTIMATE = {
    "nvmlGpmQueryDeviceSupport": 50,
    "nvmlGpmSampleGet": 200,
    "nvmlGpmMetricsGet": 100,
}
# The GPM readings of the simulated GPUs (nvml_sim.c's "gpm": %, MiB/s).
GPM_READINGS = {
    "graphics_util": [3, 47, 98, 61, 12],
    "sm_util": [1, 30, 71, 45, 6],
    "sm_occupancy": [1, 18, 40, 25, 3],
    "any_tensor_util": [0, 20, 62, 31, 2],
    "dram_bw_util": [1, 22, 55, 37, 5],
    "pcie_tx_per_sec": [5, 300, 410, 210, 12],
    "pcie_rx_per_sec": [9, 1800, 2400, 1200, 40],
    "nvlink_total_tx_per_sec": [0, 9000, 18000, 4000, 0],
    "nvlink_total_rx_per_sec": [0, 9000, 18000, 4000, 0],
}
GPU_PROCESSES = 50  # processes on the GPUs, for the accounting figures
# The noisy neighbour: one user holds every stream they may (max_streams_per_user as shipped,
# NOISY_PULLS of them pulls from a registry that never answers, the rest log follows) while
# IDLE_CONNECTIONS kept-alive connections sit idle, each coming back as soon as the daemon
# closes it; another user's list and create are timed with and without.
NOISY_PULLS = 2
IDLE_CONNECTIONS = 500
NOISY_LISTS = 300
NOISY_CREATES = 3
# create → first SSH login: timed rounds, each one create of each side in alternating order.
# With 5 of them, the runs of recent commits gave 1.22 to 1.34 times the baseline against a
# target of 1.3: too few to tell the machine's noise from a change.
CREATE_ROUNDS = 15
# A create's phases in ms, by name, in the order they came.
Phases = dict[str, float]
# The by-hand side's password "pw1", hashed as deepdockd hashes it (SHA-512 crypt, its
# rounds), once: both sides' first logins then check a hash of the same cost.
PASSWORD_HASH = sha512_crypt_hash("pw1")


@dataclass
class Figure:
    """One row of the table; every field but ``notes`` is rendered (bench/report.py)."""

    name: str
    value: float
    unit: str  # of value and baseline alike
    against: str = ""  # what the baseline is
    baseline: float | None = None
    ratio: float | None = None  # value / baseline: below 1 is deepdockd faster
    target: str = "report"
    met: bool | None = None  # None: a figure to report, with no target
    detail: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


def eight_gpus(
    path: Path,
    call_delay_us: dict[str, int] | None,
    processes_file: Path | None = None,
    *,
    gpm: bool = False,
) -> Path:
    gpus = [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": f"GPU-be0c0000-0000-4000-8000-{i:012d}",
            "memory_total_mib": 81559,
            "power_limit_w": 700,
            "memory_used_mib": [1024 + i, 20480, 40960, 61440],
            "utilization": [3, 47, 98, 61, 12],
            "power_w": [71.5, 310.25, 690, 402],
            "temperature_c": [33, 52, 71, 60],
            "fan_pct": None,
            "memory_reserved_mib": 480,
            "sm_clock_mhz": [1980, 1755],
            "mem_clock_mhz": 2619,
            "call_delay_us": call_delay_us,
            **({"gpm": GPM_READINGS} if gpm else {}),
        }
        for i in range(GPUS)
    ]
    described: dict[str, Any] = {"driver_version": "550.54.15", "gpus": gpus}
    if processes_file is not None:
        described["processes_file"] = str(processes_file)
    path.write_text(json.dumps(described))
    return path


def gpu_processes_file(path: Path, pids: list[int]) -> Path:
    """The simulator's process lists: ``pids`` dealt over the GPUs, 1 GiB and 40 % each."""
    by_gpu: dict[str, list[dict[str, Any]]] = {str(i): [] for i in range(GPUS)}
    for n, pid in enumerate(pids):
        by_gpu[str(n % GPUS)].append({"pid": pid, "used_memory_mib": 1024, "sm": 40})
    path.write_text(json.dumps(by_gpu))
    return path


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def percentile_ms(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def timings(call: Callable[[], Awaitable[Any]], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        await call()
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
    return durations


async def interleaved(
    *calls: Callable[[], Awaitable[Any]], rounds: int = 15, per_round: int = 4
) -> list[list[float]]:
    """Timings of each call (deepdockd's, then its baselines') taken in turns, so that a slow
    moment of the machine hits them all."""
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for call, durations in zip(calls, samples, strict=True):
            durations += await timings(call, per_round, warmup=1)
    return samples


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """An app on a free local port of this process's event loop: deepdockd's and the
    baselines' apps are served the same way."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def naive_series_app(series: dict[str, list[dict[str, Any]]]) -> web.Application:
    """The path GET /metrics/gpus replaced: the same points held as one dict per point, in a
    deque per GPU, and encoded with json.dumps on every request."""
    history = {int(index): deque(points) for index, points in series.items()}

    async def gpu_metrics(request: web.Request) -> web.Response:
        return web.json_response({str(i): list(points) for i, points in history.items()})

    app = web.Application()
    app.router.add_get("/metrics/gpus", gpu_metrics)
    return app


def cpu_seconds(pid: int) -> float:
    """The CPU time of all the process's threads, to the nanosecond: each thread's schedstat.
    /proc/PID/stat counts 10 ms ticks, too coarse to see 40 driver calls of 8 us a second.
    A thread that exits takes its time along, but the daemon's threads (its NVML worker,
    the default executor's) live as long as it does."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e9


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Bench:
    def __init__(self, rig: Rig, workdir: Path) -> None:
        self.rig = rig
        self.workdir = workdir
        self.namespace = f"bench-{uuid.uuid4().hex[:6]}"
        # Every figure's GPUs cost what an H100's do; the CPU figure also runs without.
        self.h100_gpus = eight_gpus(workdir / "gpus-h100.json", H100_CALL_DELAY_US)
        self.free_gpus = eight_gpus(workdir / "gpus-free.json", None)
        # With GPM (Hopper's profiling metrics) read too, at an estimate of its calls' cost.
        self.gpm_gpus = eight_gpus(
            workdir / "gpus-gpm.json", {**H100_CALL_DELAY_US, **GPM_CALL_DELAY_US_ESTIMATE},
            gpm=True,
        )  # fmt: skip
        # The same, with GPU_PROCESSES real host processes (sleepers) on them to attribute.
        self.sleepers = [
            subprocess.Popen(["sleep", "7200"], start_new_session=True)
            for _ in range(GPU_PROCESSES)
        ]
        self.busy_gpus = eight_gpus(
            workdir / "gpus-busy.json",
            H100_CALL_DELAY_US,
            gpu_processes_file(workdir / "processes.json", [p.pid for p in self.sleepers]),
        )
        self.figures: list[Figure] = []
        self.docker = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(str(rig.docker_socket)), base_url="http://docker"
        )

    # --- helpers ---

    def start_daemon(
        self, name: str, *, gpu_config: Path | None, **settings: str
    ) -> tuple[Daemon, str, dict[str, str]]:
        """deepdockd as a process, with the simulated GPUs of ``gpu_config`` (None: none)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            "LD_LIBRARY_PATH": str(SIM_LIBRARY.parent) if gpu_config else "/nonexistent",
            "NVML_SIM_CONFIG": str(gpu_config or ""),
            "DEEPDOCKD_NAMESPACE": self.namespace,
            "DEEPDOCKD_SSH_PORT_RANGE": PORTS,
            # Each run's namespace is new: rules of its own would stay behind on the host.
            "DEEPDOCKD_EGRESS_POLICY": "false",
            **{f"DEEPDOCKD_{k.upper()}": v for k, v in settings.items()},
        }
        state = self.workdir / f"state-{name}"
        daemon = Daemon(
            "--port",
            str(port),
            "--docker-host",
            self.rig.docker_host,
            "--state-dir",
            str(state),
            env=env,
            log=self.workdir / f"{name}.log",
            auth=True,
        )
        base = f"http://127.0.0.1:{port}"
        daemon.wait_until_serving(f"{base}/healthz")
        token = (state / "admin.token").read_text().strip()
        return daemon, base, {"Authorization": f"Bearer {token}"}

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(
            f"  {figure.name}: {figure.value:.3f} {figure.unit}"
            + (f" (ratio {figure.ratio:.2f})" if figure.ratio is not None else ""),
            flush=True,
        )

    async def make_listed_containers(self, count: int, have: int) -> None:
        """Containers in the namespace, labelled as deepdockd labels them (created, not
        started: the list costs the same), so that GET /containers has `count` to list. Each
        sleeps once started, for the event lag to stop."""

        async def create(i: int) -> None:
            labels = {
                "deepdockd.namespace": self.namespace,
                "deepdockd.owner": "admin",
                "deepdockd.ssh-user": "u",
                "deepdockd.ssh-port": str(30000 + i),
                "deepdockd.gpu-indices": str(i % GPUS),
                "deepdockd.gpu-uuids": f"GPU-x-{i % GPUS}",
                "deepdockd.created": "2026-01-01T00:00:00.000000000Z",
            }
            body = {"Image": BUSYBOX_IMAGE, "Cmd": ["sleep", "3600"], "Labels": labels}
            async with self.docker.post(
                "/containers/create", params={"name": f"{self.namespace}-{i:03d}"}, json=body
            ) as response:
                assert response.status == 201, await response.text()

        for start in range(have, count, 20):
            await asyncio.gather(*(create(i) for i in range(start, min(count, start + 20))))

    async def listed_containers(self) -> int:
        filters = json.dumps({"label": [f"deepdockd.namespace={self.namespace}"]})
        async with self.docker.get(
            "/containers/json", params={"all": "1", "filters": filters}
        ) as r:
            return len(await r.json())

    def stop_sleepers(self) -> None:
        for sleeper in self.sleepers:
            sleeper.kill()
            sleeper.wait()

    async def remove_namespace(self) -> None:
        ids = self.rig.docker(
            "ps", "-aq", "--filter", f"label=deepdockd.namespace={self.namespace}"
        )
        if ids.split():
            self.rig.docker("rm", "--force", *ids.split())

    # --- the figures ---

    async def container_list(self) -> None:
        """GET /containers served from the live view, and by the old path (a second daemon,
        with `live_view = false`, that asks Docker on every list), both against the raw call
        to Docker, timed in turns so that all three see the same Docker; then the event lag."""
        filters = json.dumps({"label": [f"deepdockd.namespace={self.namespace}"]})
        with contextlib.ExitStack() as daemons:
            daemon, base, auth = self.start_daemon("list", gpu_config=self.h100_gpus)
            daemons.callback(daemon.stop)
            old_daemon, old_base, old_auth = self.start_daemon(
                "list-old", gpu_config=self.h100_gpus, live_view="false"
            )
            daemons.callback(old_daemon.stop)
            async with (
                aiohttp.ClientSession(headers=auth) as http,
                aiohttp.ClientSession(headers=old_auth) as old_http,
            ):

                async def ours() -> None:
                    async with http.get(f"{base}/containers") as r:
                        await r.read()

                async def old_path() -> None:
                    async with old_http.get(f"{old_base}/containers") as r:
                        await r.read()

                async def raw() -> None:
                    async with self.docker.get(
                        "/containers/json", params={"all": "1", "filters": filters}
                    ) as r:
                        await r.read()

                async def naive() -> None:  # the seed's way: list, then inspect each
                    async with self.docker.get(
                        "/containers/json", params={"all": "1", "filters": filters}
                    ) as r:
                        items = await r.json()
                    for item in items:
                        async with self.docker.get(f"/containers/{item['Id']}/json") as r:
                            await r.read()

                async def listed_by_view(count: int) -> None:
                    """Until the live view lists them all (it follows Docker's events)."""
                    await until_listed(http, base, lambda listed: len(listed) == count)

                have = 0
                for count in LIST_SIZES:
                    await self.make_listed_containers(count, have)
                    have = count
                    await listed_by_view(count)
                    ours_s, old_s, raw_s = await interleaved(ours, old_path, raw)
                    targeted = count == TARGET_LIST_SIZE
                    ratio = median_ms(ours_s) / median_ms(raw_s)
                    self.add(
                        Figure(
                            f"GET /containers, {count:,} containers, live view",
                            median_ms(ours_s),
                            "ms",
                            against="the raw `containers/json` call (Docker's own list)",
                            baseline=median_ms(raw_s),
                            ratio=ratio,
                            target="≤ 0.1×" if targeted else "report",
                            met=ratio <= 0.1 if targeted else None,
                        )
                    )
                    old_ratio = median_ms(old_s) / median_ms(raw_s)
                    self.add(
                        Figure(
                            f"GET /containers, {count:,} containers, old path "
                            "(`live_view = false`)",
                            median_ms(old_s),
                            "ms",
                            against="the raw `containers/json` call it makes",
                            baseline=median_ms(raw_s),
                            ratio=old_ratio,
                            target="≤ 1.5×" if targeted else "report",
                            met=old_ratio <= 1.5 if targeted else None,
                        )
                    )
                    naive_s = await timings(naive, 5, warmup=1)
                    self.add(
                        Figure(
                            f"GET /containers against a naive list, {count:,} containers",
                            median_ms(ours_s),
                            "ms",
                            against="list, then inspect each (the seed's way)",
                            baseline=median_ms(naive_s),
                            ratio=median_ms(ours_s) / median_ms(naive_s),
                        )
                    )
                await self.event_lag(http, base)

    async def event_lag(
        self, http: aiohttp.ClientSession, base: str, samples: int = LAG_SAMPLES
    ) -> None:
        """How soon the live view's list shows a change made behind the daemon's back: the
        first `samples` listed containers started, then each stopped through Docker's own API
        in turn, and GET /containers polled from Docker's answer until the container shows no
        longer running. Below 100 samples the 99th percentile is the slowest of them."""
        names = [f"{self.namespace}-{i:03d}" for i in range(samples)]

        async def start(name: str) -> None:
            async with self.docker.post(f"/containers/{name}/start") as r:
                assert r.status == 204, await r.text()

        await asyncio.gather(*(start(name) for name in names))
        await until_listed(http, base, lambda listed: all(listed[n] == "running" for n in names))

        async def lag(name: str) -> float:
            async with self.docker.post(f"/containers/{name}/stop", params={"t": "0"}) as r:
                stopped = time.perf_counter()  # Docker answers once the container has stopped
                assert r.status == 204, await r.text()
            shown = await until_listed(http, base, lambda listed: listed[name] != "running")
            return shown - stopped

        lags = [await lag(name) for name in names]
        what = "event lag, a Docker stop → GET /containers shows it"
        polled = f"polled every {LIST_POLL_S * 1000:.0f} ms"
        self.add(
            Figure(
                f"{what}, median",
                median_ms(lags),
                "ms",
                detail=f"{samples} stops, {polled}",
                notes={"lags_ms": [s * 1000 for s in lags]},
            )
        )
        p99 = percentile_ms(lags, 0.99)
        self.add(
            Figure(
                f"{what}, 99th percentile",
                p99,
                "ms",
                detail=f"the slowest of {samples}" if samples <= 100 else f"of {samples}",
                target="≤ 1000 ms",
                met=p99 <= 1000,
            )
        )

    async def gpu_series(self) -> None:
        """GET /metrics/gpus with 8 GPUs at full 24 h retention, against the naive path it
        replaced, served the same way: an aiohttp app on a local port of this process,
        fetched by the same client in turns; and in the same turns, what the dashboard asks
        for a day's plot (?step=). The real app runs here, on the simulated GPUs, with
        sampling sped up until the deques are full, then back at the default interval. Its
        sampler's clock (the seam GpuSampler has for it) says 10 s passed at each bucket, so
        the points are a real day's: 10 s apart, ending now."""
        os.environ["NVML_SIM_CONFIG"] = str(self.h100_gpus)
        ctypes.CDLL(str(SIM_LIBRARY), mode=ctypes.RTLD_GLOBAL)
        from deepdockd.api.app import create_app
        from deepdockd.gpu.sampler import GpuSampler

        bucket = 0.002
        config = Config(
            docker_host=self.rig.docker_host,
            state_dir=self.workdir / "state-series",
            namespace=self.namespace,
            auth=False,
            egress_policy=False,  # the bench leaves the host's firewall as it found it
        )
        day_starts = datetime.now(UTC) - timedelta(seconds=FULL_RETENTION_S)
        closes = itertools.count(1)
        sampler = GpuSampler(
            interval_s=bucket,
            bucket_s=bucket,
            retention_s=bucket * FULL_RETENTION_POINTS,
            retry_interval_s=config.gpu_retry_interval,
            clock=lambda: day_starts + timedelta(seconds=config.gpu_bucket * next(closes)),
        )
        app = create_app(config, gpus=sampler)
        runner, port = await serve(app)
        naive_runner: web.AppRunner | None = None
        try:
            started = time.monotonic()
            while not sampler.gpus or any(
                len(sampler.history(g.index)) < FULL_RETENTION_POINTS for g in sampler.gpus
            ):
                await asyncio.sleep(0.5)
                if time.monotonic() - started > 300:
                    raise RuntimeError("the GPU history did not fill in 300 s")
            sampler.interval_s = 1.0  # production's pace from here on
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/metrics/gpus") as r:
                    data = await r.json()
                naive_runner, naive_port = await serve(naive_series_app(data))
                # The dashboard's first request for a 24 h plot (dashboard/static/gpus.js):
                # stepFor(86400) and the start of the window that holds "24 h ago".
                step_s = max(10, round(FULL_RETENTION_S / 120))
                newest = datetime.fromisoformat(data["0"][-1]["timestamp"]).timestamp()
                since = (newest - FULL_RETENTION_S) // step_s * step_s
                day_query = {
                    "step": str(step_s),
                    "since": datetime.fromtimestamp(since, UTC).isoformat(),
                }
                sizes: dict[str, int] = {}
                windows: dict[str, int] = {}

                def fetch(
                    name: str, url: str, params: dict[str, str] | None = None
                ) -> Callable[[], Awaitable[None]]:
                    async def get() -> None:
                        async with http.get(url, params=params) as r:
                            assert r.status == 200, await r.text()
                            body = await r.read()
                        sizes[name] = len(body)
                        if params:
                            windows.update({k: len(v) for k, v in json.loads(body).items()})

                    return get

                ours_s, naive_s, day_s = await interleaved(
                    fetch("ours", f"http://127.0.0.1:{port}/metrics/gpus"),
                    fetch("naive", f"http://127.0.0.1:{naive_port}/metrics/gpus"),
                    fetch("day", f"http://127.0.0.1:{port}/metrics/gpus", day_query),
                    rounds=8,
                    per_round=2,
                )
        finally:
            if naive_runner is not None:
                await naive_runner.cleanup()
            await runner.cleanup()
        points = sum(len(v) for v in data.values())
        ratio = median_ms(ours_s) / median_ms(naive_s)
        self.add(
            Figure(
                f"GET /metrics/gpus, {GPUS} GPUs × 24 h ({points:,} points)",
                median_ms(ours_s),
                "ms",
                against="the naive server: a dict per point, `json.dumps` per request",
                baseline=median_ms(naive_s),
                ratio=ratio,
                target="< 1×",
                met=ratio < 1,
                notes={"points": points, "body_bytes": {k: sizes[k] for k in ("ours", "naive")}},
            )
        )
        # No ratio: the unmerged day above is another answer (about 60 times the bytes), and
        # no other server merges these points; the target is the user's wait.
        value = median_ms(day_s)
        lo, hi = min(windows.values()), max(windows.values())
        self.add(
            Figure(
                f"GET /metrics/gpus?step={step_s}, {GPUS} GPUs × 24 h: the dashboard's day plot",
                value,
                "ms",
                target=f"≤ {DAY_PLOT_TARGET_MS} ms",
                met=value <= DAY_PLOT_TARGET_MS,
                detail=f"median of {len(day_s)}, p90 {percentile_ms(day_s, 0.9):,.0f} ms; "
                f"{points:,} points merged into {lo if lo == hi else f'{lo}–{hi}'} windows a "
                f"GPU, {sizes['day']:,} bytes",
                notes={"points": points, "windows": windows, "body_bytes": sizes["day"]},
            )
        )

    async def client_startup(self, rounds: int = 30) -> None:
        """`deepdock --version` against `python -c pass`, interleaved: what the client adds to
        every command before it does anything (its imports)."""
        client = [str(Path(sys.executable).parent / "deepdock"), "--version"]
        bare = [sys.executable, "-c", "pass"]

        def once(argv: list[str]) -> float:
            started = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - started

        for argv in (client, bare):  # warm the page cache
            once(argv)
        pairs = [(once(client), once(bare)) for _ in range(rounds)]
        value = median_ms([c for c, _ in pairs])
        baseline = median_ms([b for _, b in pairs])
        self.add(
            Figure(
                "`deepdock --version` start-up, median",
                value,
                "ms",
                against="`python -c pass`",
                baseline=baseline,
                ratio=value / baseline,
                target="≤ baseline + 250 ms",
                met=value - baseline <= 250,
                detail=f"{rounds} runs each, interleaved",
            )
        )

    async def sampler_cpu(self, seconds: float = 30) -> None:
        """The whole daemon's CPU with 8 GPUs sampled at 1 s, an upper bound of the sampler's,
        against the same daemon without GPUs; once on a simulator whose calls cost nothing,
        once with the costs of an H100's driver, and once more reading GPM's profiling
        metrics too (at an estimate of their calls' cost: GPM_CALL_DELAY_US_ESTIMATE). All run
        in the same window, so that the machine's other work falls on all of them."""
        daemons = {
            "free": self.start_daemon("cpu-free", gpu_config=self.free_gpus)[0],
            "h100": self.start_daemon("cpu-h100", gpu_config=self.h100_gpus)[0],
            "busy": self.start_daemon("cpu-busy", gpu_config=self.busy_gpus)[0],
            "gpm": self.start_daemon("cpu-gpm", gpu_config=self.gpm_gpus)[0],
            "none": self.start_daemon("cpu-none", gpu_config=None)[0],
        }
        try:
            await asyncio.sleep(3)
            before = {name: cpu_seconds(d.process.pid) for name, d in daemons.items()}
            await asyncio.sleep(seconds)
            after = {name: cpu_seconds(d.process.pid) for name, d in daemons.items()}
        finally:
            for daemon in daemons.values():
                daemon.stop()
        percent = {name: (after[name] - before[name]) / seconds * 100 for name in daemons}
        for name, driver in (
            ("free", "no cost per call"),
            ("h100", "an H100's cost per call"),
            ("busy", f"an H100's cost per call, {GPU_PROCESSES} processes attributed"),
            ("gpm", "an H100's cost per call, GPM read too (its cost estimated, not measured)"),
        ):
            self.add(
                Figure(
                    f"daemon CPU sampling {GPUS} GPUs at 1 s, simulated driver with {driver}",
                    percent[name],
                    "% of one core",
                    against="the same daemon without GPUs",
                    baseline=percent["none"],
                    target="≤ 1 %",
                    met=percent[name] <= 1,
                    notes={"window_s": seconds},
                )
            )

    async def scrape(self) -> None:
        """One Prometheus scrape of a daemon with 8 GPUs, 1,000 containers and GPU_PROCESSES
        attributed processes. No baseline: no other program does this work (NVML's process
        lists joined with the live view's containers, at each scrape), and an answer that is
        not the same work makes a ratio that means nothing (GET /metrics/gpus?limit=1 was one);
        a server of the same bytes would time aiohttp only. So: the time itself, with its
        spread, the body's size and its number of samples."""
        await self.make_listed_containers(LIST_SIZES[-1], await self.listed_containers())
        daemon, base, auth = self.start_daemon("scrape", gpu_config=self.busy_gpus)
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                await until_listed(http, base, lambda listed: len(listed) == LIST_SIZES[-1])
                started = time.monotonic()
                while True:  # every process attributed: the accounting has run
                    async with http.get(f"{base}/gpus") as r:
                        gpus = (await r.json())["gpus"]
                    if sum(len(g["processes"] or []) for g in gpus) == GPU_PROCESSES:
                        break
                    assert time.monotonic() - started < 30, "the GPU processes were not listed"
                    await asyncio.sleep(0.2)
                body = b""

                async def scrape() -> None:
                    nonlocal body
                    async with http.get(f"{base}/metrics/prometheus") as r:
                        assert r.status == 200, await r.text()
                        body = await r.read()

                scrape_s = await timings(scrape, 60)
        finally:
            daemon.stop()
        samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        self.add(
            Figure(
                f"GET /metrics/prometheus, {GPUS} GPUs, {LIST_SIZES[-1]:,} containers, "
                f"{GPU_PROCESSES} GPU processes",
                median_ms(scrape_s),
                "ms",
                target="≤ 3 ms",
                met=median_ms(scrape_s) <= 3,
                detail=f"median of {len(scrape_s)}, p10–p90 {percentile_ms(scrape_s, 0.1):.1f}–"
                f"{percentile_ms(scrape_s, 0.9):.1f} ms; {samples:,} samples, {len(body):,} bytes",
                notes={"body_bytes": len(body), "samples": samples},
            )
        )

    async def memory(self, clients: int = EVENT_CLIENTS) -> None:
        """RSS of a daemon with full retention for 8 GPUs, listing 1,000 containers (from
        its live view); then again with `clients` event streams open."""
        await self.make_listed_containers(LIST_SIZES[-1], await self.listed_containers())
        bucket = 0.004
        daemon, base, auth = self.start_daemon(
            "rss",
            gpu_config=self.h100_gpus,
            gpu_sample_interval=str(bucket),
            gpu_bucket=str(bucket),
            gpu_retention=str(bucket * FULL_RETENTION_POINTS),
            # EVENT_CLIENTS dashboards of one admin: more than the per-user stream cap.
            max_streams_per_user="0",
        )
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                started = time.monotonic()
                while True:
                    async with http.get(f"{base}/gpus") as r:
                        gpus = (await r.json())["gpus"]
                    if gpus and all(g["points"] >= FULL_RETENTION_POINTS for g in gpus):
                        break
                    assert time.monotonic() - started < 400, "the GPU history did not fill"
                    await asyncio.sleep(2)

                async def dashboards() -> tuple[int, int]:
                    """Both big answers served, as dashboards polling them would: the points
                    and the containers listed."""
                    for _ in range(10):
                        async with http.get(f"{base}/metrics/gpus") as r:
                            points = sum(len(p) for p in (await r.json()).values())
                        async with http.get(f"{base}/containers") as r:
                            listed = len((await r.json())["containers"])
                    return points, listed

                points, listed = await dashboards()
                rss = rss_mib(daemon.process.pid)
                async with event_streams(http, f"{base}/events", clients) as streams:
                    await dashboards()
                    rss_streams = rss_mib(daemon.process.pid)
                    ended = [s.ended for s in streams if s.ended]
                assert not ended, f"event streams ended before they were closed: {ended}"
        finally:
            daemon.stop()
        self.add(
            Figure(
                f"daemon RSS, full retention, {GPUS} GPUs, {listed:,} containers",
                rss,
                "MiB",
                target="≤ 150 MiB",
                met=rss <= 150,
                notes={"containers_listed": listed, "points": points},
            )
        )
        self.add(
            Figure(
                f"daemon RSS, full retention, {GPUS} GPUs, {listed:,} containers, "
                f"{clients} open event streams",
                rss_streams,
                "MiB",
                target="≤ 150 MiB",
                met=rss_streams <= 150,
                notes={"containers_listed": listed, "points": points, "event_streams": clients},
            )
        )

    async def create_to_login(self, rounds: int = CREATE_ROUNDS) -> None:
        """From asking for a container to a first SSH login, against the same container
        started by hand through the Docker API calls deepdockd makes; both sides ready by the
        same probe (deepdockd's own, on sshd's greeting) and then logging in once. Each side's
        time split into phases: deepdockd's from its answer's Server-Timing header, the by-hand
        side's timed here, and the login and (for deepdockd) the HTTP round trip by the client.
        One untimed round first (the owner's home volume and network, the page cache); then
        `rounds` timed ones, in alternating order, each container removed after its round."""
        daemon, base, auth = self.start_daemon("create", gpu_config=self.h100_gpus)
        ours: list[Phases] = []
        baseline: list[Phases] = []  # by hand, on a network of its own as deepdockd's are
        on_bridge: list[Phases] = []  # by hand, on Docker's default bridge
        bundled: list[Phases] = []  # the image without sshd: the bundled server
        by_hand_ids: list[str] = []
        # The by-hand side's own network, made once as deepdockd makes an owner's: Docker's
        # start of a container on a user-defined network does more (its embedded DNS).
        network = f"{self.namespace}-by-hand"
        async with self.docker.post("/networks/create", json={"Name": network}) as r:
            assert r.status == 201, await r.text()
        try:
            async with aiohttp.ClientSession(headers=auth) as http:

                async def with_deepdockd(name: str, image: str = DEBIAN_SSH_IMAGE) -> Phases:
                    body = {"name": name, "image": image, "user_name": "u1", "password": "pw1"}
                    started = time.perf_counter()
                    async with http.post(f"{base}/containers/create", json=body) as r:
                        answer = await r.json()  # answered once sshd greets
                        assert r.status == 201, answer
                        phases = server_timing(r.headers["Server-Timing"])
                    answered = time.perf_counter()
                    phases["http"] = (answered - started) * 1000 - sum(phases.values())
                    await ssh_login(answer["ssh-port"], "u1", "pw1")
                    phases["login"] = (time.perf_counter() - answered) * 1000
                    return phases

                async def remove(name: str) -> None:
                    async with http.delete(f"{base}/containers/{name}?force=true") as r:
                        assert r.status == 200, await r.text()

                async def with_sshd(i: int) -> None:
                    name = f"{self.namespace}-ssh-{i}"
                    ours.append(await with_deepdockd(name))
                    await remove(name)

                async def without_sshd(i: int) -> None:
                    name = f"{self.namespace}-bundled-{i}"
                    bundled.append(await with_deepdockd(name, DEBIAN_NOSSH_IMAGE))
                    await remove(name)

                async def by_hand(i: int) -> None:
                    name = f"{self.namespace}-manual-{i}"
                    baseline.append(await self.by_hand(name, 25000 + i, by_hand_ids, network))

                async def by_hand_on_bridge(i: int) -> None:
                    name = f"{self.namespace}-bridge-{i}"
                    on_bridge.append(await self.by_hand(name, 25100 + i, by_hand_ids, None))

                # The untimed round; its container with sshd stays, as a user's would, so that
                # the owner's network is there for every timed create.
                await with_deepdockd(f"{self.namespace}-ssh-warm")
                await with_deepdockd(f"{self.namespace}-bundled-warm", DEBIAN_NOSSH_IMAGE)
                await remove(f"{self.namespace}-bundled-warm")
                await self.by_hand(f"{self.namespace}-manual-warm", 25999, by_hand_ids, network)
                await self.by_hand(f"{self.namespace}-bridge-warm", 25998, by_hand_ids, None)
                sides = (with_sshd, by_hand, without_sshd, by_hand_on_bridge)
                for i in range(rounds):
                    order = sides if i % 2 == 0 else sides[::-1]
                    for side in order:  # neither side always goes first
                        await side(i)
        finally:
            daemon.stop()
            for container_id in by_hand_ids:
                async with self.docker.delete(
                    f"/containers/{container_id}", params={"force": "true"}
                ) as r:
                    assert r.status in (204, 404), await r.text()
            async with self.docker.delete(f"/networks/{network}") as r:
                assert r.status == 204, await r.text()
            await self.remove_namespace_matching("ssh")
            await self.remove_namespace_matching("bundled")

        ours_ms = [sum(p.values()) for p in ours]
        baseline_ms = [sum(p.values()) for p in baseline]
        bridge_ms = [sum(p.values()) for p in on_bridge]
        bundled_ms = [sum(p.values()) for p in bundled]

        def spread(samples: list[float]) -> str:
            low, high = percentile_ms(samples, 0.1) / 1000, percentile_ms(samples, 0.9) / 1000
            return f"{low:,.0f}–{high:,.0f} ms"

        ratio = statistics.median(ours_ms) / statistics.median(baseline_ms)
        self.add(
            Figure(
                "create → first SSH login",
                statistics.median(ours_ms),
                "ms",
                against="the same image's container made and started by hand through the same "
                "Docker API calls (create, start; a network of its own), sshd set up inside; "
                "same probe and login",
                baseline=statistics.median(baseline_ms),
                ratio=ratio,
                target="≤ 1.1×",
                met=ratio <= 1.1,
                detail=f"median of {rounds} rounds, alternating; p10–p90 {spread(ours_ms)}, "
                f"by hand {spread(baseline_ms)}",
                notes={"ours_ms": ours_ms, "baseline_ms": baseline_ms},
            )
        )
        ratio = statistics.median(ours_ms) / statistics.median(bridge_ms)
        self.add(
            Figure(
                "create → first SSH login, against a by-hand container on Docker's default bridge",
                statistics.median(ours_ms),
                "ms",
                against="the same by hand on Docker's default bridge: no network of its own, "
                "which deepdockd gives each owner (network_isolation)",
                baseline=statistics.median(bridge_ms),
                ratio=ratio,
                detail=f"by hand on the bridge {spread(bridge_ms)}; "
                + phase_table(on_bridge, None),
                notes={"bridge_ms": bridge_ms, "bridge": on_bridge},
            )
        )
        self.add(
            Figure(
                "create → first SSH login, by phase (medians)",
                statistics.median(ours_ms),
                "ms",
                against="the by-hand side's matching phases",
                baseline=statistics.median(baseline_ms),
                detail=phase_table(ours, baseline),
                notes={"ours": ours, "baseline": baseline},
            )
        )
        ratio = statistics.median(bundled_ms) / statistics.median(ours_ms)
        self.add(
            Figure(
                "create → first SSH login, image without sshd (the bundled server)",
                statistics.median(bundled_ms),
                "ms",
                against="the same with the image that has sshd",
                baseline=statistics.median(ours_ms),
                ratio=ratio,
                target="≤ 1.0×",
                met=ratio <= 1.0,
                detail=f"median of {rounds}, in the same rounds; p10–p90 {spread(bundled_ms)}; "
                + phase_table(bundled, None),
                notes={"bundled_ms": bundled_ms, "bundled": bundled},
            )
        )

    async def by_hand(
        self, name: str, host_port: int, made: list[str], network: str | None
    ) -> Phases:
        """The baseline of create → first SSH login: the container made and started through
        the calls deepdockd makes (POST /containers/create with a body of deepdockd's own
        create_config, then POST /containers/{id}/start, on Docker's socket with aiohttp, as
        aiodocker does), the same image, user, capabilities, init and published port; sshd
        set up by the command instead of a bootstrap, the password set from a hash as strong
        as deepdockd's (so that both logins check the same cost). What it leaves out is what
        deepdockd adds: its checks and allocation, the home volume, the owner's network, the
        bootstrap copied in. On ``network`` (None: Docker's default bridge). Returns its
        phases; the container is removed after."""
        config = Config()
        spec = ContainerSpec(
            name=name,
            image_id=DEBIAN_SSH_IMAGE,
            entrypoint=("/bin/sh", "-c"),
            cmd=(
                f"useradd -m -s /bin/bash u1 && echo 'u1:{PASSWORD_HASH}' | chpasswd -e "
                "&& ssh-keygen -A && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e",
            ),
            user="0",
            env=(),
            hostname=name[:63],
            labels={},
            published_ports={22: (config.ssh_bind_address, host_port)},
            mounts=(),
            limits=Limits(
                shm_size_mib=config.default_shm_size_mb,
                memory_mib=None,
                cpus=None,
                pids=config.pids_limit,
            ),
            capabilities=CONTAINER_CAPABILITIES,
            log_rotation=LogRotation(config.log_max_size, config.log_max_file),
            network=network,
            gpu_device_ids=(),
            init=True,
            restart_unless_stopped=True,
        )
        phases: Phases = {}
        clock = time.perf_counter()

        def done(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            phases[phase] = (now - clock) * 1000
            clock = now

        async with self.docker.post(
            "/containers/create", params={"name": name}, json=create_config(spec)
        ) as r:
            answer = await r.json()
            assert r.status == 201, answer
        done("docker_create")
        made.append(answer["Id"])
        async with self.docker.post(f"/containers/{answer['Id']}/start") as r:
            assert r.status == 204, await r.text()
        done("start")
        await wait_for_sshd_greeting(host_port)
        done("sshd_ready")
        await ssh_login(host_port, "u1", "pw1")
        done("login")
        async with self.docker.delete(f"/containers/{answer['Id']}", params={"force": "true"}) as r:
            assert r.status == 204, await r.text()
        made.remove(answer["Id"])
        return phases

    async def concurrent_creates(self, count: int = 20, clients: int = EVENT_CLIENTS) -> None:
        """`count` creates at once; then `count` more with `clients` clients of GET /events
        attached, each of which must see every new container created and started, with ids
        that only increase."""
        # EVENT_CLIENTS dashboards of one admin: more than the per-user stream cap.
        daemon, base, auth = self.start_daemon(
            "concurrent", gpu_config=self.h100_gpus, max_streams_per_user="0"
        )
        first = [f"{self.namespace}-c{i:02d}" for i in range(count)]
        watched = [f"{self.namespace}-e{i:02d}" for i in range(count)]
        try:
            async with aiohttp.ClientSession(headers=auth) as http:

                async def create(name: str) -> tuple[int, Any]:
                    body = {
                        "name": name,
                        "image": DEBIAN_SSH_IMAGE,
                        "user_name": "u1",
                        "password": "pw1",
                    }
                    async with http.post(f"{base}/containers/create", json=body) as r:
                        return r.status, await r.json()

                async def creates(names: list[str]) -> tuple[float, list[tuple[int, Any]]]:
                    started = time.perf_counter()
                    answers = await asyncio.gather(*(create(name) for name in names))
                    return time.perf_counter() - started, answers

                elapsed, answers = await creates(first)
                # The second round starts as the first did: none of the namespace's containers.
                await self.remove_namespace_matching(f"{self.namespace}-c")
                async with event_streams(http, f"{base}/events", clients) as streams:
                    watched_elapsed, watched_answers = await creates(watched)
                    for _ in range(200):  # up to 10 s more for the last changes to come
                        if all(s.saw(watched, ("created", "started")) for s in streams):
                            break
                        await asyncio.sleep(0.05)
        finally:
            daemon.stop()
            await self.remove_namespace_matching(f"{self.namespace}-c")
            await self.remove_namespace_matching(f"{self.namespace}-e")

        def created(
            name: str, seconds: float, answers: list[tuple[int, Any]], **more: Any
        ) -> Figure:
            ports = [a["ssh-port"] for status, a in answers if status == 201]
            return Figure(
                name,
                seconds,
                "s",
                target="all succeed, distinct ports",
                met=len(ports) == count and len(set(ports)) == count,
                detail=f"{len(ports)} succeeded, {len(set(ports))} distinct ports",
                notes={"succeeded": len(ports), "distinct_ports": len(set(ports))},
                **more,
            )

        self.add(created(f"{count} concurrent creates", elapsed, answers))
        self.add(
            created(
                f"{count} concurrent creates, {clients} event-stream clients attached",
                watched_elapsed,
                watched_answers,
                against="the same creates with none attached",
                baseline=elapsed,
                ratio=watched_elapsed / elapsed,
            )
        )
        missed = sum(not s.saw(watched, ("created", "started")) for s in streams)
        disordered = sum(not s.ids_increase() for s in streams)
        everything = sum(
            s.saw(watched, ("created", "started")) and s.ids_increase() for s in streams
        )
        self.add(
            Figure(
                f"{clients} event-stream clients during {count} concurrent creates: "
                "every client saw every change",
                everything,
                "clients",
                target=f"all {clients}",
                met=everything == clients,
                detail=f"each of the {count} created and started, ids increasing",
                notes={
                    "missed_a_change": missed,
                    "ids_not_increasing": disordered,
                    "ended_early": sorted({s.ended for s in streams if s.ended}),
                },
            )
        )

    async def metrics_throughput(self, clients: int = 32, seconds: float = 5) -> None:
        daemon, base, auth = self.start_daemon("rps", gpu_config=self.h100_gpus)
        latencies: list[float] = []
        try:
            async with aiohttp.ClientSession(
                headers=auth, connector=aiohttp.TCPConnector(limit=clients)
            ) as http:
                deadline = time.monotonic() + seconds

                async def client() -> None:
                    while time.monotonic() < deadline:
                        started = time.perf_counter()
                        async with http.get(f"{base}/metrics") as r:
                            await r.read()
                        latencies.append(time.perf_counter() - started)

                await asyncio.gather(*(client() for _ in range(clients)))
        finally:
            daemon.stop()
        p50_ms, p99_ms = percentile_ms(latencies, 0.5), percentile_ms(latencies, 0.99)
        self.add(
            Figure(
                f"GET /metrics, {clients} concurrent clients",
                len(latencies) / seconds,
                "requests/s",
                detail=f"p50 {p50_ms:.0f} ms, p99 {p99_ms:.0f} ms",
                notes={"p50_ms": p50_ms, "p99_ms": p99_ms},
            )
        )

    async def proxy(self, rounds: int = 15) -> None:
        """A service in a container (tests/support/web_app.py) through deepdockd's proxy,
        against the same service at its published port directly (both through Docker's port
        publisher): a 1 MiB download, and a WebSocket message's round trip on an open socket,
        interleaved."""
        daemon, base, auth = self.start_daemon("proxy", gpu_config=None)
        name = f"{self.namespace}-web"
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                body = {
                    "name": name, "image": DEBIAN_WEBAPP_IMAGE, "user_name": "u1",
                    "password": "pw1", "ports": [WEBAPP_PORT],
                }  # fmt: skip
                async with http.post(f"{base}/containers/create", json=body) as r:
                    created = await r.json()
                    assert r.status == 201, created
                direct = f"http://127.0.0.1:{created['ports'][str(WEBAPP_PORT)]}/"
                proxied = f"{base}/containers/{name}/proxy/{WEBAPP_PORT}/"
                for _ in range(100):  # until the app listens
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(proxied) as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.1)

                def download(url: str) -> Callable[[], Awaitable[None]]:
                    async def get() -> None:
                        async with http.get(f"{url}download?size={1024 * 1024}") as r:
                            assert len(await r.read()) == 1024 * 1024

                    return get

                through, straight = await interleaved(
                    download(proxied), download(direct), rounds=rounds
                )
                async with (
                    http.ws_connect(f"{proxied}ws") as proxied_ws,
                    http.ws_connect(f"{direct}ws") as direct_ws,
                ):

                    def round_trip(
                        ws: aiohttp.ClientWebSocketResponse,
                    ) -> Callable[[], Awaitable[None]]:
                        async def echo() -> None:
                            await ws.send_str("ping")
                            assert await ws.receive_str() == "ping"

                        return echo

                    ws_through, ws_straight = await interleaved(
                        round_trip(proxied_ws), round_trip(direct_ws), rounds=rounds, per_round=20
                    )
        finally:
            daemon.stop()
        for what, ours, theirs in (
            ("a 1 MiB download", through, straight),
            ("a WebSocket message's round trip", ws_through, ws_straight),
        ):
            value, baseline = median_ms(ours), median_ms(theirs)
            self.add(
                Figure(
                    f"{what} through the proxy, median",
                    value,
                    "ms",
                    against="the published port directly",
                    baseline=baseline,
                    ratio=value / baseline,
                    target="≤ 1.3×",
                    met=value / baseline <= 1.3,
                    detail=f"{len(ours)} each, interleaved; p90 {percentile_ms(ours, 0.9):.2f} "
                    f"vs {percentile_ms(theirs, 0.9):.2f} ms",
                )
            )
        mib_s = 1000 / median_ms(through)
        self.add(
            Figure(
                "the proxy's throughput, 1 MiB downloads one at a time",
                mib_s,
                "MiB/s",
                against="the published port directly",
                baseline=1000 / median_ms(straight),
                ratio=mib_s / (1000 / median_ms(straight)),
            )
        )

    async def noisy_neighbour(self) -> None:
        """Another user's GET /containers (p99) and create → first SSH login while one user
        holds the stream cap and IDLE_CONNECTIONS idle connections are open, against the same
        with none; and the daemon's open files and RSS under that load."""
        state = self.workdir / "state-noisy"
        tokens = TokenStore(state)
        noisy = {"Authorization": f"Bearer {tokens.add('noisy', 'user')}"}
        quiet = {"Authorization": f"Bearer {tokens.add('quiet', 'user')}"}
        cap = Config().max_streams_per_user
        async with silent_registry() as registry:
            settings = {"allowed_registries": f"{REGISTRY_ADDR},{registry.address}"}
            if "max_connections_per_client" in Config.__dataclass_fields__:
                # As shipped, 256 from one address: raised so that all the idle ones stay open.
                settings["max_connections_per_client"] = str(4 * IDLE_CONNECTIONS)
            daemon, base, _ = self.start_daemon("noisy", gpu_config=self.h100_gpus, **settings)
            pid = daemon.process.pid
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    made = await http.post(
                        f"{base}/containers/create",
                        json={"name": "loud", "image": DEBIAN_SSH_IMAGE, "user_name": "u1",
                              "password": "pw1"},
                        headers=noisy,
                    )  # fmt: skip
                    assert made.status == 201, await made.text()
                    calm = await self.quiet_user(http, base, quiet, "calm")
                    calm["fds"], calm["rss_mib"] = open_files(pid), rss_mib(pid)
                    async with (
                        streams_held(http, base, noisy, cap, registry.address),
                        idle_connections(base, IDLE_CONNECTIONS),
                    ):
                        loaded = await self.quiet_user(http, base, quiet, "loaded")
                        loaded["fds"], loaded["rss_mib"] = open_files(pid), rss_mib(pid)
            finally:
                daemon.stop()
                await self.remove_namespace()
        load = f"{cap} streams of one user ({NOISY_PULLS} hung pulls), {IDLE_CONNECTIONS} idle"
        ratio = loaded["list_p99_ms"] / calm["list_p99_ms"]
        self.add(
            Figure(
                "noisy neighbour: another user's GET /containers p99",
                loaded["list_p99_ms"],
                "ms",
                against="the same with no streams and no idle connections",
                baseline=calm["list_p99_ms"],
                ratio=ratio,
                target="≤ 1.5×",
                met=ratio <= 1.5,
                detail=f"{NOISY_LISTS} lists each; {load}",
                notes={"calm": calm, "loaded": loaded},
            )
        )
        ratio = median_ms(loaded["create_s"]) / median_ms(calm["create_s"])
        self.add(
            Figure(
                "noisy neighbour: another user's create → first SSH login",
                median_ms(loaded["create_s"]),
                "ms",
                against="the same with no streams and no idle connections",
                baseline=median_ms(calm["create_s"]),
                ratio=ratio,
                target="≤ 1.2×",
                met=ratio <= 1.2,
                detail=f"median of {NOISY_CREATES}; {load}",
            )
        )
        self.add(
            Figure(
                "noisy neighbour: the daemon's open files under that load",
                loaded["fds"],
                "files",
                against="with no streams and no idle connections",
                baseline=calm["fds"],
                detail=f"RSS {loaded['rss_mib']:.0f} MiB (without: {calm['rss_mib']:.0f} MiB)",
                notes={"rss_mib": loaded["rss_mib"], "rss_mib_calm": calm["rss_mib"]},
            )
        )

    async def quiet_user(
        self, http: aiohttp.ClientSession, base: str, auth: dict[str, str], phase: str
    ) -> dict[str, Any]:
        """The quiet user's figures: NOISY_LISTS lists (p99) and NOISY_CREATES creates →
        first SSH login, each container removed before the next, so every list sees the
        same containers."""
        lists: list[float] = []
        for _ in range(NOISY_LISTS):
            started = time.perf_counter()
            async with http.get(f"{base}/containers", headers=auth) as r:
                assert r.status == 200, await r.text()
                await r.read()
            lists.append(time.perf_counter() - started)
        creates: list[float] = []
        for i in range(NOISY_CREATES):
            name = f"{phase}-{i}"
            body = {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw1"}
            started = time.perf_counter()
            async with http.post(f"{base}/containers/create", json=body, headers=auth) as r:
                answer = await r.json()
                assert r.status == 201, answer
            await ssh_login(answer["ssh-port"], "u1", "pw1")
            creates.append(time.perf_counter() - started)
            async with http.delete(f"{base}/containers/{name}?force=true", headers=auth) as r:
                assert r.status == 200, await r.text()
        return {"list_p99_ms": percentile_ms(lists, 0.99), "create_s": creates}

    async def remove_namespace_matching(self, part: str) -> None:
        output = self.rig.docker(
            "ps",
            "-a",
            "--filter",
            f"label=deepdockd.namespace={self.namespace}",
            "--format",
            "{{.Names}}",
        )
        names = [n for n in output.split() if part in n]
        if names:
            self.rig.docker("rm", "--force", *names)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.asynccontextmanager
async def streams_held(
    http: aiohttp.ClientSession, base: str, auth: dict[str, str], cap: int, registry: str
) -> AsyncIterator[None]:
    """``cap`` streams of one user: NOISY_PULLS pulls from ``registry`` (which never
    answers), the rest log follows of its container "loud"; the next is refused (429)."""
    follows = [
        await http.get(f"{base}/containers/loud/logs?follow=true", headers=auth)
        for _ in range(cap - NOISY_PULLS)
    ]
    pulls = [
        asyncio.create_task(
            http.post(f"{base}/images", json={"repo_tag": f"{registry}/never:{i}"}, headers=auth)
        )
        for i in range(NOISY_PULLS)
    ]
    try:
        assert all(f.status == 200 for f in follows), [f.status for f in follows]
        deadline = time.monotonic() + 30
        while True:  # until the pulls hold their slots: then the next stream is refused
            async with http.get(f"{base}/events", headers=auth) as refused:
                if refused.status == 429:
                    break
            assert time.monotonic() < deadline, "the pulls did not start"
            await asyncio.sleep(0.2)
        yield
    finally:
        for follow in follows:
            follow.close()
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)


@contextlib.asynccontextmanager
async def idle_connections(base: str, count: int) -> AsyncIterator[None]:
    """``count`` connections that each send one GET /healthz (HTTP/1.1, kept alive), read
    the answer and stay idle; one the daemon closes comes back at once, as a client bent on
    holding connections would."""
    host, port = base.removeprefix("http://").split(":")
    opened = 0
    all_open = asyncio.Event()

    async def hold() -> None:
        nonlocal opened
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.1)
                continue
            try:
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                if await reader.read(65536):  # the answer: idle from now on
                    opened += 1
                    if opened >= count:
                        all_open.set()
                while await reader.read(65536):  # nothing, until the daemon closes it
                    pass
            except OSError:
                pass
            finally:
                writer.close()

    holders = [asyncio.create_task(hold()) for _ in range(count)]
    try:
        async with asyncio.timeout(30):
            await all_open.wait()
        yield
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)


def server_timing(header: str) -> Phases:
    """A ``Server-Timing`` header's phases: ``name;dur=1.2, ...`` to {name: ms}."""
    phases: Phases = {}
    for entry in header.split(","):
        name, _, duration = entry.strip().partition(";dur=")
        phases[name] = float(duration)
    return phases


def phase_table(ours: list[Phases], baseline: list[Phases] | None) -> str:
    """Each phase's median, in the order they come, beside the baseline's where it has it:
    "resolve 1 ms; ...; docker_create 60 ms (by hand 55 ms); ..."."""
    parts = []
    for phase in ours[0]:
        part = f"{phase} {statistics.median(p[phase] for p in ours):,.0f} ms"
        if baseline and phase in baseline[0]:
            part += f" (by hand {statistics.median(p[phase] for p in baseline):,.0f} ms)"
        parts.append(part)
    return "; ".join(parts)


async def wait_for_sshd_greeting(port: int, timeout_s: float = 60) -> None:
    """Until sshd greets on the port, probed as deepdockd probes before a create answers."""
    deadline = time.monotonic() + timeout_s
    for delay in probe_delays():
        if await ssh_greets("127.0.0.1", port):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no sshd greeting on port {port} within {timeout_s} s")
        await asyncio.sleep(delay)


async def ssh_login(port: int, user: str, password: str) -> None:
    """One login of a real OpenSSH client that runs `true`. It comes once sshd greets, on
    both sides, so it must work the first time: a failure stops the run, never a retry."""
    process = await asyncio.create_subprocess_exec(
        "sshpass",
        "-e",
        "ssh",
        "-p",
        str(port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
        f"{user}@127.0.0.1",
        "true",
        env={"SSHPASS": password, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"SSH login on port {port} failed: {stderr.decode().strip()}")


async def container_statuses(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    """GET /containers: each container's status, by name."""
    async with http.get(f"{base}/containers") as r:
        assert r.status == 200, await r.text()
        return {c["name"]: c["status"] for c in (await r.json())["containers"]}


async def until_listed(
    http: aiohttp.ClientSession,
    base: str,
    shown: Callable[[dict[str, str]], bool],
    timeout_s: float = 30,
) -> float:
    """Polls GET /containers every LIST_POLL_S until ``shown`` holds of its statuses by name;
    returns when the first list that shows it was read (time.perf_counter)."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = await container_statuses(http, base)
        if shown(statuses):
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"GET /containers did not show the change within {timeout_s} s")
        await asyncio.sleep(LIST_POLL_S)


@dataclass
class EventClient:
    """One client of GET /events: each change it read, in order, as (id, type, container
    name), and why its stream ended early ("" while it is open)."""

    changes: list[tuple[int, str, str]] = field(default_factory=list)
    ended: str = ""

    def saw(self, names: Collection[str], types: Collection[str]) -> bool:
        seen = {(name, kind) for _, kind, name in self.changes}
        return all((name, kind) in seen for name in names for kind in types)

    def ids_increase(self) -> bool:
        """Every id greater than the one before it: none repeated, none out of order."""
        return all(a < b for (a, _, _), (b, _, _) in itertools.pairwise(self.changes))


async def read_events(response: aiohttp.ClientResponse, client: EventClient) -> None:
    """Parses one Server-Sent Events stream into ``client`` until it ends or is cancelled;
    comments (the heartbeats) are skipped."""
    fields: dict[str, str] = {}
    try:
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(":")
                value = value.removeprefix(" ")
                joined = key == "data" and key in fields  # data lines make one, by \n
                fields[key] = f"{fields[key]}\n{value}" if joined else value
            elif fields:  # a blank line ends an event
                data = json.loads(fields["data"])
                client.changes.append((int(fields["id"]), data["type"], data["container"]["name"]))
                fields = {}
        client.ended = "the daemon ended the stream"
    except (aiohttp.ClientError, ValueError, KeyError) as exc:
        client.ended = repr(exc)


@contextlib.asynccontextmanager
async def event_streams(
    http: aiohttp.ClientSession, url: str, count: int
) -> AsyncIterator[list[EventClient]]:
    """``count`` clients of GET /events, each answered before the next is opened and read by
    a task of its own; closed on exit."""
    clients = [EventClient() for _ in range(count)]
    responses: list[aiohttp.ClientResponse] = []
    readers: list[asyncio.Task[None]] = []
    try:
        for client in clients:
            response = await http.get(url)
            responses.append(response)
            assert response.status == 200, await response.text()
            assert response.content_type == "text/event-stream", response.content_type
            readers.append(asyncio.create_task(read_events(response, client)))
        yield clients
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for response in responses:
            response.close()


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def run_facts(rig: Rig) -> dict[str, Any]:
    """What names this run in the table: when, which commit (in full: the table's test diffs
    it against the tree), on what machine. Dirty: a file the bench measures
    (bench/measured.txt) differs from that commit; other files (the docs, this run's own
    outputs) do not change a figure."""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(measured.changed_since("HEAD")),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "dockerd": rig.docker("version", "--format", "{{.Server.Version}}").strip(),
        "python": platform.python_version(),
        # The machine may be shared: its load says whether other work ran beside the run.
        "load_1min_at_start": round(os.getloadavg()[0], 2),
    }


async def main() -> int:
    if not SIM_LIBRARY.exists():
        print(f"{SIM_LIBRARY} is missing: run `make bench`, which builds it", file=sys.stderr)
        return 2
    rig = Rig.from_env()
    rig.start()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="deepdockd-bench-") as tmp:
        bench = Bench(rig, Path(tmp))
        steps = {
            "list": bench.container_list,
            "scrape": bench.scrape,
            "memory": bench.memory,
            "series": bench.gpu_series,
            "cpu": bench.sampler_cpu,
            "create": bench.create_to_login,
            "concurrent": bench.concurrent_creates,
            "rps": bench.metrics_throughput,
            "client": bench.client_startup,
            "noisy": bench.noisy_neighbour,
            "proxy": bench.proxy,
            "usage": functools.partial(usage_figure.measure, bench, Figure),
            "stats": functools.partial(stats_figure.measure, bench, Figure, cpu_seconds),
        }
        chosen = sys.argv[1:] or list(steps)
        unknown = set(chosen) - set(steps)
        if unknown:
            print(
                f"unknown figure(s) {sorted(unknown)}; choose from {list(steps)}", file=sys.stderr
            )
            return 2
        try:
            run = run_facts(rig)
            print("measuring (a few minutes)...", flush=True)
            for name, then in zip(chosen, [*chosen[1:], None], strict=True):
                await steps[name]()
                if then not in LISTING:  # the listed containers are no longer needed
                    await bench.remove_namespace()
        finally:
            await bench.remove_namespace()
            bench.stop_sleepers()
            await bench.docker.close()
            rig.stop()
            rig.release()
    run["seconds"] = round(time.monotonic() - started, 1)
    run["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    results = {"run": run, "figures": [asdict(f) for f in bench.figures]}
    print("\n" + report.render(results))
    if sys.argv[1:]:
        print(
            f"\na partial run: {RESULTS.relative_to(ROOT)} and "
            f"{TABLE_PAGE.relative_to(ROOT)} left as they were"
        )
    else:
        RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        TABLE_PAGE.write_text(report.with_table(TABLE_PAGE.read_text(), report.render(results)))
        print(f"\nwritten to {RESULTS.relative_to(ROOT)} and {TABLE_PAGE.relative_to(ROOT)}")
        if run["dirty"]:
            print(
                "the tree had uncommitted changes to files the bench measures "
                "(bench/measured.txt): tests/test_bench_table.py fails on this run; commit "
                "them and run `make bench` again",
                file=sys.stderr,
            )
    return 0 if all(f.met is not False for f in bench.figures) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

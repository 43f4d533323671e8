"""deepdockd's benchmarks, on the test rig (private dockerd, simulated GPUs).

Every figure is a ratio against a baseline measured in the same run, or a resource figure;
no absolute time is a rule. Prints one table and writes bench/results.json.

    make bench        (or: .venv/bin/python bench/run.py [list memory series cpu create ...])
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from daemon import Daemon  # noqa: E402
from rig import BUSYBOX_IMAGE, DEBIAN_SSH_IMAGE, Rig  # noqa: E402

SIM_LIBRARY = ROOT / "build" / "nvml-sim" / "libnvidia-ml.so.1"
RESULTS = ROOT / "bench" / "results.json"
PORTS = "24000-24999"
LIST_SIZES = (10, 100, 300)
FULL_RETENTION_POINTS = 24 * 3600 // 10  # 24 h of 10 s buckets
GPUS = 8


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def eight_gpus(path: Path) -> Path:
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
        }
        for i in range(GPUS)
    ]
    path.write_text(json.dumps({"driver_version": "550.54.15", "gpus": gpus}))
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        self.gpu_config = eight_gpus(workdir / "gpus.json")
        self.figures: list[Figure] = []
        self.docker = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(str(rig.docker_socket)), base_url="http://docker"
        )

    # --- helpers ---

    def start_daemon(
        self, name: str, *, gpus: bool = True, **settings: str
    ) -> tuple[Daemon, str, dict[str, str]]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            "LD_LIBRARY_PATH": str(SIM_LIBRARY.parent) if gpus else "/nonexistent",
            "NVML_SIM_CONFIG": str(self.gpu_config) if gpus else "",
            "DEEPDOCKD_NAMESPACE": self.namespace,
            "DEEPDOCKD_SSH_PORT_RANGE": PORTS,
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
        started: the list costs the same), so that GET /containers has `count` to list."""

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
            body = {"Image": BUSYBOX_IMAGE, "Cmd": ["true"], "Labels": labels}
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

    async def remove_namespace(self) -> None:
        ids = self.rig.docker(
            "ps", "-aq", "--filter", f"label=deepdockd.namespace={self.namespace}"
        )
        if ids.split():
            self.rig.docker("rm", "--force", *ids.split())

    # --- the figures ---

    async def container_list(self) -> None:
        daemon, base, auth = self.start_daemon("list")
        filters = json.dumps({"label": [f"deepdockd.namespace={self.namespace}"]})
        try:
            async with aiohttp.ClientSession(headers=auth) as http:

                async def ours() -> None:
                    async with http.get(f"{base}/containers") as r:
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

                have = 0
                for count in LIST_SIZES:
                    await self.make_listed_containers(count, have)
                    have = count
                    # Interleave the two, so that a slow moment of the machine hits both.
                    ours_t, raw_t = [], []
                    for _ in range(15):
                        ours_t += await timings(ours, 4, warmup=1)
                        raw_t += await timings(raw, 4, warmup=1)
                    ratio = median_ms(ours_t) / median_ms(raw_t)
                    self.add(
                        Figure(
                            f"GET /containers, {count} containers",
                            median_ms(ours_t),
                            "ms",
                            baseline=median_ms(raw_t),
                            ratio=ratio,
                            target="<= 1.5x the raw Docker call" if count == 300 else "report",
                            met=ratio <= 1.5 if count == 300 else None,
                        )
                    )
                    naive_t = await timings(naive, 5, warmup=1)
                    self.add(
                        Figure(
                            f"naive list (inspect each), {count} containers",
                            median_ms(naive_t),
                            "ms",
                            baseline=median_ms(ours_t),
                            ratio=median_ms(naive_t) / median_ms(ours_t),
                            target="report the speed-up of GET /containers",
                        )
                    )
        finally:
            daemon.stop()

    async def gpu_series(self) -> None:
        """GET /metrics/gpus with 8 GPUs at full 24 h retention, against json.dumps of the
        same data. The real app runs here, on the simulated GPUs, with sampling sped up until
        the deques are full, then back at the default interval."""
        os.environ["NVML_SIM_CONFIG"] = str(self.gpu_config)
        ctypes.CDLL(str(SIM_LIBRARY), mode=ctypes.RTLD_GLOBAL)
        from deepdockd.app import create_app
        from deepdockd.config import Config
        from deepdockd.typedefs import GPUS as GPUS_KEY

        bucket = 0.002
        config = Config(
            docker_host=self.rig.docker_host,
            state_dir=self.workdir / "state-series",
            namespace=self.namespace,
            auth=False,
            gpu_sample_interval=bucket,
            gpu_bucket=bucket,
            gpu_retention=bucket * FULL_RETENTION_POINTS,
        )
        app = create_app(config)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        sampler = app[GPUS_KEY]
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

                async def ours() -> None:
                    async with http.get(f"http://127.0.0.1:{port}/metrics/gpus") as r:
                        await r.read()

                async with http.get(f"http://127.0.0.1:{port}/metrics/gpus") as r:
                    data = await r.json()

                async def baseline() -> None:
                    json.dumps(data)

                ours_t = await timings(ours, 15)
                base_t = await timings(baseline, 15)
            points = sum(len(v) for v in data.values())
            ratio = median_ms(ours_t) / median_ms(base_t)
            self.add(
                Figure(
                    f"GET /metrics/gpus, {GPUS} GPUs x 24 h",
                    median_ms(ours_t),
                    "ms",
                    baseline=median_ms(base_t),
                    ratio=ratio,
                    target="<= 2x json.dumps of the same data",
                    met=ratio <= 2,
                    notes={"points": points},
                )
            )
        finally:
            await runner.cleanup()

    async def sampler_cpu(self, seconds: float = 30) -> None:
        with_gpus, _, _ = self.start_daemon("cpu-gpus")
        without, _, _ = self.start_daemon("cpu-none", gpus=False)
        try:
            await asyncio.sleep(3)
            before = cpu_seconds(with_gpus.process.pid), cpu_seconds(without.process.pid)
            await asyncio.sleep(seconds)
            after = cpu_seconds(with_gpus.process.pid), cpu_seconds(without.process.pid)
        finally:
            with_gpus.stop()
            without.stop()
        busy = (after[0] - before[0]) / seconds * 100
        idle = (after[1] - before[1]) / seconds * 100
        # The whole daemon's CPU with 8 GPUs sampled: an upper bound of the sampler's. The
        # same daemon without GPUs is the baseline. /proc counts in 10 ms ticks: over 30 s,
        # steps of 0.03 %.
        self.add(
            Figure(
                f"daemon CPU sampling {GPUS} GPUs at 1 s",
                busy,
                "% of one core",
                baseline=idle,
                target="<= 1 % (the sampler's share is at most this)",
                met=busy <= 1,
                notes={"window_s": seconds},
            )
        )

    async def memory(self) -> None:
        """RSS of a daemon with full retention for 8 GPUs, listing 300 containers."""
        await self.make_listed_containers(LIST_SIZES[-1], await self.listed_containers())
        bucket = 0.004
        daemon, base, auth = self.start_daemon(
            "rss",
            gpu_sample_interval=str(bucket),
            gpu_bucket=str(bucket),
            gpu_retention=str(bucket * FULL_RETENTION_POINTS),
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
                # Then serve both big answers, as dashboards polling them would.
                for _ in range(10):
                    async with http.get(f"{base}/metrics/gpus") as r:
                        points = sum(len(p) for p in (await r.json()).values())
                    async with http.get(f"{base}/containers") as r:
                        listed = len((await r.json())["containers"])
            rss = rss_mib(daemon.process.pid)
        finally:
            daemon.stop()
        self.add(
            Figure(
                "daemon RSS, full retention, 8 GPUs, 300 containers",
                rss,
                "MiB",
                target="<= 100 MiB",
                met=rss <= 100,
                notes={"containers_listed": listed, "points": points},
            )
        )

    async def create_to_login(self, rounds: int = 3) -> None:
        daemon, base, auth = self.start_daemon("create")
        ours, theirs = [], []
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                for i in range(rounds):
                    name = f"{self.namespace}-ssh-{i}"
                    started = time.perf_counter()
                    body = {
                        "name": name,
                        "image": DEBIAN_SSH_IMAGE,
                        "user_name": "u1",
                        "password": "pw1",
                    }
                    async with http.post(f"{base}/containers/create", json=body) as r:
                        port = (await r.json())["ssh-port"]
                    await ssh_login(port, "u1", "pw1")
                    ours.append(time.perf_counter() - started)

                    manual = f"{self.namespace}-manual-{i}"
                    host_port = 25000 + i
                    started = time.perf_counter()
                    self.rig.docker(
                        "run",
                        "--detach",
                        "--name",
                        manual,
                        "--init",
                        "-p",
                        f"{host_port}:22",
                        DEBIAN_SSH_IMAGE,
                        "sh",
                        "-c",
                        "useradd -m -s /bin/bash u1 && echo u1:pw1 | chpasswd && ssh-keygen -A "
                        "&& mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e",
                    )
                    await ssh_login(host_port, "u1", "pw1")
                    theirs.append(time.perf_counter() - started)
                    self.rig.docker("rm", "--force", manual)
        finally:
            daemon.stop()
            await self.remove_namespace_matching("ssh")
        ratio = median_ms(ours) / median_ms(theirs)
        self.add(
            Figure(
                "create -> first SSH login",
                median_ms(ours),
                "ms",
                baseline=median_ms(theirs),
                ratio=ratio,
                target="<= 1.3x docker run + sshd by hand",
                met=ratio <= 1.3,
            )
        )

    async def concurrent_creates(self, count: int = 20) -> None:
        daemon, base, auth = self.start_daemon("concurrent")
        try:
            async with aiohttp.ClientSession(headers=auth) as http:

                async def create(i: int) -> tuple[int, Any]:
                    body = {
                        "name": f"{self.namespace}-c{i:02d}",
                        "image": DEBIAN_SSH_IMAGE,
                        "user_name": "u1",
                        "password": "pw1",
                    }
                    async with http.post(f"{base}/containers/create", json=body) as r:
                        return r.status, await r.json()

                started = time.perf_counter()
                answers = await asyncio.gather(*(create(i) for i in range(count)))
                elapsed = time.perf_counter() - started
        finally:
            daemon.stop()
            await self.remove_namespace_matching("-c")
        ports = [a["ssh-port"] for status, a in answers if status == 201]
        ok = len(ports) == count and len(set(ports)) == count
        self.add(
            Figure(
                f"{count} concurrent creates",
                elapsed,
                "s total",
                target="all succeed, distinct ports",
                met=ok,
                notes={"succeeded": len(ports), "distinct_ports": len(set(ports))},
            )
        )

    async def metrics_throughput(self, clients: int = 32, seconds: float = 5) -> None:
        daemon, base, auth = self.start_daemon("rps")
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
        self.add(
            Figure(
                f"GET /metrics, {clients} concurrent clients",
                len(latencies) / seconds,
                "requests/s",
                target="report",
                notes={
                    "p50_ms": percentile_ms(latencies, 0.5),
                    "p99_ms": percentile_ms(latencies, 0.99),
                },
            )
        )

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


async def ssh_login(port: int, user: str, password: str, timeout_s: float = 60) -> None:
    """Until a real OpenSSH client logs in and runs a command."""
    deadline = time.monotonic() + timeout_s
    while True:
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
            stderr=asyncio.subprocess.DEVNULL,
        )
        if await process.wait() == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no SSH login on port {port} within {timeout_s} s")
        await asyncio.sleep(0.05)


def print_table(figures: list[Figure]) -> None:
    print()
    header = f"{'figure':<52} {'value':>22} {'baseline':>10} {'ratio':>7}  target"
    print(header)
    print("-" * (len(header) + 30))
    for f in figures:
        baseline = f"{f.baseline:.2f}" if f.baseline is not None else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        verdict = {True: "met", False: "MISSED", None: ""}[f.met]
        value = f"{f.value:.2f} {f.unit}"
        print(f"{f.name:<52} {value:>22} {baseline:>10} {ratio:>7}  {f.target} {verdict}")


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
            "memory": bench.memory,
            "series": bench.gpu_series,
            "cpu": bench.sampler_cpu,
            "create": bench.create_to_login,
            "concurrent": bench.concurrent_creates,
            "rps": bench.metrics_throughput,
        }
        chosen = sys.argv[1:] or list(steps)
        unknown = set(chosen) - set(steps)
        if unknown:
            print(
                f"unknown figure(s) {sorted(unknown)}; choose from {list(steps)}", file=sys.stderr
            )
            return 2
        try:
            print("measuring (a few minutes)...", flush=True)
            for name in chosen:
                await steps[name]()
                if name == "memory":  # the 300 listed containers are no longer needed
                    await bench.remove_namespace()
        finally:
            await bench.remove_namespace()
            await bench.docker.close()
            rig.stop()
            rig.release()
    print_table(bench.figures)
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "seconds": round(time.monotonic() - started, 1),
        "figures": [asdict(f) for f in bench.figures],
    }
    if sys.argv[1:]:
        print(
            f"\na partial run ({results['seconds']} s): {RESULTS.relative_to(ROOT)} left as it was"
        )
    else:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {RESULTS.relative_to(ROOT)} in {results['seconds']} s")
    return 0 if all(f.met is not False for f in bench.figures) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Host and GPU metrics, on simulated GPUs that the real pynvml reads through the simulated
NVML library."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from deepdockd.api.app import create_app
from deepdockd.api.keys import GPUS
from deepdockd.config import Config
from deepdockd.gpu.sampler import GpuPoint, GpuSampler
from deepdockd.gpu.series import rebucket

from tests.support.api import Client, ClientFactory
from tests.support.daemon import RunningDaemon, http_get
from tests.support.gpus import NVML_SIM_LIBRARY, sim_gpu
from tests.support.rig import BUSYBOX_IMAGE, Rig

SimGpus = Callable[..., Path]

# The seed's examples (deepdock-api-reference.md, section 3).
SEED_HOST = {"gpu_count": 1, "ram_total_mb": 20006, "ram_available_mb": 17092, "cpu_cores": 4}
SEED_POINT_KEYS = {
    "timestamp",
    "memory_used",
    "utilization",
    "power_usage",
    "temperature",
    "fan_speed",
}
# GPM's profiling metrics (ratios 0..1), null on a GPU without GPM (tests/test_gpm.py).
GPM_POINT_KEYS = ("sm_active", "sm_occupancy", "tensor_active", "dram_active")

# Fast sampling, so that tests see many buckets in a second.
FAST = {"gpu_sample_interval": 0.02, "gpu_bucket": 0.1, "gpu_retention": 60.0}


def fast_config(config: Config, **overrides: float) -> Config:
    return Config(**{**config.__dict__, **FAST, **overrides})


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    return await response.json()


async def wait_for(
    client: Client, path: str, condition: Callable[[Any], bool], timeout_s: float = 15
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        body = await get_json(client, path)
        if condition(body):
            return body
        assert time.monotonic() < deadline, f"{path} never met the condition; last: {body}"
        await asyncio.sleep(0.05)


def expected_means(values: list[float], counts: list[int], offset: int = 0) -> list[float]:
    """The means of consecutive runs of ``counts`` samples of the cycling ``values``."""
    means, done = [], offset
    for count in counts:
        taken = [values[(done + i) % len(values)] for i in range(count)]
        means.append(sum(taken) / count)
        done += count
    return means


# --- host ---


async def test_host_metrics_in_the_seeds_shape(client: Client) -> None:
    body = await get_json(client, "/metrics")

    assert SEED_HOST.keys() <= body.keys()
    assert all(type(body[k]) is int for k in SEED_HOST)
    memory = psutil.virtual_memory()
    assert body["ram_total_mb"] == memory.total // 2**20
    assert abs(body["ram_available_mb"] - memory.available // 2**20) < 512
    assert body["cpu_cores"] == (psutil.cpu_count(logical=False) or psutil.cpu_count())
    assert body["cpu_logical_cores"] == psutil.cpu_count()
    assert len(body["load_average"]) == 3
    assert body["gpu_count"] == 0  # no NVML in this test


# --- GPU series ---


async def test_points_are_bucket_means_of_the_simulators_samples(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    gpus = [sim_gpu(0), sim_gpu(1, fan_pct=[20, 35, 50])]
    sim_gpus(*gpus)
    client = await aiohttp_client(create_app(fast_config(config)))

    body = await wait_for(
        client, "/metrics/gpus", lambda b: all(len(b.get(k, [])) >= 4 for k in ("0", "1"))
    )

    assert set(body) == {"0", "1"}
    for index, gpu in enumerate(gpus):
        points = body[str(index)]
        assert all(set(p) == SEED_POINT_KEYS | {*GPM_POINT_KEYS, "samples"} for p in points)
        counts = [p["samples"] for p in points]
        assert all(c >= 1 for c in counts)
        # The samples come in order from the first: each point averages the next `samples`.
        for key, field in [
            ("utilization", "utilization"),
            ("power_usage", "power_w"),
            ("temperature", "temperature_c"),
        ]:
            assert [p[key] for p in points] == pytest.approx(expected_means(gpu[field], counts)), (
                key
            )
        # Listing the GPUs at start read memory once: the samples begin at the second value.
        assert [p["memory_used"] for p in points] == pytest.approx(
            expected_means(gpu["memory_used_mib"], counts, offset=1)
        )
    assert all(p["fan_speed"] is None for p in body["0"])  # a data-centre GPU: no fan
    assert [p["fan_speed"] for p in body["1"]] == pytest.approx(
        expected_means([20, 35, 50], [p["samples"] for p in body["1"]])
    )
    timestamps = [p["timestamp"] for p in body["0"]]
    assert timestamps == sorted(timestamps)
    assert all(t.endswith("+00:00") for t in timestamps)


async def test_since_and_limit_cut_the_history(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    sim_gpus(sim_gpu(0))
    client = await aiohttp_client(create_app(fast_config(config)))
    full = (await wait_for(client, "/metrics/gpus", lambda b: len(b.get("0", [])) >= 5))["0"]

    since = full[1]["timestamp"]
    after = (await get_json(client, f"/metrics/gpus?since={since.replace('+', '%2B')}"))["0"]
    last_two = (await get_json(client, "/metrics/gpus?limit=2"))["0"]
    later = (await get_json(client, "/metrics/gpus"))["0"]

    assert after[: len(full) - 2] == full[2:]  # strictly after `since`; newer points may follow
    assert all(p["timestamp"] > since for p in after)
    assert len(last_two) == 2
    start = later.index(last_two[0])
    assert later[start : start + 2] == last_two
    assert start >= len(full) - 2


async def test_retention_bounds_the_history(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    sim_gpus(sim_gpu(0))
    app = create_app(fast_config(config, gpu_retention=0.3))  # 3 buckets of 0.1 s
    client = await aiohttp_client(app)

    await wait_for(client, "/metrics/gpus", lambda b: len(b.get("0", [])) >= 1)
    deadline = time.monotonic() + 2  # about 20 buckets
    lengths = []
    while time.monotonic() < deadline:
        lengths.append(len((await get_json(client, "/metrics/gpus"))["0"]))
        await asyncio.sleep(0.05)

    assert max(lengths) == 3
    assert app[GPUS].history(0).maxlen == 3
    assert (await get_json(client, "/gpus"))["gpus"][0]["points"] == 3


async def test_a_lost_gpu_shows_nulls_and_unhealthy_while_the_others_go_on(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus, tmp_path: Path
) -> None:
    lost_flag = tmp_path / "gpu1.lost"
    sim_gpus(sim_gpu(0), sim_gpu(1, lost_if_exists=str(lost_flag)), sim_gpu(2))
    client = await aiohttp_client(create_app(fast_config(config)))
    await wait_for(
        client, "/metrics/gpus", lambda b: all(len(b.get(k, [])) >= 2 for k in ("0", "1", "2"))
    )

    lost_flag.touch()  # the GPU falls off the bus
    gpus = await wait_for(client, "/gpus", lambda b: b["gpus"][1]["health"] != "ok")
    assert gpus["gpus"][1]["health"] == "GPU is lost"
    assert [g["health"] for g in gpus["gpus"]] == ["ok", "GPU is lost", "ok"]

    def lost_point_and_more_for_others(body: Any) -> bool:
        nulls = [p for p in body["1"] if p["utilization"] is None]
        return bool(nulls) and all(p["utilization"] is not None for p in body["0"][-2:])

    body = await wait_for(client, "/metrics/gpus", lost_point_and_more_for_others)
    lost = [p for p in body["1"] if p["utilization"] is None][-1]
    assert {k: lost[k] for k in SEED_POINT_KEYS - {"timestamp"}} == dict.fromkeys(
        SEED_POINT_KEYS - {"timestamp"}
    )
    assert body["0"][-1]["timestamp"] >= lost["timestamp"]  # GPU 0 still samples

    lost_flag.unlink()  # back on the bus
    await wait_for(client, "/gpus", lambda b: b["gpus"][1]["health"] == "ok")


async def test_a_slow_driver_does_not_hold_up_the_api(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    sim_gpus(sim_gpu(0, delay_ms=200))  # nine NVML calls a sample: 1.8 s of driver time each
    client = await aiohttp_client(create_app(fast_config(config)))
    await wait_for(client, "/metrics", lambda b: b["gpu_count"] == 1)

    started = time.monotonic()
    for _ in range(5):
        await get_json(client, "/metrics")
    elapsed = time.monotonic() - started

    # Were NVML calls made on the event loop, each request would wait up to 1.8 s.
    assert elapsed < 1.0


# --- the sampler's ticks ---


async def pass_gaps(sampler: GpuSampler, gaps: int, timeout_s: float = 60) -> list[float]:
    """The seconds between ``gaps`` pairs of consecutive passes of the sampler, each pass
    timed on the loop's clock when it is published (as the accounting and the reaper see it).
    A pair with a pass this waiter did not see is left out: it waits for as many as it needs,
    however many ticks a slow machine skips or delays."""
    loop = asyncio.get_running_loop()
    found: list[float] = []
    async with asyncio.timeout(timeout_s):
        snapshot = await sampler.next_processes(sampler.processes.number)
        number, at = snapshot.number, loop.time()
        while len(found) < gaps:
            snapshot = await sampler.next_processes(number)
            now = loop.time()
            if snapshot.number == number + 1:
                found.append(now - at)
            number, at = snapshot.number, now
    return found


def off_the_grid(gaps: list[float], interval_s: float) -> tuple[list[int], float]:
    """Each gap in whole intervals, and the median of how far the gaps are from those whole
    numbers, in intervals. On the grid a gap is a whole number of intervals, but for the
    difference between two passes' lateness (a few ms), however many ticks were skipped;
    ticks that each wait an interval after a sample of 36 % of an interval are 0.36 off,
    every one. The median leaves out the few passes that a busy machine made late."""
    ratios = [gap / interval_s for gap in gaps]
    return [round(r) for r in ratios], statistics.median(abs(r - round(r)) for r in ratios)


async def test_the_ticks_do_not_drift_when_each_sample_takes_a_while(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    interval_s = 0.1
    sim_gpus(sim_gpu(0, delay_ms=4))  # nine NVML calls a sample: 36 ms, 36 % of the interval
    app = create_app(fast_config(config, gpu_sample_interval=interval_s, gpu_bucket=0.5))
    await aiohttp_client(app)

    # Ticks that each waited an interval after their sample would come 136 ms apart, 0.36
    # intervals off the grid each time.
    whole, off = off_the_grid(await pass_gaps(app[GPUS], 40), interval_s)

    assert off < 0.15, (off, whole)


async def test_a_tick_longer_than_several_intervals_skips_the_missed_ticks(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    interval_s = 0.1
    # Nine NVML calls a sample (memory, utilization, power, temperature, fan, two clocks, the
    # compute and graphics process lists): 342 ms, 3.4 intervals.
    sim_gpus(sim_gpu(0, delay_ms=38))
    app = create_app(fast_config(config, gpu_sample_interval=interval_s, gpu_bucket=0.8))
    await aiohttp_client(app)

    # Each sample ends 3.4 intervals after its tick: the three ticks it overran are skipped
    # and the fourth keeps the phase, so samples come every 4 intervals (more, where the
    # machine made one later still). Catching up on the missed ticks would sample back to
    # back (every 3.4 intervals), restarting the grid after a late tick would lose the phase
    # (every 4.4 intervals): 0.4 intervals off the grid each time.
    whole, off = off_the_grid(await pass_gaps(app[GPUS], 15), interval_s)

    assert off < 0.15, (off, whole)
    assert statistics.median(whole) >= 4  # the missed ticks were skipped, not caught up on


async def test_a_gpu_listing_that_raises_does_not_stop_the_sampler(
    aiohttp_client: ClientFactory,
    config: Config,
    sim_gpus: SimGpus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A driver that names a GPU in bytes that are not UTF-8: pynvml raises UnicodeDecodeError,
    # not an NVML error, while the sampler lists the GPUs.
    path = sim_gpus(sim_gpu(0), sim_gpu(1, name="GARBLED-NAME"))
    path.write_bytes(path.read_bytes().replace(b"GARBLED-NAME", b"NVIDIA \xff\xfe"))
    client = await aiohttp_client(create_app(fast_config(config, gpu_retry_interval=0.2)))

    health = await wait_for(
        client, "/healthz", lambda b: b["gpus"]["error"] != "NVML not tried yet"
    )

    reason = (
        "NVML: listing the GPUs failed: UnicodeDecodeError: 'utf-8' codec can't decode byte "
        "0xff in position 7: invalid start byte"
    )
    assert health["gpus"] == {"ok": False, "count": 0, "error": reason}
    assert await get_json(client, "/metrics/gpus") == {}
    [logged] = [r for r in caplog.records if r.getMessage().startswith(f"no GPU metrics: {reason}")]
    assert logged.exc_info is not None  # with its traceback: it is unexpected

    sim_gpus(sim_gpu(0), sim_gpu(1))  # the driver is mended; the sampler looks again

    health = await wait_for(client, "/healthz", lambda b: b["gpus"]["ok"])
    assert health["gpus"]["count"] == 2
    await wait_for(client, "/metrics/gpus", lambda b: all(len(b.get(k, [])) >= 2 for k in "01"))


async def test_gpus_lists_each_gpu_and_the_containers_holding_it(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus, rig: Rig
) -> None:
    sim_gpus(sim_gpu(0), sim_gpu(1))
    client = await aiohttp_client(create_app(fast_config(config)))
    ours = f"{config.namespace}-holder"
    stopped = f"{config.namespace}-stopped"
    foreign = f"{config.namespace}-foreign"

    def run(name: str, namespace: str, gpus: str, *, start: bool = True) -> None:
        labels = [
            "--label",
            f"deepdockd.namespace={namespace}",
            "--label",
            f"deepdockd.gpu-indices={gpus}",
        ]
        rig.docker("create", "--name", name, *labels, BUSYBOX_IMAGE, "sleep", "60")
        if start:
            rig.docker("start", name)

    try:
        run(ours, config.namespace, "1")
        run(stopped, config.namespace, "0", start=False)
        run(foreign, "someone-else", "0")
        body = await wait_for(
            client,
            "/gpus",
            # (and the live view has seen ours start: on a loaded machine Docker's event can
            # come after the GPUs' first reading)
            lambda b: (
                b["count"] == 2
                and all(g["processes"] == [] for g in b["gpus"])
                and b["gpus"][1]["containers"] == [ours]
            ),
        )
    finally:
        rig.docker("rm", "--force", ours, stopped, foreign)

    points = [g.pop("points") for g in body["gpus"]]
    assert all(n >= 0 for n in points)
    assert body["gpus"] == [
        {
            "index": 0,
            "uuid": sim_gpu(0)["uuid"],
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_mib": 81559.0,
            "power_limit_w": 700.0,
            "containers": [],
            "held": False,  # by a stopped container, and by another namespace's
            "health": "ok",
            "memory_reserved_mib": 0.0,
            "processes": [],
            "profiling": None,  # no GPM on these simulated GPUs
            "mig_mode": None,  # no MIG on these simulated GPUs (tests/test_mig.py)
            "mig_slices": [],
        },
        {
            "index": 1,
            "uuid": sim_gpu(1)["uuid"],
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_mib": 81559.0,
            "power_limit_w": 700.0,
            "containers": [ours],
            "held": True,
            "health": "ok",
            "memory_reserved_mib": 0.0,
            "processes": [],
            "profiling": None,  # no GPM on these simulated GPUs
            "mig_mode": None,  # no MIG on these simulated GPUs (tests/test_mig.py)
            "mig_slices": [],
        },
    ]


# --- no GPUs ---


async def test_a_host_without_nvml_answers_the_cpu_only_way(client: Client) -> None:
    await wait_for(client, "/healthz", lambda b: b["gpus"]["error"] != "NVML not tried yet")

    assert (await get_json(client, "/metrics"))["gpu_count"] == 0
    assert await get_json(client, "/metrics/gpus") == {}
    assert await get_json(client, "/gpus") == {"count": 0, "gpus": []}
    health = await get_json(client, "/healthz")
    assert health["status"] == "ok"
    assert health["gpus"] == {"ok": False, "count": 0, "error": "NVML: Driver Not Loaded"}


async def test_a_driver_loaded_later_is_found(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    client = await aiohttp_client(create_app(fast_config(config, gpu_retry_interval=0.2)))
    await wait_for(client, "/healthz", lambda b: b["gpus"]["error"] == "NVML: Driver Not Loaded")

    sim_gpus(sim_gpu(0), sim_gpu(1), driver_version="555.42.06")  # the driver comes

    health = await wait_for(client, "/healthz", lambda b: b["gpus"]["ok"])
    assert health["gpus"] == {"ok": True, "count": 2, "driver_version": "555.42.06"}
    await wait_for(client, "/metrics/gpus", lambda b: len(b.get("1", [])) >= 1)


def test_a_daemon_without_the_library_at_all(rig_daemon: Callable[..., RunningDaemon]) -> None:
    # ...and there is no libnvidia-ml.so.1 on this machine.
    daemon = rig_daemon(env={"LD_LIBRARY_PATH": "/nonexistent"})
    base = daemon.base
    try:
        health = json.loads(http_get(f"{base}/healthz")[1])
        metrics = json.loads(http_get(f"{base}/metrics")[1])
        series = json.loads(http_get(f"{base}/metrics/gpus")[1])
    finally:
        status, log = daemon.stop()

    assert health["status"] == "ok"
    assert health["gpus"]["error"] == "NVML: NVML Shared Library Not Found"
    assert metrics["gpu_count"] == 0
    assert series == {}
    assert status == 0
    assert "Traceback" not in log


def test_run_sim_daemon_shows_the_four_demo_gpus(rig_daemon: Callable[..., RunningDaemon]) -> None:
    demo = Path(__file__).parent / "nvml-sim" / "demo-4gpu.json"
    env = {"LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent), "NVML_SIM_CONFIG": str(demo)}
    daemon = rig_daemon(env=env)
    base = daemon.base
    try:
        gpus = json.loads(http_get(f"{base}/gpus")[1])
    finally:
        daemon.stop()

    described = json.loads(demo.read_text())["gpus"]
    assert [g["uuid"] for g in gpus["gpus"]] == [g["uuid"] for g in described]
    assert [g["name"] for g in gpus["gpus"]] == [g["name"] for g in described]


# --- bad queries ---


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=yesterday", "since: 'yesterday' is not an ISO 8601 timestamp"),
        ("limit=0", "limit: must be a whole number from 1 to 10000000"),
        ("limit=-3", "limit: must be a whole number from 1 to 10000000"),
        ("limit=many", "limit: must be a whole number from 1 to 10000000"),
        ("limit=18493424992250241024", "limit: must be a whole number from 1 to 10000000"),
        ("limit=%C2%B2", "limit: must be a whole number from 1 to 10000000"),
        ("step=0", "step: must be a whole number from 1 to 31622400"),
        ("step=-1", "step: must be a whole number from 1 to 31622400"),
        ("step=1.5", "step: must be a whole number from 1 to 31622400"),
        ("step=abc", "step: must be a whole number from 1 to 31622400"),
        ("step=31622401", "step: must be a whole number from 1 to 31622400"),
        ("step=10000000000", "step: must be a whole number from 1 to 31622400"),
        ("step=", "step: must be a whole number from 1 to 31622400"),
    ],
)
async def test_bad_query_is_422(client: Client, query: str, message: str) -> None:
    body = await get_json(client, f"/metrics/gpus?{query}", status=422)
    assert body["error"]["message"].startswith(message)
    assert body["error"]["details"] == {"field": query.split("=")[0]}


# --- GPU series in windows (?step=) ---

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MEAN_KEYS = (
    "memory_used", "utilization", "power_usage", "temperature", "fan_speed", *GPM_POINT_KEYS,
)  # fmt: skip


def epoch_us(timestamp: str) -> int:
    return (datetime.fromisoformat(timestamp) - EPOCH) // timedelta(microseconds=1)


def iso_query(at_us: int) -> str:
    """``at_us`` as a ``since`` value, its ``+`` escaped for the query string."""
    return (EPOCH + timedelta(microseconds=at_us)).isoformat().replace("+", "%2B")


def window_end_us(point: dict[str, Any], step_s: int) -> int:
    """The end of the window (k*step, (k+1)*step] that holds the point."""
    step_us = step_s * 1_000_000
    return -(-epoch_us(point["timestamp"]) // step_us) * step_us


def whole_windows(points: list[dict[str, Any]], step_s: int) -> list[list[dict[str, Any]]]:
    """The plain points grouped into windows, only the windows they hold whole: those that end
    by the newest point (every later point is later than their end)."""
    if not points:
        return []
    newest_us = epoch_us(points[-1]["timestamp"])
    windows: dict[int, list[dict[str, Any]]] = {}
    for point in points:
        windows.setdefault(window_end_us(point, step_s), []).append(point)
    return [window for end_us, window in windows.items() if end_us <= newest_us]


def merged(window: list[dict[str, Any]]) -> dict[str, Any]:
    """What the window's point must be: each field's mean over the points that have it,
    weighted by their samples; stamped with the newest point's timestamp."""
    point: dict[str, Any] = {"timestamp": window[-1]["timestamp"]}
    for key in MEAN_KEYS:
        having = [p for p in window if p[key] is not None]
        point[key] = (
            sum(p[key] * p["samples"] for p in having) / sum(p["samples"] for p in having)
            if having
            else None
        )
    point["samples"] = sum(p["samples"] for p in window)
    return point


def assert_opens_with(stepped: list[dict[str, Any]], windows: list[list[dict[str, Any]]]) -> None:
    """``stepped``, read after the plain points, opens with their whole windows merged (it
    may go on with windows that grew or came since)."""
    assert len(stepped) >= len(windows)
    for got, window in zip(stepped, windows, strict=False):
        assert list(got) == ["timestamp", *MEAN_KEYS, "samples"]
        assert got == pytest.approx(merged(window))


async def test_a_step_merges_the_points_into_sample_weighted_windows(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    sim_gpus(sim_gpu(0), sim_gpu(1, fan_pct=[20, 35, 50]))
    # Samples every 30 ms in buckets of 100 ms: points of 3 and of 4 samples, so that the
    # weighted mean is not the mean of the points.
    client = await aiohttp_client(create_app(fast_config(config, gpu_sample_interval=0.03)))
    plain = await wait_for(
        client,
        "/metrics/gpus",
        lambda b: all(len(whole_windows(b.get(k, []), 1)) >= 3 for k in "01"),
    )
    stepped = await get_json(client, "/metrics/gpus?step=1")

    assert set(stepped) == {"0", "1"}
    for index in "01":
        windows = whole_windows(plain[index], 1)
        assert_opens_with(stepped[index], windows)
        assert sum(len(w) for w in windows) > len(windows)  # windows of several points
        stamps = [p["timestamp"] for p in stepped[index]]
        assert stamps == sorted(stamps)
        ends = [window_end_us(p, 1) for p in stepped[index]]
        assert len(set(ends)) == len(ends)  # one point a window
    # The weights tell: the points' plain means differ from the answer somewhere.
    assert any(
        point[key] != pytest.approx(sum(p[key] for p in window) / len(window))
        for point, window in zip(stepped["1"], whole_windows(plain["1"], 1), strict=False)
        for key in MEAN_KEYS
    )
    assert all(p["fan_speed"] is None for p in stepped["0"])  # no fan: null in every window


async def test_since_cuts_the_points_then_limit_keeps_the_last_windows(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus
) -> None:
    sim_gpus(sim_gpu(0))
    client = await aiohttp_client(create_app(fast_config(config)))
    plain = (
        await wait_for(
            client,
            "/metrics/gpus",
            lambda b: len(whole_windows(b.get("0", []), 1)) >= 4,
        )
    )["0"]
    windows = whole_windows(plain, 1)
    target = windows[1]
    start_us = window_end_us(target[0], 1) - 1_000_000

    # Since a window's start: that window whole, and the ones after it.
    again = (await get_json(client, f"/metrics/gpus?step=1&since={iso_query(start_us)}"))["0"]
    assert_opens_with(again, windows[1:])
    # Since a point inside it: the window less the points up to that one (since cuts points).
    inside = target[0]["timestamp"].replace("+", "%2B")
    rest = (await get_json(client, f"/metrics/gpus?step=1&since={inside}"))["0"]
    assert_opens_with(rest, [target[1:], *windows[2:]])
    assert rest[0]["samples"] == merged(target)["samples"] - target[0]["samples"]

    # ...then limit keeps the last windows of those: read before the same query without it,
    # which may hold a window more, or a last window grown since.
    query = f"/metrics/gpus?step=1&since={iso_query(start_us)}"
    last_two = (await get_json(client, f"{query}&limit=2"))["0"]
    later = (await get_json(client, query))["0"]
    assert len(last_two) == 2
    ends = [window_end_us(p, 1) for p in later]
    first = ends.index(window_end_us(last_two[0], 1))
    assert ends[first + 1] == window_end_us(last_two[1], 1)
    assert first >= len(later) - 3  # the last two, but for a window that came since
    assert first >= len(windows) - 2  # ...of all of them, not the first two after `since`
    assert last_two[0] == later[first]  # the older of the two was already whole
    assert last_two[1]["samples"] <= later[first + 1]["samples"]

    # limit=1: the last window, the one the newest point is in.
    [last] = (await get_json(client, "/metrics/gpus?step=1&limit=1"))["0"]
    assert window_end_us(last, 1) >= window_end_us(plain[-1], 1)
    assert last["timestamp"] >= plain[-1]["timestamp"]


async def test_a_window_of_a_lost_gpu_is_null(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: SimGpus, tmp_path: Path
) -> None:
    lost_flag = tmp_path / "gpu0.lost"
    sim_gpus(sim_gpu(0, lost_if_exists=str(lost_flag)))
    client = await aiohttp_client(create_app(fast_config(config)))
    await wait_for(client, "/metrics/gpus", lambda b: len(b.get("0", [])) >= 2)

    lost_flag.touch()  # the GPU falls off the bus

    def a_whole_lost_window(body: Any) -> bool:
        return any(all(p["utilization"] is None for p in w) for w in whole_windows(body["0"], 1))

    plain = (await wait_for(client, "/metrics/gpus", a_whole_lost_window))["0"]
    stepped = (await get_json(client, "/metrics/gpus?step=1"))["0"]
    lost_flag.unlink()

    windows = whole_windows(plain, 1)
    assert_opens_with(stepped, windows)
    lost = [
        point
        for point, window in zip(stepped, windows, strict=False)
        if all(p["utilization"] is None for p in window)
    ]
    assert lost
    assert all(p[key] is None for p in lost for key in MEAN_KEYS)
    assert all(p["samples"] >= 1 for p in lost)
    # The window in which it was lost: the means of the points read before, not diluted.
    mixed = [
        point
        for point, window in zip(stepped, windows, strict=False)
        if {p["utilization"] is None for p in window} == {True, False}
    ]
    for point in mixed:
        assert point["utilization"] is not None


# --- the re-bucketing itself (gpu/series.py) ---

# 2025-12-01T19:02:30+00:00: a multiple of 10 and of 30 s.
T0 = 1_764_615_750


def gpu_point(at_s: float, samples: int = 1, **values: float | None) -> GpuPoint:
    """A point as the sampler encodes it: its fields null but ``values``."""
    stamp = datetime.fromtimestamp(at_s, UTC)
    document = {"timestamp": stamp.isoformat(), **dict.fromkeys(MEAN_KEYS), **values}
    document["samples"] = samples
    return GpuPoint(timestamp=stamp.timestamp(), json=json.dumps(document).encode())


def test_a_point_at_a_window_boundary_is_in_the_window_that_ends_there() -> None:
    points = [
        gpu_point(T0 - 5),
        gpu_point(T0),  # the end of (T0 - 10, T0]
        gpu_point(T0 + 0.000001),  # the start of (T0, T0 + 10] is open
        gpu_point(T0 + 5),
        gpu_point(T0 + 10),
        gpu_point(T0 + 10.5),
    ]

    windows = [p.fields() for p in rebucket(points, 10)]

    assert [(w["timestamp"], w["samples"]) for w in windows] == [
        ("2025-12-01T19:02:30+00:00", 2),
        ("2025-12-01T19:02:40+00:00", 3),
        ("2025-12-01T19:02:40.500000+00:00", 1),
    ]
    assert [w.timestamp for w in rebucket(points, 10)] == [T0, T0 + 10, T0 + 10.5]


def test_the_fields_are_sample_weighted_means_over_the_points_that_have_them() -> None:
    points = [
        gpu_point(T0 + 1, samples=1, utilization=10.0, power_usage=100.0, temperature=50.0),
        gpu_point(T0 + 2, samples=2, utilization=40.0, power_usage=None, temperature=60.0),
        gpu_point(T0 + 3, samples=5),  # a GPU lost for a bucket: all null
        gpu_point(T0 + 4.123456, samples=2, utilization=None, power_usage=None, temperature=65.0),
    ]

    [window] = rebucket(points, 30)

    assert json.loads(window.json) == {
        "timestamp": "2025-12-01T19:02:34.123456+00:00",  # the newest point's, as it was
        "memory_used": None,  # null in every point
        "utilization": pytest.approx((10 * 1 + 40 * 2) / 3),
        "power_usage": pytest.approx(100.0),
        "temperature": pytest.approx((50 * 1 + 60 * 2 + 65 * 2) / 5),
        "fan_speed": None,
        **dict.fromkeys(GPM_POINT_KEYS),
        "samples": 10,
    }
    assert list(window.fields()) == ["timestamp", *MEAN_KEYS, "samples"]


def test_limit_keeps_the_last_windows_and_decodes_only_those() -> None:
    undecodable = GpuPoint(timestamp=T0 - 5, json=b"not JSON: a point limit must not read")
    points = [undecodable, *(gpu_point(T0 + s, utilization=float(s)) for s in range(1, 70, 3))]

    last_two = rebucket(points, 30, limit=2)

    assert [w.fields()["samples"] for w in last_two] == [10, 3]  # (T0+30, T0+60], (T0+60, T0+90]
    assert [w.fields()["utilization"] for w in last_two] == [
        pytest.approx(sum(range(31, 60, 3)) / 10),
        pytest.approx(sum(range(61, 70, 3)) / 3),
    ]
    assert rebucket(points[1:], 30, limit=100) == rebucket(points[1:], 30)
    assert len(rebucket(points[1:], 30)) == 3
    assert rebucket([], 30) == []
    [last] = rebucket(points, 1, limit=1)
    assert last.fields() == points[-1].fields()  # a window of one point is that point

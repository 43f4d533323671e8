"""The bench's figure of GET /usage (issue 36): the route over a month of usage history for 8
GPUs and 50 users, written straight into the store (its own API), then asked through the real
app served on a local port, as an admin (everyone's rows, the largest answers)."""

# ruff: noqa: RUF001  (the figure's text uses the multiplication sign, on purpose)

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from deepdockd.config import Config
from deepdockd.usage.store import FILE_NAME, HOUR_S, Key, UsageStore

if TYPE_CHECKING:
    from bench.run import Bench, Figure

GPUS = 8
USERS = 50
CONTAINERS_PER_USER = 4
HOURS = 30 * 24
# Each GPU's hour is split among this many containers (hand-overs within the hour, or sharing
# with gpu_sharing on): a busier month than a real one, so more rows than a real one.
HOLDERS_PER_GPU_HOUR = 3
TARGET_MS = 50.0


def fill(path: Path, now: float) -> int:
    """A month of hourly rows ending this hour; the number of rows."""
    containers = [
        (f"user{u:02d}", f"user{u:02d}-job{c}")
        for u in range(USERS)
        for c in range(CONTAINERS_PER_USER)
    ]
    turns = itertools.cycle(containers)
    last_hour = int(now // HOUR_S * HOUR_S)
    store = UsageStore(path)
    store.open()
    rows = 0
    try:
        for hour in range(last_hour - (HOURS - 1) * HOUR_S, last_hour + 1, HOUR_S):
            batch: dict[Key, tuple[float, float]] = {}
            for gpu in range(GPUS):
                for _ in range(HOLDERS_PER_GPU_HOUR):
                    owner, container = next(turns)
                    held = HOUR_S / HOLDERS_PER_GPU_HOUR
                    batch[Key(hour, owner, container, str(gpu))] = (held, held * 0.6)
            store.add(batch)
            rows += len(batch)
    finally:
        store.close()
    return rows


async def measure(bench: Bench, figure: type[Figure]) -> None:
    """``figure``: bench.run's Figure (passed in: bench.run runs as __main__)."""
    from deepdockd.api.app import create_app

    state_dir = bench.workdir / "state-usage"
    started = time.perf_counter()
    rows = fill(state_dir / FILE_NAME, time.time())
    fill_s = time.perf_counter() - started
    config = Config(
        docker_host=bench.rig.docker_host,
        state_dir=state_dir,
        namespace=bench.namespace,
        auth=False,  # the anonymous admin: everyone's rows
        egress_policy=False,  # the bench leaves the host's firewall as it found it
        host_users=False,
    )
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    sizes: dict[str, tuple[int, int]] = {}
    try:
        async with aiohttp.ClientSession() as http:

            def ask(by: str) -> Callable[[], Awaitable[None]]:
                async def get() -> None:
                    async with http.get(f"http://127.0.0.1:{port}/usage?by={by}") as r:
                        assert r.status == 200, await r.text()
                        body = await r.read()
                        sizes[by] = (len(body), len((await r.json())["rows"]))

                return get

            by_owner = await timings(ask("owner"), 60)
            by_container = await timings(ask("container"), 60)
    finally:
        await runner.cleanup()
    value = median_ms(by_owner)
    bench.add(
        figure(
            f"GET /usage, a month of {GPUS} GPUs and {USERS} users",
            value,
            "ms",
            target=f"≤ {TARGET_MS:.0f} ms",
            met=value <= TARGET_MS,
            detail=f"by=owner median of {len(by_owner)}, p90 {percentile_ms(by_owner, 0.9):.1f}"
            f" ms ({sizes['owner'][1]} rows); by=container {median_ms(by_container):.1f} ms"
            f" ({sizes['container'][1]} rows); {rows:,} hourly rows ({GPUS}×{HOURS} GPU-hours,"
            f" {HOLDERS_PER_GPU_HOUR} holders each), filled in {fill_s:.1f} s",
            notes={"db_rows": rows, "by_container_ms": median_ms(by_container)},
        )
    )


async def timings(call: Callable[[], Awaitable[None]], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        await call()
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
    return durations


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def percentile_ms(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

"""NVIDIA's Grafana dashboard for dcgm-exporter works on deepdockd unchanged.

tests/data/dcgm-exporter-dashboard.json is that dashboard as NVIDIA publishes it (its source
and version: tests/data/README.md). A real Prometheus scrapes deepdockd, whose simulated GPUs
have GPM (the profiling metrics of Hopper and newer), and every panel query of the dashboard is
run with its variables set to "All" the way Grafana sets them: each variable's values, from its
own label_values() query, as the regex ``(v1|v2|...)``. A panel that shows one line per GPU has
one series per GPU; one that sums or averages over the GPUs has its one series.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests.support.api import ClientFactory
from tests.support.gpus import sim_gpu
from tests.support.prometheus import PrometheusServer
from tests.support.users import users_tokens

DASHBOARD = Path(__file__).parent / "data" / "dcgm-exporter-dashboard.json"
GPUS = 3
TENSOR_PCT = [12, 47, 80]  # what the simulated GPUs' GPM gives as tensor activity (%)


def panel_queries() -> list[tuple[str, str]]:
    """(title, PromQL) of every panel target of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def variable_queries() -> dict[str, tuple[str, str]]:
    """Each query variable: name -> (metric, label) of its label_values(metric, label)."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", text)
        assert match, f"variable {variable['name']}: {text}"
        found[variable["name"]] = (match.group(1), match.group(2))
    return found


def all_values(prometheus: PrometheusServer, metric: str, label: str) -> str:
    """What Grafana puts for "All" (no custom allValue): every value, regex-escaped, or-ed,
    with the backslashes doubled for the PromQL string the regex stands in."""
    values = sorted({s["metric"][label] for s in prometheus.query(metric)})
    assert values, f"label_values({metric}, {label}) is empty"
    escaped = (re.escape(v).replace("\\", "\\\\") for v in values)
    return "(" + "|".join(escaped) + ")"


@pytest.fixture
async def daemon_target(
    aiohttp_client: ClientFactory, config: Config, sim_gpus: Any, gpu_stem: str
) -> tuple[str, str]:
    """A daemon with auth on, three simulated H100s with GPM, and a fast sampler: its
    host:port and the admin's token."""
    sim_gpus(
        *(
            sim_gpu(
                i,
                stem=gpu_stem,
                sm_clock_mhz=[1980, 1755],
                gpm={
                    "sm_util": [30 + i, 60],
                    "sm_occupancy": [20, 25],
                    "any_tensor_util": TENSOR_PCT,
                    "dram_bw_util": [40],
                    "pcie_tx_per_sec": [100],
                    "pcie_rx_per_sec": [50],
                },
            )
            for i in range(GPUS)
        )
    )
    secured = Config(
        **{**config.__dict__, "auth": True, "gpu_sample_interval": 0.1, "gpu_bucket": 0.5}
    )
    tokens = users_tokens(TokenStore(secured.state_dir))
    client = await aiohttp_client(create_app(secured))
    return f"{client.server.host}:{client.server.port}", tokens["admin"]


async def test_every_panel_of_nvidias_dcgm_dashboard_has_one_series_per_gpu(
    daemon_target: tuple[str, str], tmp_path: Path
) -> None:
    target, admin_token = daemon_target
    queries = panel_queries()
    assert len(queries) == 8, [title for title, _ in queries]
    with PrometheusServer(
        tmp_path / "prometheus", target, metrics_path="/metrics/prometheus",
        bearer_token=admin_token, scrape_interval_s=1.0,
    ) as prometheus:  # fmt: skip
        # One scrape with every GPU in it, GPM metrics included (they need two GPM samples).
        await asyncio.to_thread(
            prometheus.wait_for_series,
            "DCGM_FI_DEV_GPU_TEMP",
            lambda r: len(r) == GPUS,
            30,
        )
        variables = {
            name: all_values(prometheus, metric, label)
            for name, (metric, label) in variable_queries().items()
        }
        assert set(variables) == {"instance", "gpu"}

        def run(expr: str) -> list[dict[str, Any]]:
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            return prometheus.query(expr)

        results: dict[str, list[dict[str, Any]]] = {}
        for title, expr in queries:
            results[title] = await asyncio.to_thread(run, expr)
    problems = []
    for title, expr in queries:
        series = results[title]
        aggregated = re.match(r"\s*(sum|avg|max|min|count)\s*\(", expr) is not None
        if aggregated:
            if len(series) != 1:
                problems.append(f"{title}: {len(series)} series, not 1 ({expr})")
        elif sorted(s["metric"].get("gpu") for s in series) != [str(i) for i in range(GPUS)]:
            problems.append(f"{title}: series {[s['metric'] for s in series]} ({expr})")
    assert not problems, "\n".join(problems)

    # The tensor panel shows GPM's tensor activity as dcgm-exporter does: a ratio.
    ratios = [pytest.approx(pct / 100) for pct in TENSOR_PCT]
    for found in results["Tensor Core Utilization"]:
        assert float(found["value"][1]) in ratios, found

"""The dashboard's plots, read as a person reads them, in a real headless Chromium against a
deepdockd process on the rig with the simulated demo GPUs: each plot's y-axis ticks, and the
readout shown where the pointer (or the keyboard) rests, whose time and values must be those
of the API's series for that time. Then a running container's row (CPU, memory, pids as the
page's GET /containers answered them) and its plots against GET /containers/{name}/stats."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Locator, Page, Response, expect, sync_playwright

from deepdockd.tokens import TokenStore

from tests import test_dashboard as dashboard
from tests.support.daemon import RunningDaemon, http_json
from tests.support.gpus import NVML_SIM_LIBRARY
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig
from tests.support.users import users_tokens


@dataclass
class Server:
    daemon: RunningDaemon
    tokens: dict[str, str]

    @property
    def base(self) -> str:
        return self.daemon.base

    def api(self, path: str, user: str = "alice") -> Any:
        status, body = http_json("GET", self.base + path, token=self.tokens[user])
        assert status == 200, (path, body)
        return body


@pytest.fixture
def server(
    rig_daemon: Callable[..., RunningDaemon], namespace: str, ssh_ports: tuple[int, int],
    service_ports: tuple[int, int], gpu_stem: str, tmp_path: Path, cleanup: None,
) -> Server:  # fmt: skip
    """deepdockd with auth on and the four demo GPUs (under UUIDs of this test's own), its
    points every 2 s, so that a plot of 15 minutes (10 s windows) has a line within seconds."""
    demo = json.loads(dashboard.DEMO_GPUS.read_text())
    for index, gpu in enumerate(demo["gpus"]):
        gpu["uuid"] = f"GPU-{gpu_stem}-0000-4000-8000-{index:012d}"
        for piece in gpu.get("mig", {}).get("slices", []):
            piece["uuid"] = piece["uuid"].replace("5a1c0d3e", gpu_stem)
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps(demo))
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}",
        "DEEPDOCKD_SERVICE_PORT_RANGE": f"{service_ports[0]}-{service_ports[1]}",
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(gpus),
        "DEEPDOCKD_GPU_BUCKET": "2",
    }
    daemon = rig_daemon(env=env, auth=True)
    return Server(daemon, users_tokens(TokenStore(daemon.state_dir)))


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium; every answer of the daemon's API its tabs received must hold to the
    strict spec (the tabs are test_dashboard's, which check each answer)."""
    dashboard.OPENED.clear()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=dashboard.CHROMIUM, args=["--no-sandbox"]
        )
        yield launched
        problems = [problem for tab in dashboard.OPENED for problem in tab.spec_problems]
        launched.close()
    dashboard.OPENED.clear()
    assert not problems, "answers outside openapi.yaml in the browser:\n" + "\n".join(problems)


def sign_in(browser: Browser, server: Server, user: str = "alice") -> dashboard.Tab:
    tab = dashboard.open_tab(browser, f"{server.base}/ui")
    tab.page.get_by_label("Token").fill(server.tokens[user])
    tab.page.get_by_role("button", name="Sign in").click()
    expect(tab.page.get_by_role("button", name="Sign out")).to_be_visible()
    return tab


def wait_for_points(plot: Locator, count: int) -> None:
    """Until the plot's label says it has at least ``count`` points."""
    expect(plot.get_by_role("img")).to_have_attribute(
        "aria-label", re.compile(rf"\b([{count}-9]|\d\d+) points"), timeout=60_000
    )


def vertices(plot: Locator, line: str) -> list[float]:
    """The x of each vertex of a line of the plot, in the SVG's units (0 to 300)."""
    d = plot.locator(f"path.{line}").get_attribute("d") or ""
    return [float(x) for x in re.findall(r"[ML]([\d.]+) ", d)]


def hover_vertex(page: Page, plot: Locator, x: float) -> None:
    box = plot.locator(".plot-area").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * x / 300, box["y"] + box["height"] / 2)


def readout(plot: Locator) -> tuple[str, dict[str, str]]:
    """The readout's time (its ``datetime``) and its text per series."""
    box = plot.locator(".readout")
    expect(box).to_be_visible()
    expect(box.locator("time")).to_have_text(re.compile(r"\d\d:\d\d:\d\d"))
    stamp = box.locator("time").get_attribute("datetime") or ""
    values = {}
    for line in box.locator(".value").all():
        values[line.get_attribute("data-series") or ""] = line.inner_text()
    return stamp, values


def read_until(check: Callable[[], str | None], what: str) -> None:
    """Runs ``check`` until it returns None (the page and the API agree); its last complaint
    fails the test. The page and the API may disagree for one refresh (5 s) at most."""
    deadline = time.monotonic() + 30
    complaint = None
    while time.monotonic() < deadline:
        complaint = check()
        if complaint is None:
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: {complaint}")


def point_at(points: list[dict[str, Any]], stamp: str) -> dict[str, Any] | None:
    return next((p for p in points if p["timestamp"] == stamp), None)


def since(seconds: float) -> str:
    return quote(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds)))


# --- the GPU plots ---


def test_a_gpu_plot_has_a_scale_and_a_readout_of_the_series(
    browser: Browser, server: Server
) -> None:
    tab = sign_in(browser, server)
    page = tab.page
    page.get_by_label("Range").select_option(label="15 min")  # windows of 10 s
    plot = page.locator("article:has(#gpu-0-title) figure")
    expect(plot.locator(".y-axis .tick")).to_have_text(["0 %", "25 %", "50 %", "75 %", "100 %"])
    wait_for_points(plot, 3)

    # The mouse on the last point but one (a whole window, which no longer grows): the
    # readout says its time, utilization and memory as GET /metrics/gpus gives them.
    def hovered_point_matches() -> str | None:
        hover_vertex(page, plot, vertices(plot, "utilization")[-2])
        stamp, values = readout(plot)
        series = server.api(f"/metrics/gpus?step=10&since={since(120)}")["0"]
        point = point_at(series, stamp)
        if point is None:
            return f"no point at {stamp} in {series}"
        utilization = number_in(values["utilization"], r"utilization ([\d.]+) %")
        memory = number_in(values["memory"], r"memory (\d+) MiB \([\d.]+ %\)")
        shown_as_sent = (
            utilization == pytest.approx(point["utilization"], abs=0.051)  # shown to 0.1
            and memory == pytest.approx(point["memory_used"], abs=0.51)  # shown in whole MiB
        )
        return None if shown_as_sent else f"{values} against {point}"

    read_until(hovered_point_matches, "the readout of GPU 0's plot")
    expect(plot.locator(".cursor")).to_be_visible()
    expect(plot.locator(".dot.utilization")).to_be_visible()
    tab.screenshot("gpu-plot-readout")
    page.screenshot(path=dashboard.SCREENSHOTS / "gpu-plot-readout-viewport.png")  # README's

    # The keyboard: End reads the newest point (the caption's "latest"), an arrow the one
    # before, Escape hides the readout.
    page.mouse.move(0, 0)
    expect(plot.locator(".readout")).to_be_hidden()
    plot.locator(".plot-area").focus()
    page.keyboard.press("End")
    newest, _ = readout(plot)
    assert newest == plot.locator(".plot-caption time").get_attribute("datetime")
    page.keyboard.press("ArrowLeft")
    earlier, _ = readout(plot)
    assert earlier < newest
    page.keyboard.press("Escape")
    expect(plot.locator(".readout")).to_be_hidden()
    assert tab.foreign_requests(server.base) == []


# --- a container's row and plots ---


def test_a_running_containers_row_and_plots_show_its_use(
    browser: Browser, server: Server, rig: Rig
) -> None:
    name = f"use-{uuid.uuid4().hex[:6]}"
    status, answer = http_json(
        "POST", f"{server.base}/containers/create", token=server.tokens["alice"],
        json_body={"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "alice",
                   "password": "pw-123456"},
        timeout_s=120,
    )  # fmt: skip
    assert status == 201, answer
    rig.docker("exec", "--detach", name, "sh", "-c", "while :; do :; done")  # one busy core

    tab = sign_in(browser, server)
    page = tab.page
    tab.view("Containers")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))
    expect(page.get_by_role("columnheader", name="Use")).to_be_visible()

    # The row shows what the page's latest GET /containers answered (read every 5 s).
    def listed(response: Response) -> bool:
        return response.url == f"{server.base}/containers" and response.ok

    def row_matches_the_list() -> str | None:
        # (Six refreshes' time: the container's busy loop takes one of the machine's cores.)
        with page.expect_response(listed, timeout=30_000) as answered:
            pass
        [item] = [c for c in answered.value.json()["containers"] if c["name"] == name]
        if item["cpu_percent"] is None:
            return f"not sampled yet: {item}"
        expected = [
            f"{fixed(item['cpu_percent'], 1)} % CPU",
            f"{mib(item['memory_used_mb'])} / "
            + ("no limit" if item["memory_limit_mb"] is None else mib(item["memory_limit_mb"])),
            f"{item['pids']} pids",
        ]
        shown = [row.locator(f".use .{part}").inner_text() for part in ("cpu", "memory", "pids")]
        return None if shown == expected else f"{shown} != {expected}"

    read_until(row_matches_the_list, f"{name}'s row")
    listed_now = server.api("/containers")["containers"]
    assert listed_now[0]["cpu_percent"] == pytest.approx(100, abs=15)  # the busy core
    tab.screenshot("containers-use")

    # Its plots: CPU in % of one core, memory in MiB, with readouts of the stats series.
    row.get_by_role("button", name=f"Plot the use of {name}").click()
    card = page.get_by_role("region", name=f"{name} · use")
    expect(card).to_be_visible()
    cpu, memory = card.locator("figure").nth(0), card.locator("figure").nth(1)
    expect(cpu.locator(".y-axis .tick").first).to_have_text("0 %")
    expect(cpu.locator(".y-axis .tick").last).to_have_text(re.compile(r"^(1[0-9]{2}) %$"))
    expect(memory.locator(".y-axis .tick").last).to_have_text(re.compile(r"^[\d.]+ (MiB|GiB)$"))
    wait_for_points(cpu, 3)

    def readouts_match() -> str | None:
        hover_vertex(page, cpu, vertices(cpu, "cpu")[-2])
        stamp, values = readout(cpu)
        hover_vertex(page, memory, vertices(memory, "memory")[-2])
        memory_stamp, memory_values = readout(memory)
        stats = server.api(f"/containers/{name}/stats?step=10&since={since(120)}")
        point = point_at(stats["points"], stamp)
        if point is None or memory_stamp != stamp:
            return f"no point at {stamp} ({memory_stamp}) in {stats}"
        cpu_shown = number_in(values["cpu"], r"CPU ([\d.]+) %")
        memory_shown = number_in(memory_values["memory"], r"memory ([\d.]+) MiB")
        shown_as_sent = cpu_shown == pytest.approx(
            point["cpu_percent"], abs=0.051
        ) and memory_shown == pytest.approx(point["memory_used_mb"], abs=0.051)
        return None if shown_as_sent else f"{values}, {memory_values} against {point}"

    read_until(readouts_match, f"the readouts of {name}'s plots")
    tab.screenshot("container-plot")

    row.get_by_role("button", name=f"Plot the use of {name}").click()
    expect(card).to_have_count(0)
    assert tab.foreign_requests(server.base) == []


def number_in(text: str, pattern: str) -> float | None:
    match = re.fullmatch(pattern, text)
    return float(match[1]) if match else None


def fixed(value: float, digits: int) -> str:
    """As JavaScript's toFixed writes a number: the float's exact value rounded, a tie up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP))


def mib(value: float) -> str:
    """As the page writes an amount of MiB (dom.js's mib)."""
    if value >= 1024:
        return f"{fixed(value / 1024, 1)} GiB"
    return f"{fixed(value, 0)} MiB"

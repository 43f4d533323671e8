"""The dashboard's usage view, in a real headless Chromium against a deepdockd process on the
rig: an admin sees a bar per owner, a user only their own, each labelled with the hours that
GET /usage answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from deepdockd.tokens import TokenStore

from tests.support.daemon import RunningDaemon, http_json
from tests.support.gpus import NVML_SIM_LIBRARY
from tests.support.rig import Rig
from tests.support.users import users_tokens
from tests.test_usage import run_container, sim_gpus_file

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def usage_view(browser: Browser, base: str, token: str) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/ui")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    page.get_by_role("navigation", name="Views").get_by_role("button", name="Usage").click()
    return page, errors


def label_of(row: dict[str, object]) -> str:
    held, busy = float(row["gpu_hours_held"]), float(row["gpu_hours_busy"])  # type: ignore[arg-type]
    return f"{row['owner']}: {held:.2f} GPU-hours held, {busy:.2f} busy"


def test_the_usage_view_shows_each_caller_their_rows(
    rig_daemon: Callable[..., RunningDaemon],
    rig: Rig,
    namespace: str,
    tmp_path: Path,
    gpu_stem: str,
    browser: Browser,
    cleanup: None,
) -> None:
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(sim_gpus_file(tmp_path / "gpus.json", gpu_stem)),
        "DEEPDOCKD_GPU_SAMPLE_INTERVAL": "0.05",
        "DEEPDOCKD_USAGE_FLUSH_INTERVAL": "0.2",
    }
    daemon = rig_daemon(env=env, auth=True)
    tokens = users_tokens(TokenStore(daemon.state_dir))
    run_container(rig, namespace, f"{namespace}-a", "alice", "0")
    run_container(rig, namespace, f"{namespace}-b", "bob", "1")
    # Both recorded, then stopped, so that the page and the API see the same hours.
    deadline = time.monotonic() + 30
    while True:
        _, answer = http_json("GET", f"{daemon.base}/usage", token=tokens["admin"])
        if {r["owner"] for r in answer["rows"]} == {"alice", "bob"}:
            break
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    rig.docker("kill", f"{namespace}-a", f"{namespace}-b")
    answers: list[object] = []
    while len(answers) < 2 or answers[-1] != answers[-2]:
        assert time.monotonic() < deadline + 30, answers[-1]
        time.sleep(0.5)
        answers.append(http_json("GET", f"{daemon.base}/usage", token=tokens["admin"])[1])
    rows = {r["owner"]: r for r in answers[-1]["rows"]}  # type: ignore[index]

    page, errors = usage_view(browser, daemon.base, tokens["admin"])
    chart = page.get_by_role("list", name="GPU-hours by owner")
    expect(chart.get_by_role("listitem")).to_have_count(2)
    for owner in ("alice", "bob"):
        expect(chart.get_by_label(label_of(rows[owner]))).to_be_visible()

    page, user_errors = usage_view(browser, daemon.base, tokens["alice"])
    chart = page.get_by_role("list", name="GPU-hours by owner")
    expect(chart.get_by_role("listitem")).to_have_count(1)
    expect(chart.get_by_label(label_of(rows["alice"]))).to_be_visible()
    page, bob_errors = usage_view(browser, daemon.base, tokens["bob"])
    expect(
        page.get_by_role("list", name="GPU-hours by owner").get_by_role("listitem")
    ).to_have_count(1)
    assert errors == user_errors == bob_errors == []

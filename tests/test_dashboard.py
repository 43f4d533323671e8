"""The dashboard (GET /ui), driven in a real headless Chromium by Playwright against a
deepdockd process on the rig with auth on and the four simulated demo GPUs: sign-in, the
GPU cards and their plots against GET /metrics/gpus, a container made through the form and
logged in to with the SSH command the page shows, a stop seen without a reload, a pull's
progress bar, and what a user's page does not show. Every request the page makes is
recorded, and must go to the daemon; every answer of the daemon's API the page receives is
checked against the strict spec (tests/support/spec.py). Screenshots of each view go to
build/dashboard/."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from playwright.sync_api import Browser, Error, Page, Request, expect, sync_playwright

from deepdockd.tokens import TokenStore

from tests.support.daemon import RunningDaemon, http_json, http_request
from tests.support.gpus import NVML_SIM_LIBRARY
from tests.support.relays import in_thread, slow_link
from tests.support.rig import (
    DEBIAN_SSH_IMAGE,
    DEBIAN_WEBAPP_IMAGE,
    REGISTRY_ADDR,
    RIG_REGISTRIES,
    WEBAPP_PORT,
    Rig,
)
from tests.support.spec import answer_problem

DEMO_GPUS = Path(__file__).parent / "nvml-sim" / "demo-4gpu.json"
SCREENSHOTS = Path(__file__).parents[1] / "build" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class Server:
    daemon: RunningDaemon
    tokens: dict[str, str]
    lost_flag: Path  # GPU 3 falls off the bus while this file exists

    @property
    def base(self) -> str:
        return self.daemon.base

    def api(self, method: str, path: str, user: str, body: Any = None) -> tuple[int, Any]:
        return http_json(
            method, self.base + path, token=self.tokens[user], json_body=body, timeout_s=120
        )


# A process on GPU 1 whose command line is markup: what a hostile user could run.
HOSTILE_ARGV = ["<img src=/x onerror=window.owned=1>", "600"]
HOSTILE_COMMAND = " ".join(HOSTILE_ARGV)


@pytest.fixture
def hostile_process() -> Iterator[int]:
    process = subprocess.Popen(HOSTILE_ARGV, executable="/bin/sleep")
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def slow_registry() -> Iterator[str]:
    """The rig's open registry behind a 2 MiB/s link (see ``slow_link``)."""
    with in_thread(slow_link(REGISTRY_ADDR, bytes_per_s=2 * 2**20), "slow-link") as link:
        yield link


@pytest.fixture
def server(
    rig_daemon: Callable[..., RunningDaemon], namespace: str, ssh_ports: tuple[int, int],
    service_ports: tuple[int, int], gpu_stem: str, tmp_path: Path, hostile_process: int,
    slow_registry: str, cleanup: None,
) -> Server:  # fmt: skip
    """deepdockd with auth on and the four demo GPUs, under UUIDs of this test's own (so no
    container another test left behind holds them)."""
    demo = json.loads(DEMO_GPUS.read_text())
    lost_flag = tmp_path / "gpu3.lost"
    for index, gpu in enumerate(demo["gpus"]):
        gpu["uuid"] = f"GPU-{gpu_stem}-0000-4000-8000-{index:012d}"
        for piece in gpu.get("mig", {}).get("slices", []):  # GPU 1's MIG slices
            piece["uuid"] = piece["uuid"].replace("5a1c0d3e", gpu_stem)
    demo["gpus"][3]["lost_if_exists"] = str(lost_flag)
    demo["gpus"][1]["processes"] = [
        {"pid": hostile_process, "used_memory_mib": 100, "sm": 5, "type": "compute"}
    ]
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps(demo))
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}",
        "DEEPDOCKD_SERVICE_PORT_RANGE": f"{service_ports[0]}-{service_ports[1]}",
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(gpus),
        "DEEPDOCKD_GPU_BUCKET": "2",  # points from the first seconds on, and often
        "DEEPDOCKD_ALLOWED_REGISTRIES": ",".join((*RIG_REGISTRIES, slow_registry)),
    }
    daemon = rig_daemon(env=env, auth=True)
    store = TokenStore(daemon.state_dir)
    store.ensure_admin()
    tokens = {
        "admin": store.admin_token_path.read_text().strip(),
        "alice": store.add("alice", "user"),
        "bob": store.add("bob", "user"),
    }
    return Server(daemon, tokens, lost_flag)


# What the proxy relays from a container's service (whatever it is; the proxy's own answers
# are held to the spec in-process, tests/test_proxy.py).
RELAYED = re.compile(r"^/containers/[^/]+/proxy/")
# The tabs the running test opened: their answers are checked again when the browser closes.
OPENED: list[Tab] = []

# How long a web-first assertion waits for the page (Playwright's default is 5 s). A list the
# page reads after a create took longer than that on a machine half as fast as the suite's
# usual one; the page's own waits are what is tested, not the machine's speed.
expect.set_options(timeout=15_000)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium. When the test ends, every answer of the daemon's API its tabs
    received must hold to the strict spec (as each test's ``foreign_requests`` checks too)."""
    OPENED.clear()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        problems = [problem for tab in OPENED for problem in tab.spec_problems]
        checked = sum(tab.answers_checked for tab in OPENED)
        launched.close()
    OPENED.clear()
    assert not problems, "answers outside openapi.yaml in the browser:\n" + "\n".join(problems)
    print(f"{checked} API answers the browser received were checked against the strict spec")


@dataclass
class Tab:
    """A page of the dashboard, with every request it made and every page load, and what
    was wrong with the answers of the daemon's API it received (``spec_problems``)."""

    page: Page
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # uncaught in the page's scripts
    loads: int = 0
    spec_problems: list[str] = field(default_factory=list)
    answers_checked: int = 0

    def foreign_requests(self, base: str) -> list[str]:
        """The requests that went elsewhere than the daemon; checked with the page's errors
        and the answers outside the spec (there must be none of any)."""
        assert self.errors == []
        assert self.spec_problems == []
        return [url for url in self.requests if not url.startswith(base + "/")]

    def check_answer(self, request: Request, *, finished: bool) -> None:
        """One answer of the daemon's API (not the dashboard's own files) against the strict
        spec: whole once it finished; an event stream that is still open (or was cut when the
        page went) by its status and type, and the frames it had, cut or not."""
        url = request.url
        if not url.startswith(self.base + "/") or url.startswith(self.base + "/ui"):
            return
        if RELAYED.match(url.removeprefix(self.base)):
            return  # a container's service answered through the proxy: not the API's answer
        response = request.response()
        if response is None:
            return  # no answer at all (the page went before it came)
        headers = {name.title(): value for name, value in response.headers.items()}
        streaming = headers.get("Content-Type", "").startswith("text/event-stream")
        try:
            body = response.body() if finished else b""
        except Error:
            body, finished = b"", False  # its body went with the page that asked for it
        if not finished and not streaming:
            return  # a whole answer the page did not wait for: nothing to check it by
        problem = answer_problem(
            request.method, url, response.status, headers, body,
            request_headers=request.headers, complete=finished,
        )  # fmt: skip
        self.answers_checked += 1
        if problem:
            self.spec_problems.append(f"{request.method} {url} -> {response.status}: {problem}")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)

    def view(self, name: str) -> None:
        self.page.get_by_role("navigation", name="Views").get_by_role("button", name=name).click()


def open_tab(browser: Browser, url: str, viewport: dict[str, int] = DESKTOP) -> Tab:
    page = browser.new_page(viewport=viewport)
    parts = url.split("/", 3)
    tab = Tab(page, base="/".join(parts[:3]))
    OPENED.append(tab)
    page.on("request", lambda request: tab.requests.append(request.url))
    page.on("requestfinished", lambda request: tab.check_answer(request, finished=True))
    page.on("requestfailed", lambda request: tab.check_answer(request, finished=False))
    page.on("pageerror", lambda error: tab.errors.append(str(error)))

    def loaded(_: Page) -> None:
        tab.loads += 1

    page.on("load", loaded)
    page.goto(url)
    return tab


def signed_in(browser: Browser, server: Server, user: str, **kwargs: Any) -> Tab:
    """A tab signed in as the form does it: the token typed into its field."""
    tab = open_tab(browser, f"{server.base}/ui", **kwargs)
    tab.page.get_by_label("Token").fill(server.tokens[user])
    tab.page.get_by_role("button", name="Sign in").click()
    expect(tab.page.get_by_role("button", name="Sign out")).to_be_visible()
    return tab


# Records each value the pull's progress bar takes.
RECORD_PROGRESS = """() => {
  const bar = document.querySelector("#pull-progress");
  window.progressValues = [];
  new MutationObserver(() => window.progressValues.push(bar.value))
    .observe(bar, { attributes: true, attributeFilter: ["value"] });
}"""


# --- served files ---


def test_the_page_and_its_files_come_from_the_daemon_with_a_strict_policy(
    server: Server,
) -> None:
    status, page = http_request("GET", f"{server.base}/ui")
    assert status == 200
    html = page.decode()
    assert "http://" not in html
    assert "https://" not in html
    assert "<script>" not in html  # no inline script: the policy would refuse it
    files = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/ui/app.js" in files
    for path in files:
        assert path.startswith("/ui/")
        assert http_request("GET", server.base + path)[0] == 200  # no token: the files are public

    # The browser may load and call this daemon only, and nothing inline.
    with urllib.request.urlopen(f"{server.base}/ui") as answer:
        policy = answer.headers["Content-Security-Policy"]
        etag = answer.headers["ETag"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert "connect-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert http_request("GET", f"{server.base}/ui", headers={"If-None-Match": etag})[0] == 304

    status, missing = http_json("GET", f"{server.base}/ui/secrets.txt")
    assert status == 404
    assert missing["error"]["message"] == "no dashboard file 'secrets.txt'"
    for name in ("..%2Fopenapi.yaml", "%2E%2E", ".", "__init__.py"):
        assert http_request("GET", f"{server.base}/ui/{name}")[0] == 404, name


def test_the_spec_names_every_dashboard_file() -> None:
    spec = yaml.safe_load((Path(__file__).parents[1] / "openapi.yaml").read_text())
    [parameter] = spec["paths"]["/ui/{file}"]["get"]["parameters"]
    static = Path(__file__).parents[1] / "deepdockd" / "dashboard" / "static"
    assert sorted(parameter["schema"]["enum"]) == sorted(p.name for p in static.iterdir())


# --- in the browser ---


def test_sign_in_shows_the_four_gpus_with_plots_that_match_the_series(
    browser: Browser, server: Server
) -> None:
    tab = open_tab(browser, f"{server.base}/ui")
    page = tab.page
    page.get_by_label("Token").fill("ddk_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="the token is not valid")).to_be_visible()
    tab.screenshot("sign-in")

    page.get_by_label("Token").fill(server.tokens["alice"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("alice", exact=True)).to_be_visible()

    _, gpus = server.api("GET", "/gpus", "alice")
    cards = page.get_by_role("article")
    expect(cards).to_have_count(4)
    for gpu in gpus["gpus"]:
        card = cards.filter(
            has=page.get_by_role("heading", name=f"GPU {gpu['index']} · {gpu['name']}")
        )
        expect(card).to_have_count(1)
        expect(card.get_by_text("healthy")).to_be_visible()
        expect(card.get_by_role("img")).to_have_attribute(
            "aria-label", re.compile(r"latest utilization"), timeout=20_000
        )
    # GPU 0 of the demo runs processes: its card lists them (as another user's, for alice).
    expect(cards.first.get_by_text("another user's process", exact=False).first).to_be_visible()
    # GPU 0 of the demo is an H100 with GPM: its card shows SM and tensor activity, in % as
    # GET /gpus gives them (ratios); the A100 beside it has no GPM, and no such readings.
    profiling = page.locator("article:has(#gpu-0-title) dl.profiling")
    for key, name in (("sm_active", "SM activity"), ("tensor_active", "Tensor activity")):
        reading = profiling.locator(f"[data-metric={key}]")
        expect(reading.locator("dt")).to_have_text(name)
        expect(reading.locator("dd")).to_have_text(re.compile(r"^\d+ %$"))
    expect(page.locator("article:has(#gpu-1-title) dl.profiling")).to_have_count(0)

    # Each plot's latest point is GET /metrics/gpus's last window at the page's step (30 s
    # for a range of 1 hour), whose values the page shows as it got them.
    for index in range(4):
        _wait_for_plot_to_match(page, server, index, step_s=30)
        for line in ("utilization", "memory"):
            path = page.locator(f"article:has(#gpu-{index}-title) path.{line}")
            assert (path.get_attribute("d") or "").startswith("M")
    # And it goes on: a later window is drawn without a reload.
    first = page.locator("article time").first.get_attribute("datetime")
    expect(page.locator("article time").first).not_to_have_attribute(
        "datetime", first or "", timeout=30_000
    )
    assert tab.loads == 1
    tab.screenshot("gpus")

    # A range of 15 minutes asks for steps of 10 s: a line of several points by now.
    page.get_by_label("Range").select_option(label="15 min")
    _wait_for_plot_to_match(page, server, 2, step_s=10, min_points=2)
    assert "L" in (
        page.locator("article:has(#gpu-2-title) path.utilization").get_attribute("d") or ""
    )

    # A GPU that falls off the bus says so on its card.
    server.lost_flag.touch()
    lost = page.locator("article:has(#gpu-3-title)")
    expect(lost.locator(".badge")).to_have_text("GPU is lost", timeout=20_000)
    expect(lost.locator("dd").first).to_have_text("\u2013 / 24.0 GiB")  # no reading
    tab.screenshot("gpus-lost")

    tab.view("Host")
    host = page.locator("#host")
    expect(host.get_by_text(re.compile(r"^up · .* \(API "))).to_be_visible()
    expect(host.get_by_text("up · 4 GPUs · driver 550.54.15")).to_be_visible()
    tab.screenshot("host")
    assert tab.foreign_requests(server.base) == []


def _wait_for_plot_to_match(
    page: Page, server: Server, index: int, step_s: int, min_points: int = 1
) -> None:
    """Until the plot's latest point is the API's last window of that step: the same time,
    and the values the page shows are the API's (the last window grows while it is open, so
    the page and the test agree only once the page has refreshed)."""
    plot = page.locator(f"article:has(#gpu-{index}-title)")
    deadline = time.monotonic() + 40
    seen: tuple[Any, ...] = ()
    while time.monotonic() < deadline:
        stamp = plot.locator("time").get_attribute("datetime")
        label = plot.get_by_role("img").get_attribute("aria-label") or ""
        since = quote(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * step_s)))
        _, series = server.api("GET", f"/metrics/gpus?step={step_s}&since={since}", "alice")
        last = series[str(index)][-1]
        shown = re.search(r"(\d+) points: latest utilization ([\d.]+) %, memory (\d+) MiB", label)
        seen = (stamp, label, last)
        if shown and stamp == last["timestamp"] and int(shown[1]) >= min_points:
            assert float(shown[2]) == pytest.approx(last["utilization"], abs=0.051)  # shown to 0.1
            assert int(shown[3]) == round(last["memory_used"])
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"GPU {index}'s plot never matched GET /metrics/gpus: {seen}")


def test_create_through_the_form_log_in_with_its_ssh_command_and_stop_it(
    browser: Browser, server: Server, rig: Rig
) -> None:
    name = f"web-{uuid.uuid4().hex[:6]}"
    tab = signed_in(browser, server, "alice")
    page = tab.page
    tab.view("New container")
    form = page.locator("#create-form")

    # The API's own validation errors, each beside the field it names.
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Image", exact=True).select_option(DEBIAN_SSH_IMAGE)
    page.get_by_label("User name").fill("root")
    page.get_by_label("SSH public keys (one per line)").fill("not-a-key")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_label("User name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#c-user-error")).to_contain_text("root")
    expect(page.locator("#c-keys-error")).to_contain_text("key 1: is not an OpenSSH public key")
    expect(page.get_by_label("Name", exact=True)).not_to_have_attribute("aria-invalid", "true")
    tab.screenshot("create-errors")
    assert rig.docker("ps", "--all", "--quiet", "--filter", f"name={name}") == ""

    page.get_by_label("User name").fill("alice")
    page.get_by_label("SSH public keys (one per line)").fill("")
    page.get_by_label("Password", exact=True).fill("web-pass-123")
    # GPU 1 of the demo is in MIG mode: the form offers its slices, never GPU 1 whole.
    expect(form.get_by_label(re.compile(r"^MIG 1:0 · 3g.40gb of GPU 1 — free$"))).to_be_visible()
    expect(form.get_by_label(re.compile(r"^GPU 1 · "))).to_have_count(0)
    form.get_by_label(re.compile(r"^MIG 1:0 · ")).check()
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#create-status")).to_contain_text(f"Created {name}.", timeout=120_000)
    expect(page.locator("#c-user-error")).to_be_empty()
    expect(form.get_by_label(re.compile(rf"^MIG 1:0 · .* — held by {name}$"))).to_be_visible()
    tab.screenshot("create")

    tab.view("Containers")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))
    expect(row.locator(".status")).to_have_text("running")
    shown = row.locator(".ssh code").inner_text()
    [container] = server.api("GET", "/containers", "alice")[1]["containers"]
    assert shown == f"ssh -p {container['ssh-port']} alice@127.0.0.1"
    assert container["gpus"] == ["1:0"]
    words = shlex.split(shown)
    logged_in = subprocess.run(
        [
            "sshpass", "-e", words[0], "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no",
            "-o", "LogLevel=ERROR", *words[1:], "id -un",
        ],
        env={"SSHPASS": "web-pass-123", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (logged_in.returncode, logged_in.stdout) == (0, "alice\n"), logged_in.stderr
    tab.screenshot("containers")

    # GPU 1's card lists its MIG slices, with who holds each.
    tab.view("GPUs")
    card = page.locator("article:has(#gpu-1-title)")
    expect(card.locator(".holders")).to_have_text("MIG mode: given out only as its slices")
    expect(card.get_by_role("region", name="GPU 1 MIG slices").locator("li")).to_have_text(
        [
            re.compile(rf"^1:0 · 3g\.40gb · .* / 39\.3 GiB · held by {name} \(alice\)$"),
            re.compile(r"^1:1 · 2g\.20gb · .* · free$"),
            re.compile(r"^1:2 · 1g\.10gb · .* · free$"),
        ]
    )

    tab.view("Containers")
    row.get_by_role("button", name=f"Stop {name}", exact=True).click()
    expect(row.locator(".status")).to_have_text("exited", timeout=60_000)
    expect(row.get_by_role("button", name=f"Start {name}", exact=True)).to_be_visible()
    assert rig.docker("inspect", "--format", "{{.State.Status}}", name).strip() == "exited"

    # A stop behind the page's back shows too: started again, then stopped with docker.
    row.get_by_role("button", name=f"Start {name}", exact=True).click()
    expect(row.locator(".status")).to_have_text("running", timeout=60_000)
    rig.docker("stop", "--time", "1", name)
    expect(row.locator(".status")).to_have_text("exited", timeout=30_000)

    # Delete asks first; Cancel keeps it.
    row.get_by_role("button", name=f"Delete {name}", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Delete {name}?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(row).to_have_count(1)
    row.get_by_role("button", name=f"Delete {name}", exact=True).click()
    dialog.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0, timeout=30_000)
    assert rig.docker("ps", "--all", "--quiet", "--filter", f"name=^{name}$") == ""
    assert tab.loads == 1
    assert tab.foreign_requests(server.base) == []


def test_delete_of_a_running_container_offers_force(browser: Browser, server: Server) -> None:
    name = f"run-{uuid.uuid4().hex[:6]}"
    status, _ = server.api(
        "POST", "/containers/create", "alice",
        {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "alice", "password": "pw-123456"},
    )  # fmt: skip
    assert status == 201
    tab = signed_in(browser, server, "alice")
    page = tab.page
    tab.view("Containers")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))

    row.get_by_role("button", name=f"Delete {name}", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label(re.compile("^Force"))).to_be_visible()
    dialog.get_by_role("button", name="Delete").click()  # without force: the API's 409
    expect(page.get_by_role("alert")).to_contain_text("force")
    expect(row.locator(".status")).to_have_text("running")

    # Escape closes the dialog and deletes nothing, even with Force ticked.
    row.get_by_role("button", name=f"Delete {name}", exact=True).click()
    dialog.get_by_label(re.compile("^Force")).check()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(row.locator(".status")).to_have_text("running")
    assert [c["name"] for c in server.api("GET", "/containers", "alice")[1]["containers"]] == [name]

    row.get_by_role("button", name=f"Delete {name}", exact=True).click()
    dialog.get_by_label(re.compile("^Force")).check()
    dialog.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0, timeout=30_000)
    assert server.api("GET", "/containers", "alice")[1]["containers"] == []


def test_a_pull_shows_its_progress_to_the_end(
    browser: Browser, server: Server, registry_image: Callable[..., str], slow_registry: str,
    rig: Rig,
) -> None:  # fmt: skip
    # 8 MiB through a 2 MiB/s link: the layer downloads for seconds, whatever the machine's
    # load, so the bar has values between empty and full to show.
    reference = registry_image(size_mb=8).replace(REGISTRY_ADDR, slow_registry, 1)
    try:
        pull_in_the_page(browser, server, reference)
    finally:
        if rig.image_exists(reference):
            rig.docker("rmi", "--force", reference)


def pull_in_the_page(browser: Browser, server: Server, reference: str) -> None:
    tab = signed_in(browser, server, "alice")
    page = tab.page
    tab.view("New container")

    page.get_by_label("Or pull an image").fill(reference)
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Pull").click()
    bar = page.get_by_role("progressbar", name="Pull progress")
    expect(page.locator("#pull-status")).to_contain_text(
        f"Image '{reference}' pulled successfully.", timeout=120_000
    )
    assert bar.get_attribute("value") == bar.get_attribute("max") == "1"
    values = page.evaluate("window.progressValues")
    print("progress values", values)
    # Fed by the stream: it moved through values between empty and full, never back.
    assert any(0 < value < 1 for value in values), values
    assert values == sorted(values), values
    # The pulled image is now the one chosen for the form.
    expect(page.get_by_label("Image", exact=True)).to_have_value(reference)
    tab.screenshot("pull")

    page.get_by_label("Or pull an image").fill("127.0.0.1:1/nothing:here")
    page.get_by_role("button", name="Pull").click()
    expect(page.locator("#c-pull-error")).to_contain_text("registry")
    assert tab.foreign_requests(server.base) == []


def test_a_users_page_shows_only_their_own_containers(browser: Browser, server: Server) -> None:
    mine, theirs = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    for user, name, gpu in (("alice", mine, 0), ("bob", theirs, 2)):
        status, _ = server.api(
            "POST", "/containers/create", user,
            {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": user, "password": "pw-123456", "gpu_ids": [gpu]},
        )  # fmt: skip
        assert status == 201

    alice = signed_in(browser, server, "alice")
    alice.view("Containers")
    page = alice.page
    expect(page.get_by_role("rowheader", name=mine)).to_be_visible()
    expect(page.get_by_role("columnheader", name="Owner")).to_be_hidden()
    assert theirs not in page.content()
    alice.view("GPUs")
    expect(page.locator("article:has(#gpu-2-title) .holders")).to_have_text(
        "Held by another user's container"
    )
    assert theirs not in page.content()
    alice.view("New container")
    expect(page.get_by_label(re.compile(r"^GPU 2 · .* — held by another user$"))).to_be_visible(
        timeout=15_000
    )
    assert theirs not in page.content()

    admin = signed_in(browser, server, "admin")
    admin.view("Containers")
    for name, owner in ((mine, "alice"), (theirs, "bob")):
        row = admin.page.get_by_role("row").filter(
            has=admin.page.get_by_role("rowheader", name=name)
        )
        expect(row.get_by_role("cell", name=owner, exact=True)).to_be_visible()
    expect(admin.page.get_by_role("columnheader", name="Owner")).to_be_visible()
    admin.screenshot("containers-admin")

    # A command line of markup, on an admin's page: shown as text, run as nothing.
    admin.view("GPUs")
    card = admin.page.locator("article:has(#gpu-1-title)")
    expect(card.locator(".command")).to_have_text(HOSTILE_COMMAND, timeout=20_000)
    assert admin.page.locator('img[src="/x"]').count() == 0
    assert admin.page.evaluate("window.owned") is None
    assert alice.foreign_requests(server.base) == []
    assert admin.foreign_requests(server.base) == []


def test_a_services_link_opens_it_through_the_proxy_with_its_websocket(
    browser: Browser, server: Server
) -> None:
    """The page of a service in alice's container (tests/support/web_app.py) opens from the
    dashboard's link in a tab of its own, and its script's WebSocket echoes through the
    proxy; the tab holds neither the token nor a cookie its scripts can read."""
    name = f"web-{uuid.uuid4().hex[:6]}"
    status, answer = server.api(
        "POST", "/containers/create", "alice",
        {"name": name, "image": DEBIAN_WEBAPP_IMAGE, "user_name": "alice", "password": "pw-123456",
         "ports": [WEBAPP_PORT]},
    )  # fmt: skip
    assert status == 201, answer

    alice = signed_in(browser, server, "alice")
    alice.view("Containers")
    link = alice.page.get_by_role("link", name=f"Open port {WEBAPP_PORT} of {name}")
    assert link.get_attribute("href") == f"/containers/{name}/proxy/{WEBAPP_PORT}/"
    with alice.page.context.expect_page() as opened:
        link.click()
    service = opened.value
    expect(service.locator("#title")).to_have_text("test service", timeout=30_000)
    expect(service.locator("#echo")).to_have_text("echo: hello through the proxy")
    assert service.url == f"{server.base}/containers/{name}/proxy/{WEBAPP_PORT}/"
    assert service.evaluate("document.cookie") == ""  # HttpOnly: no script of the page reads it
    assert service.evaluate("sessionStorage.getItem('deepdockd.token')") is None
    assert service.evaluate("window.opener") is None
    assert alice.foreign_requests(server.base) == []

    # The token never went into a URL; without the session the same address is refused.
    assert all(server.tokens["alice"] not in url for url in alice.requests)
    stranger = browser.new_page()
    stranger.goto(service.url)
    assert json.loads(stranger.inner_text("body"))["error"]["code"] == "unauthorized"


def test_a_token_in_the_fragment_signs_in_and_leaves_the_address_bar(
    browser: Browser, server: Server
) -> None:
    tab = open_tab(browser, f"{server.base}/ui#token={server.tokens['bob']}")
    page = tab.page
    expect(page.get_by_text("bob", exact=True)).to_be_visible()
    assert server.tokens["bob"] not in page.url
    assert page.evaluate("sessionStorage.getItem('deepdockd.token')") == server.tokens["bob"]
    # A reload keeps the tab signed in; a new tab (another session) is not.
    page.reload()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    other = open_tab(browser, f"{server.base}/ui")
    expect(other.page.get_by_label("Token")).to_be_visible()
    # Signing out forgets it.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Token")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('deepdockd.token')") is None
    # Another person signs in at the same tab: one set of cards, theirs.
    page.get_by_label("Token").fill(server.tokens["alice"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("alice", exact=True)).to_be_visible()
    expect(page.get_by_role("article")).to_have_count(4)
    stamp = page.locator("article time").first
    expect(stamp).to_have_attribute("datetime", re.compile("."), timeout=20_000)
    expect(stamp).not_to_have_attribute(
        "datetime", stamp.get_attribute("datetime") or "", timeout=20_000
    )
    expect(page.get_by_role("article")).to_have_count(4)  # after a refresh too
    log = server.daemon.daemon.log.read_text()
    assert server.tokens["bob"] not in log


def test_with_docker_down_the_page_still_shows_the_gpus_and_says_why(
    browser: Browser, rig_daemon: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    env = {"LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent), "NVML_SIM_CONFIG": str(DEMO_GPUS)}
    daemon = rig_daemon("--docker-host", f"unix://{tmp_path}/no-docker.sock", env=env, auth=True)
    token = TokenStore(daemon.state_dir).add("alice", "user")

    tab = open_tab(browser, f"{daemon.base}/ui")
    page = tab.page
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("article")).to_have_count(4)
    expect(page.get_by_role("alert")).to_contain_text("Docker")
    tab.view("Host")
    expect(page.locator("#host")).to_contain_text("down: Docker is not reachable")
    tab.screenshot("docker-down")
    # Still signed in, with the token kept for the next load.
    page.reload()
    expect(page.locator("#host")).to_contain_text("down: Docker is not reachable")
    tab.view("GPUs")
    expect(page.get_by_role("article")).to_have_count(4)
    assert page.evaluate("sessionStorage.getItem('deepdockd.token')") == token
    assert tab.foreign_requests(daemon.base) == []


def test_it_fits_a_phone(browser: Browser, server: Server) -> None:
    name = f"phone-{uuid.uuid4().hex[:6]}"
    status, _ = server.api(
        "POST", "/containers/create", "alice",
        {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "alice", "password": "pw-123456", "gpu_ids": [0]},
    )  # fmt: skip
    assert status == 201
    tab = signed_in(browser, server, "alice", viewport=PHONE)
    page = tab.page
    expect(page.get_by_role("article")).to_have_count(4)
    # Nothing is wider than the screen: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    tab.screenshot("phone-gpus")
    tab.view("Containers")
    expect(page.get_by_role("button", name=f"Stop {name}", exact=True)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    tab.screenshot("phone-containers")
    tab.view("New container")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # Every control has a name a screen reader can read.
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((node) => node.offsetParent !== null)
            .filter((node) => !(node.labels && node.labels.length) && !node.getAttribute('aria-label')
                              && !node.textContent.trim())
            .map((node) => node.outerHTML)"""
    )
    assert unnamed == []
    assert json.dumps(tab.foreign_requests(server.base)) == "[]"


def test_commit_asks_for_a_tag_and_makes_an_image_of_the_users(
    browser: Browser, server: Server
) -> None:
    name = f"env-{uuid.uuid4().hex[:6]}"
    status, _ = server.api(
        "POST", "/containers/create", "alice",
        {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "alice", "password": "pw-123456"},
    )  # fmt: skip
    assert status == 201
    tab = signed_in(browser, server, "alice")
    page = tab.page
    tab.view("Containers")
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))
    tag = f"alice-{name}:1"

    page.once("dialog", lambda dialog: dialog.accept(tag))
    row.get_by_role("button", name=f"Commit {name}", exact=True).click()

    def tags_of(user: str) -> list[str]:
        return [t for i in server.api("GET", "/images", user)[1]["images"] for t in i["tags"]]

    deadline = time.monotonic() + 60
    while tag not in tags_of("alice"):
        assert time.monotonic() < deadline, "the commit's image never showed"
        time.sleep(0.2)
    assert tag not in tags_of("bob")
    expect(page.get_by_role("alert")).to_be_hidden()

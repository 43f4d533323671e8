"""The documentation: the spec and Swagger UI served from the installed package, rendered
by a real headless Chromium without a request leaving 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.support.api import Client
from tests.support.daemon import RunningDaemon

ROOT = Path(__file__).parents[1]
SPEC_TEXT = (ROOT / "openapi.yaml").read_bytes()
OPERATIONS = sum(
    1
    for item in yaml.safe_load(SPEC_TEXT)["paths"].values()
    for method in item
    if method in {"get", "post", "delete"}
)


async def test_the_spec_is_served_as_written_and_as_json(client: Client) -> None:
    as_yaml = await client.get("/openapi.yaml")
    as_json = await client.get("/openapi.json")

    assert as_yaml.status == 200
    assert as_yaml.content_type == "application/yaml"
    assert await as_yaml.read() == SPEC_TEXT
    assert await as_json.json() == yaml.safe_load(SPEC_TEXT)


async def test_the_docs_page_loads_only_its_own_files(client: Client) -> None:
    page = await (await client.get("/docs")).text()

    assert "http://" not in page
    assert "https://" not in page
    assert "validatorUrl: null" in page
    for path in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert path.startswith("/docs/")
        assert (await client.get(path)).status == 200
    missing = await client.get("/docs/index.html")
    assert missing.status == 404
    assert (await missing.json())["error"]["message"] == "no documentation file 'index.html'"


def test_chromium_renders_every_operation_offline(
    rig_daemon: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    daemon = rig_daemon()
    base = daemon.base
    netlog = tmp_path / "netlog.json"
    try:
        browser = subprocess.run(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={netlog}",
                "--virtual-time-budget=20000", "--dump-dom", f"{base}/docs",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        daemon.stop()

    assert browser.returncode == 0, browser.stderr[-2000:]
    dom = browser.stdout
    assert len(re.findall(r'class="opblock opblock-(?:get|post|delete)', dom)) == OPERATIONS
    for path in ("/containers/create", "/images/{image_ref}", "/metrics/gpus", "/healthz"):
        assert f'data-path="{path}"' in dom
    page_requests = _page_requests(netlog)
    assert f"{base}/openapi.json" in page_requests
    assert f"{base}/docs/swagger-ui-bundle.js" in page_requests
    assert [url for url in page_requests if not url.startswith(base + "/")] == []


def _page_requests(netlog: Path) -> list[str]:
    """The URLs that the page asked for. Chromium's own background traffic (update checks and
    the like, which its flags do not all silence) belongs to no page, so it has another
    network isolation key than the page's site."""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job
        and event.get("params", {}).get("network_isolation_key", "").startswith("http://127.0.0.1")
    ]

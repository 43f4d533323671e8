"""Docker unreachable or stuck: every route that needs it answers 503 docker_unavailable with a
message that says where Docker was looked for; the others go on answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.docker import Docker

from tests.support.api import ClientFactory

DOCKER_ROUTES = [
    ("GET", "/images", None),
    ("POST", "/images", {"repo_tag": "busybox:latest"}),
    ("DELETE", "/images/busybox:latest", None),
    ("GET", "/containers", None),
    ("GET", "/containers/x1", None),
    (
        "POST",
        "/containers/create",
        {"name": "x1", "image": "busybox", "user_name": "u1", "password": "p"},
    ),
    ("POST", "/containers/x1/start", None),
    ("POST", "/containers/x1/stop", None),
    ("POST", "/containers/x1/restart", None),
    ("DELETE", "/containers/x1", None),
]


async def test_docker_backed_routes_answer_503_and_the_others_answer(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    socket = f"unix://{tmp_path}/none.sock"
    client = await aiohttp_client(
        create_app(Config(docker_host=socket, auth=False, state_dir=tmp_path / "state"))
    )

    for method, path, body in DOCKER_ROUTES:
        response = await client.request(method, path, json=body)
        error = (await response.json())["error"]
        assert response.status == 503, (method, path, error)
        assert error["code"] == "docker_unavailable"
        assert error["message"].startswith(f"Docker is not reachable at {socket}: ")
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/metrics/gpus")).status == 200
    gpus = await client.get("/gpus")
    assert gpus.status == 200
    # The scrape goes on, and says Docker is down rather than counting no containers.
    scrape = await client.get("/metrics/prometheus")
    text = await scrape.text()
    assert scrape.status == 200, text
    assert "deepdockd_docker_up 0.0" in text.splitlines()
    assert "deepdockd_containers{" not in text


@pytest.fixture
async def stuck_docker(tmp_path: Path) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A Unix socket that takes every connection and reads the request, and never answers:
    a Docker engine that hangs. Yields its URL and the request lines it received."""
    received: list[bytes] = []
    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        received.append(await reader.readline())

    path = tmp_path / "stuck.sock"
    server = await asyncio.start_unix_server(hang, path=str(path))
    try:
        yield f"unix://{path}", received
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_stuck_docker_is_503_once_the_quick_call_limit_runs_out(
    aiohttp_client: ClientFactory, stuck_docker: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    url, received = stuck_docker
    docker = Docker(url, quick_call_timeout_s=0.5)
    client = await aiohttp_client(
        create_app(Config(docker_host=url, auth=False, state_dir=tmp_path), docker=docker)
    )

    started = time.monotonic()
    listed = await client.get("/containers")
    waited_s = time.monotonic() - started
    health = await client.get("/healthz")
    metrics = await client.get("/metrics")

    assert listed.status == 503
    assert (await listed.json())["error"] == {
        "code": "docker_unavailable",
        "message": f"Docker at {url} did not answer within 0.5 s",
        "details": {},
    }
    assert 0.5 <= waited_s < 5
    assert received[0].startswith(b"GET /")  # it asked, and Docker never answered
    assert health.status == 503
    assert (await health.json())["docker"][
        "error"
    ] == f"Docker at {url} did not answer within 0.5 s"
    assert metrics.status == 200  # the host's figures do not wait for Docker

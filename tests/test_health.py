"""/healthz against the rig's real dockerd: up, down, and back without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from deepdockd.api.app import create_app
from deepdockd.config import Config

from tests.support.api import ClientFactory
from tests.support.rig import Rig

Client = TestClient[web.Request, web.Application]


async def wait_for_status(client: Client, status: int, timeout_s: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get("/healthz")
        body: dict[str, object] = await response.json()
        if response.status == status or time.monotonic() > deadline:
            assert response.status == status, body
            return body
        await asyncio.sleep(0.2)


async def test_healthz_reports_dockers_version(client: Client, rig: Rig) -> None:
    response = await client.get("/healthz")

    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    server_version = rig.docker("version", "--format", "{{.Server.Version}}").strip()
    api_version = rig.docker("version", "--format", "{{.Server.APIVersion}}").strip()
    assert body["docker"] == {"ok": True, "version": server_version, "api_version": api_version}


async def test_healthz_is_503_naming_the_socket_when_docker_is_absent(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    socket = tmp_path / "no-docker.sock"
    client = await aiohttp_client(
        create_app(Config(docker_host=f"unix://{socket}", state_dir=tmp_path / "state"))
    )

    response = await client.get("/healthz")

    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert body["docker"]["ok"] is False
    assert f"Docker is not reachable at unix://{socket}" in body["docker"]["error"]


async def test_docker_going_away_and_coming_back_needs_no_restart(
    aiohttp_client: ClientFactory, config: Config, rig: Rig
) -> None:
    running = await aiohttp_client(create_app(config))
    assert (await running.get("/healthz")).status == 200

    await asyncio.to_thread(rig.stop_docker)
    try:
        body = await wait_for_status(running, 503)
        assert "Docker is not reachable" in str(body["docker"])
        # A daemon that starts while Docker is down starts anyway.
        started_without_docker = await aiohttp_client(create_app(config))
        await wait_for_status(started_without_docker, 503)
    finally:
        await asyncio.to_thread(rig.start_docker)

    await wait_for_status(running, 200)
    await wait_for_status(started_without_docker, 200)

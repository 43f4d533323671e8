"""The rig's Docker Engine is the one the run claims ($DEEPDOCKD_TEST_ENGINE): "passes on
Docker 26" must never have run on 20.10 (tests/support/engine.py)."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.rig import Rig

Client = TestClient[web.Request, web.Application]


async def test_deepdockd_sees_the_engine_the_run_claims(client: Client, rig: Rig) -> None:
    response = await client.get("/healthz")

    assert response.status == 200
    docker = (await response.json())["docker"]
    assert docker["version"].split(".")[0] == rig.engine.major_version, docker
    assert docker["api_version"] == rig.engine.api_version, docker


def test_each_engine_keeps_its_images_in_its_own_data_root(rig: Rig) -> None:
    info = json.loads(rig.docker("info", "--format", "{{json .}}"))

    assert info["DockerRootDir"] == str(rig.data_root)

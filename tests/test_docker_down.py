"""Docker unreachable: every route that needs it answers 503 docker_unavailable with a message
that says where Docker was looked for; the others go on answering."""

from __future__ import annotations

from pathlib import Path

from deepdockd.app import create_app
from deepdockd.config import Config

from conftest import ClientFactory

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
    client = await aiohttp_client(create_app(Config(docker_host=socket, auth=False)))

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

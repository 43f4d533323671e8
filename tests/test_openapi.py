"""openapi.yaml and the router describe the same API, and the checker that holds every test's
answers to the spec (tests/support/spec.py) does catch an answer outside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from deepdockd.api.app import create_app
from deepdockd.config import Config

from tests.support.spec import answer_problem, ndjson_problem, response_checker, tee_streams

SPEC = yaml.safe_load((Path(__file__).parents[1] / "openapi.yaml").read_text())
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def router_operations(app: web.Application) -> list[tuple[str, str]]:
    operations = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        operations.append((route.method.lower(), str(path)))
    return operations


def spec_operations() -> list[tuple[str, str]]:
    return [
        (method, path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in METHODS
    ]


def test_router_and_spec_list_the_same_operations_in_the_same_order() -> None:
    assert router_operations(create_app(Config())) == spec_operations()


def test_spec_is_openapi_3_0_3_with_one_error_schema() -> None:
    assert SPEC["openapi"] == "3.0.3"
    assert set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["required"]) == {
        "code",
        "message",
        "details",
    }


def test_spec_is_valid() -> None:
    validate(SPEC)


# --- the checker the other tests lean on can fail ---

PROGRESS = b'{"status": "Downloading", "layer": "0a1b2c", "current": 10, "total": 20}\n'
RESULT = b'{"message": "Image \'x:1\' pulled successfully.", "id": "0a1b2c3d4e5f", "tags": ["x:1"], "size_mb": 1.5}\n'
ERROR = b'{"error": {"code": "registry_unreachable", "message": "no route", "details": {}}}\n'


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        (PROGRESS + RESULT, None),
        (PROGRESS + PROGRESS + ERROR, None),
        (PROGRESS, "line 1 is not a PullResult or Error"),
        (b"", "an empty stream"),
        (RESULT + PROGRESS, "line 1 is not a PullProgress"),
        (PROGRESS + b"not json\n" + RESULT, "line 2 is not JSON"),
        (
            PROGRESS + b'{"status": "Done", "layer": null}\n' + RESULT,
            "line 2 is not a PullProgress",
        ),
        (PROGRESS + b'{"error": "a string"}\n', "line 2 is not a PullResult or Error"),
    ],
)
def test_the_stream_check_holds_every_line(stream: bytes, problem: str | None) -> None:
    found = ndjson_problem(stream)

    assert (found or "").startswith(problem or ""), found
    assert (found is None) == (problem is None)


def test_a_stream_the_client_left_may_lack_its_end_but_not_its_shape() -> None:
    assert ndjson_problem(PROGRESS + PROGRESS[:20], complete=False) is None
    assert ndjson_problem(b"[]\n" + PROGRESS[:20], complete=False) == (
        "line 1 is not a PullProgress: '[]' {'PullProgress': [\"[] is not of type 'object'\"]}"
    )


def test_an_answer_read_over_a_socket_is_held_to_the_spec() -> None:
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    good = json.dumps({"containers": []}).encode()
    wrong = json.dumps({"containers": [{"id": 1}]}).encode()
    undocumented = json.dumps({"error": {"code": "x", "message": "y", "details": {}}}).encode()

    assert answer_problem("GET", "http://d/containers", 200, json_type, good) is None
    assert "id" in (answer_problem("GET", "http://d/containers", 200, json_type, wrong) or "")
    assert answer_problem("GET", "http://d/containers", 418, json_type, undocumented)
    streamed = {"Content-Type": "application/x-ndjson"}
    assert answer_problem("POST", "http://d/images", 200, streamed, PROGRESS)


async def test_the_middleware_records_answers_outside_the_spec() -> None:
    """A test-only app whose routes answer outside the spec: the checker the shared fixture
    installs must record both, the whole answer and the streamed one."""
    failures: list[str] = []

    async def wrong_list(request: web.Request) -> web.Response:
        return web.json_response({"containers": "none"})

    async def unfinished_pull(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(PROGRESS)
        await response.write_eof()
        return response

    app = web.Application(middlewares=[response_checker(failures)])
    app.on_response_prepare.append(tee_streams)
    app.router.add_get("/containers", wrong_list)
    app.router.add_post("/images", unfinished_pull)
    client = await raw_client(app)
    try:
        await (await client.get("/containers")).read()
        await (await client.post("/images", json={"repo_tag": "x:1"})).read()
    finally:
        await client.close()

    assert [f.split(":")[0] for f in failures] == [
        "GET /containers -> 200",
        "POST /images -> 200",
    ]
    assert "line 1 is not a PullResult or Error" in failures[1]


async def raw_client(app: web.Application) -> TestClient[web.Request, web.Application]:
    """A client without the shared fixture's own checker (whose failures would fail this
    test, which is about the checker)."""
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    return client

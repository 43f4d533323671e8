"""openapi.yaml and the router describe the same API, and the checker that holds every test's
answers to the spec (tests/support/spec.py) does catch an answer outside it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from deepdockd.api.app import create_app
from deepdockd.config import Config

from tests.support.checking_relay import checking_relay, exchange_problems
from tests.support.spec import (
    STRICT_DOCUMENT,
    answer_problem,
    documented_error_codes,
    ndjson_problem,
    raisable_error_codes,
    response_checker,
    sse_problem,
    tee_streams,
)

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

    async def leaking_events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(OPENING + frame(1, "died", change("died", exit_code=137)))
        await response.write_eof()
        return response

    app = web.Application(middlewares=[response_checker(failures)])
    app.on_response_prepare.append(tee_streams)
    app.router.add_get("/containers", wrong_list)
    app.router.add_post("/images", unfinished_pull)
    app.router.add_get("/events", leaking_events)
    client = await raw_client(app)
    try:
        await (await client.get("/containers")).read()
        await (await client.post("/images", json={"repo_tag": "x:1"})).read()
        await (await client.get("/events")).read()
    finally:
        await client.close()

    assert [f.split(":")[0] for f in failures] == [
        "GET /containers -> 200",
        "POST /images -> 200",
        "GET /events -> 200",
    ]
    assert "line 1 is not a PullResult or Error" in failures[1]
    assert "frame 2's data is not an Event" in failures[2]
    assert "'exit_code' was unexpected" in failures[2]


async def raw_client(app: web.Application) -> TestClient[web.Request, web.Application]:
    """A client without the shared fixture's own checker (whose failures would fail this
    test, which is about the checker)."""
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    return client


# --- the strict copy: closed objects, error codes per status, event frames ---


def test_the_documented_error_codes_are_the_codes_deepdockd_can_raise() -> None:
    """docs/api.md's Errors table (which the strict copy's enums come from) and the codes of
    deepdockd/ (every raised ApiError subclass by its status, every literal error_response):
    neither may drift from the other."""
    assert documented_error_codes() == raisable_error_codes()


def test_the_strict_copy_closes_every_response_object_and_keeps_the_served_spec_open() -> None:
    strict = STRICT_DOCUMENT["components"]["schemas"]
    assert strict["Container"]["additionalProperties"] is False
    assert strict["Event"]["additionalProperties"] is False
    assert strict["Error"]["properties"]["error"]["additionalProperties"] is False
    assert strict["Error"]["properties"]["error"]["properties"]["details"]["additionalProperties"]
    assert strict["ContainerCreated"]["properties"]["ports"]["additionalProperties"] == {
        "type": "integer"
    }
    assert strict["Error404"]["properties"]["error"]["properties"]["code"]["enum"] == ["not_found"]
    assert "additionalProperties" not in SPEC["components"]["schemas"]["Container"]
    assert (
        "enum"
        not in SPEC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    )


JSON_TYPE = {"Content-Type": "application/json; charset=utf-8"}


def error_body(code: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": "m", "details": {}}}).encode()


def test_a_leaked_key_fails_the_strict_check() -> None:
    leaked = {"message": "container created", "id": "1bb0e524d7f0", "name": "c",
              "ssh-port": 22000, "ports": {}, "expires_at": None, "password": "x"}  # fmt: skip
    problem = answer_problem(
        "POST", "http://d/containers/create", 201, JSON_TYPE, json.dumps(leaked).encode()
    )
    assert "Additional properties are not allowed ('password' was unexpected)" in (problem or "")
    error = {"error": {"code": "not_found", "message": "m", "details": {}, "trace": "..."}}
    assert answer_problem(
        "GET", "http://d/containers/x", 404, JSON_TYPE, json.dumps(error).encode()
    )


@pytest.mark.parametrize(
    ("status", "code", "allowed"),
    [
        (404, "not_found", True),
        (404, "conflict", False),
        (409, "gpu_busy", True),
        (503, "docker_unavailable", True),
        (503, "docker_error", False),
        (502, "docker_error", True),
        (401, "forbidden", False),
    ],
)
def test_an_error_code_is_held_to_its_status(status: int, code: str, allowed: bool) -> None:
    url = "http://d/containers/x/start"
    problem = answer_problem("POST", url, status, JSON_TYPE, error_body(code))
    assert (problem is None) == allowed, problem
    if not allowed:
        assert f"'{code}' is not one of" in (problem or "")


def test_every_error_answer_of_the_spec_has_its_codes() -> None:
    """Each status the spec answers with an Error carries an enum in the strict copy."""
    for item in STRICT_DOCUMENT["paths"].values():
        for method in METHODS & set(item):
            for status, answer in item[method]["responses"].items():
                for media in answer.get("content", {}).values():
                    assert media.get("schema") != {"$ref": "#/components/schemas/Error"}, status


CONTAINER: dict[str, object] = {
    "id": "4f2a9c1d7e3b", "name": "alice-train", "status": "exited", "image": ["x:1"],
    "image_id": "sha256:00", "created": "2025-12-01T19:02:30.437000000Z", "ssh-port": None,
    "gpus": [], "gpu_uuids": [], "owner": "alice", "ssh_user": "alice", "ssh_host_keys": [],
    "ports": {}, "memory_mb": None, "cpus": None, "shm_size_mb": None, "home_volume": None,
    "gpu_memory_used_mib": None, "gpu_utilization": None, "expires_at": None,
    "stopped_reason": None, "idle_reclaim": True, "disk_used_mb": None,
    "cpu_percent": None, "memory_used_mb": None, "memory_limit_mb": None, "pids": None,
}  # fmt: skip


def frame(event_id: int, event: str, data: object) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


def change(kind: str, **extra: object) -> dict[str, object]:
    return {"type": kind, "container": CONTAINER, "time": "2025-12-01T19:02:30+00:00", **extra}


OPENING = b": deepdockd events\n\n"


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        (OPENING + frame(1, "stopped", change("stopped")) + b": heartbeat\n\n", None),
        (b"", None),
        (
            OPENING + frame(1, "stopped", change("stopped", secret=1)),
            "frame 2's data is not an Event",
        ),
        (OPENING + frame(1, "stopped", {"type": "stopped"}), "frame 2's data is not an Event"),
        (OPENING + frame(1, "exploded", change("exploded")), "frame 2's data is not an Event"),
        (frame(1, "started", change("stopped")), "frame 1's event 'started' is not its data's"),
        (frame(2, "stopped", change("stopped")) + frame(2, "died", change("died")), "frame 2's id"),
        (b"id: 1\nevent: stopped\n\n", "frame 1 is not one id, one event and one data"),
        (b"retry: 10\n\n", "frame 1 has a line that is no field of ours"),
        (b"id: 1\nevent: stopped\ndata: {nope}\n\n", "frame 1's data is not JSON"),
        (OPENING + b"id: 1\nevent: st", "the stream ends inside a frame"),
    ],
)
def test_the_event_stream_check_holds_every_frame(stream: bytes, problem: str | None) -> None:
    found = sse_problem(stream)

    assert (found or "").startswith(problem or ""), found
    assert (found is None) == (problem is None)


def test_an_event_stream_read_over_a_socket_is_held_to_event() -> None:
    sse = {"Content-Type": "text/event-stream"}
    good = OPENING + frame(7, "created", change("created"))
    assert answer_problem("GET", "http://d/events", 200, sse, good) is None
    bad = OPENING + frame(7, "created", change("created", owner="bob"))
    assert "not an Event" in (answer_problem("GET", "http://d/events", 200, sse, bad) or "")
    cut = good + b"id: 8\nevent: cre"
    assert answer_problem("GET", "http://d/events", 200, sse, cut, complete=False) is None
    assert answer_problem("GET", "http://d/events", 200, sse, cut)


def test_the_checking_relay_passes_every_answer_on_and_catches_one_outside_the_spec() -> None:
    """The relay the client's tests run deepdockd behind: answers pass through untouched,
    a whole one and a streamed one on one keep-alive connection, and one outside the spec
    fails when the relay closes."""

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"containers": []})

    async def leaking_list(request: web.Request) -> web.Response:
        return web.json_response({"volumes": [], "secret": "s3cret"})

    async def pull(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(PROGRESS)
        await response.write(RESULT)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/containers", listing)
    app.router.add_get("/volumes", leaking_list)
    app.router.add_post("/images", pull)
    with served(app) as base:
        with checking_relay(base) as relay, httpx.Client(base_url=relay.url) as client:
            assert client.get("/containers").json() == {"containers": []}
            assert client.post("/images", json={"repo_tag": "x:1"}).content == PROGRESS + RESULT
        assert relay.answers_checked == 2
        with pytest.raises(AssertionError) as caught:
            list_both_through_a_relay(base)
    assert "GET /volumes -> 200" in str(caught.value)
    assert "'secret' was unexpected" in str(caught.value)
    assert "GET /containers" not in str(caught.value)


def list_both_through_a_relay(base: str) -> None:
    with checking_relay(base) as relay, httpx.Client(base_url=relay.url) as client:
        client.get("/containers")
        assert client.get("/volumes").json()["secret"] == "s3cret"  # passed on untouched


@contextlib.contextmanager
def served(app: web.Application) -> Iterator[str]:
    """``app`` on a free loopback port, in a thread of its own; yields its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    base = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_raw_sockets_exchange_is_read_back_and_held_to_the_spec() -> None:
    """What a test that speaks HTTP by hand sent and received: each answer, chunked or not,
    whole or cut where the test stopped reading."""
    sent = b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n"

    def chunked(*chunks: bytes) -> bytes:
        return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)

    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    good = head + chunked(OPENING, frame(3, "died", change("died")))
    assert exchange_problems("http://d", sent, good) == []
    assert exchange_problems("http://d", sent, good + chunked(b"id: 4\nev")) == []  # cut
    bad = head + chunked(OPENING, frame(3, "died", change("died", signal=9)))
    [problem] = exchange_problems("http://d", sent, bad)
    assert problem.startswith("GET /events -> 200: frame 2's data is not an Event")
    ended = head + chunked(OPENING, b"id: 4\nev") + b"0\r\n\r\n"
    assert "the stream ends inside a frame" in exchange_problems("http://d", sent, ended)[0]

    asked = b"DELETE /containers/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    wrong = error_body("gpu_busy")
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
    answer += b"Content-Length: %d\r\n\r\n%s" % (len(wrong), wrong)
    [problem] = exchange_problems("http://d", asked, answer)
    assert "'gpu_busy' is not one of ['not_found']" in problem


def test_an_error_on_no_route_still_has_its_shape_and_code() -> None:
    nope = "http://d/nope"
    assert answer_problem("GET", nope, 404, JSON_TYPE, error_body("not_found")) is None
    assert "is not one of" in (
        answer_problem("GET", nope, 404, JSON_TYPE, error_body("gone")) or ""
    )
    assert answer_problem("GET", nope, 404, JSON_TYPE, b'{"detail": "Not Found"}')
    assert answer_problem("GET", nope, 418, JSON_TYPE, error_body("teapot"))


async def test_a_frame_outside_the_spec_is_recorded_while_its_stream_is_still_open() -> None:
    """An event stream often outlives its test's checks (the server ends it afterwards): each
    frame is checked as it is written."""
    failures: list[str] = []
    release = asyncio.Event()

    async def open_events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(OPENING)
        await response.write(frame(1, "started", change("started")))
        await response.write(frame(2, "stopped", change("stopped", secret="s")))
        await release.wait()
        return response

    app = web.Application(middlewares=[response_checker(failures)])
    app.on_response_prepare.append(tee_streams)
    app.router.add_get("/events", open_events)
    client = await raw_client(app)
    try:
        response = await client.get("/events")
        while b"secret" not in await response.content.readline():
            pass
        assert len(failures) == 1
        assert failures[0].startswith("GET /events -> 200: frame 1's data is not an Event")
        assert "'secret' was unexpected" in failures[0]
    finally:
        release.set()
        await client.close()
    assert len(failures) == 1  # once, not again when it ends

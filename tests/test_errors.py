"""Every failure leaves the daemon as one JSON error shape."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import web

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.errors import Conflict

from tests.support.api import ClientFactory


async def test_unknown_route_is_a_json_404(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(Config(auth=False, state_dir=tmp_path)))

    response = await client.get("/no/such/route")

    assert response.status == 404
    assert await response.json() == {
        "error": {"code": "not_found", "message": "no route for GET /no/such/route", "details": {}}
    }


async def test_wrong_method_is_a_json_405_with_allow(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(Config(auth=False, state_dir=tmp_path)))

    response = await client.post("/healthz")

    assert response.status == 405
    assert response.headers["Allow"] == "GET"
    body = await response.json()
    assert body["error"]["code"] == "method_not_allowed"
    assert body["error"]["message"] == "POST is not allowed on /healthz; allowed: GET"


# The two faults below cannot be provoked through the real routes on demand, so the test adds
# a route of its own that raises them; the middleware under test is the real one.


async def test_project_error_keeps_its_status_and_details(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    async def taken(request: web.Request) -> web.Response:
        raise Conflict("name 'x' is taken", details={"name": "x"})

    app = create_app(Config(auth=False, state_dir=tmp_path))
    app.router.add_get("/test-conflict", taken)
    client = await aiohttp_client(app)

    response = await client.get("/test-conflict")

    assert response.status == 409
    assert await response.json() == {
        "error": {"code": "conflict", "message": "name 'x' is taken", "details": {"name": "x"}}
    }


async def test_unexpected_error_is_logged_and_answered_without_internals(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise KeyError("secret-internal-detail")

    app = create_app(Config(auth=False, state_dir=tmp_path))
    app.router.add_get("/test-broken", broken)
    client = await aiohttp_client(app)

    with caplog.at_level(logging.ERROR):
        response = await client.get("/test-broken")

    assert response.status == 500
    text = await response.text()
    assert "secret-internal-detail" not in text
    assert (await response.json())["error"]["code"] == "internal_error"
    [record] = [r for r in caplog.records if r.name == "deepdockd.api.middlewares"]
    assert "GET /test-broken" in record.getMessage()
    assert record.exc_info is not None
    assert "secret-internal-detail" in caplog.text

"""openapi.yaml and the router describe the same API."""

from __future__ import annotations

from pathlib import Path

import yaml
from aiohttp import web
from openapi_spec_validator import validate

from deepdockd.app import create_app
from deepdockd.config import Config

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

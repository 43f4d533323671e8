"""Files: the OpenAPI spec and Swagger UI (api/openapi.py), and the dashboard
(dashboard/assets.py). Each serves only the names it knows, so no name reaches the file
system."""

from __future__ import annotations

import asyncio

from aiohttp import web

from deepdockd.api import openapi
from deepdockd.dashboard import assets
from deepdockd.errors import NotFound


async def openapi_yaml(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(openapi.spec_yaml)
    return web.Response(body=body, content_type="application/yaml")


async def openapi_json(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(openapi.spec_json)
    return web.Response(body=body, content_type="application/json")


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=openapi.PAGE, content_type="text/html")


async def docs_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["file"]
    path = openapi.swagger_file(name)
    if path is None:
        raise NotFound(f"no documentation file {name!r}")
    return web.FileResponse(path)


async def dashboard_page(request: web.Request) -> web.Response:
    return await _dashboard_answer(request, assets.PAGE)


async def dashboard_file(request: web.Request) -> web.Response:
    return await _dashboard_answer(request, request.match_info["file"])


async def _dashboard_answer(request: web.Request, name: str) -> web.Response:
    asset = await asyncio.to_thread(assets.asset, name)
    if asset is None:
        raise NotFound(f"no dashboard file {name!r}")
    headers = {**assets.SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})

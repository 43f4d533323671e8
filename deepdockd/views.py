"""Request handlers: each reads its input, calls one service, and answers JSON."""

from __future__ import annotations

from aiohttp import web

from deepdockd import __version__
from deepdockd.docker import DockerUnavailable
from deepdockd.typedefs import DOCKER


async def healthz(request: web.Request) -> web.Response:
    """200 while Docker answers, 503 with the reason while it does not."""
    try:
        version = await request.app[DOCKER].version()
    except DockerUnavailable as exc:
        body = {
            "status": "unavailable",
            "version": __version__,
            "docker": {"ok": False, "error": exc.message},
        }
        return web.json_response(body, status=503)
    docker = {"ok": True, "version": version.version, "api_version": version.api_version}
    return web.json_response({"status": "ok", "version": __version__, "docker": docker})

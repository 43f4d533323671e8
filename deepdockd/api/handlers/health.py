"""GET /healthz: is Docker there, are the GPUs, which SSH server goes into containers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from deepdockd import __version__
from deepdockd.api.keys import CONFIG, DOCKER, GPUS
from deepdockd.containers.ssh_server import bundled_server
from deepdockd.docker import DockerUnavailable


async def healthz(request: web.Request) -> web.Response:
    """200 while Docker answers, 503 with the reason while it does not. No GPUs (no NVML)
    is a normal state: ``gpus`` says why, and the status stays 200."""
    sampler = request.app[GPUS]
    gpus: dict[str, Any] = {"ok": sampler.available, "count": len(sampler.gpus)}
    if sampler.available:
        gpus["driver_version"] = sampler.driver_version
    else:
        gpus["error"] = sampler.unavailable_reason
    bundle = bundled_server()
    body: dict[str, Any] = {
        "status": "ok",
        "version": __version__,
        "docker": {"ok": True},
        "gpus": gpus,
        "ssh_server": {
            "setting": request.app[CONFIG].ssh_server,
            "bundled": bundle.version if bundle else None,
        },
    }
    try:
        version = await request.app[DOCKER].version()
    except DockerUnavailable as exc:
        body.update(status="unavailable", docker={"ok": False, "error": exc.message})
        return web.json_response(body, status=503)
    body["docker"].update(version=version.version, api_version=version.api_version)
    return web.json_response(body)

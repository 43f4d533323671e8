"""The application factory: builds the app, does no I/O."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from deepdockd.config import Config
from deepdockd.docker import Docker
from deepdockd.images import ImageService
from deepdockd.middlewares import error_middleware
from deepdockd.routes import setup_routes
from deepdockd.typedefs import CONFIG, DOCKER, IMAGES

# Request bodies here are small JSON documents.
CLIENT_MAX_SIZE = 1024 * 1024


def create_app(config: Config, *, docker: Docker | None = None) -> web.Application:
    """``docker`` is a seam for tests; None means a client for ``config.docker_host``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[CONFIG] = config
    app[DOCKER] = docker if docker is not None else Docker(config.docker_host)
    app[IMAGES] = ImageService(app[DOCKER])
    app.cleanup_ctx.append(_docker_client)
    setup_routes(app)
    return app


async def _docker_client(app: web.Application) -> AsyncIterator[None]:
    docker = app[DOCKER]
    await docker.open()
    yield
    await app[IMAGES].close()
    await docker.close()

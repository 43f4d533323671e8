"""Every route of the API in one table, in the order of openapi.yaml (a test holds the two
equal)."""

from __future__ import annotations

from aiohttp import web

from deepdockd import views

ROUTES = [
    web.get("/healthz", views.healthz, allow_head=False),
]


def setup_routes(app: web.Application) -> None:
    app.add_routes(ROUTES)

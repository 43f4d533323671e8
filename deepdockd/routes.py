"""Every route of the API in one table, in the order of openapi.yaml (a test holds the two
equal)."""

from __future__ import annotations

from aiohttp import web

from deepdockd import views

ROUTES = [
    web.get("/images", views.list_images, allow_head=False),
    web.post("/images", views.pull_image),
    web.delete("/images/{image_ref:.+}", views.delete_image),
    web.get("/containers", views.list_containers, allow_head=False),
    web.post("/containers/create", views.create_container),
    web.get("/containers/{name}", views.get_container, allow_head=False),
    web.delete("/containers/{name}", views.delete_container),
    web.post("/containers/{name}/start", views.start_container),
    web.post("/containers/{name}/stop", views.stop_container),
    web.post("/containers/{name}/restart", views.restart_container),
    web.post("/containers/{name}/extend", views.extend_lease),
    web.get("/containers/{name}/logs", views.container_logs, allow_head=False),
    web.get("/events", views.container_events, allow_head=False),
    web.get("/volumes", views.list_volumes, allow_head=False),
    web.delete("/volumes/{name}", views.delete_volume),
    web.get("/quota", views.get_quota, allow_head=False),
    web.get("/metrics", views.host_metrics, allow_head=False),
    web.get("/metrics/gpus", views.gpu_metrics, allow_head=False),
    web.get("/metrics/prometheus", views.prometheus_metrics, allow_head=False),
    web.get("/gpus", views.list_gpus, allow_head=False),
    web.get("/healthz", views.healthz, allow_head=False),
    web.get("/openapi.yaml", views.openapi_yaml, allow_head=False),
    web.get("/openapi.json", views.openapi_json, allow_head=False),
    web.get("/docs", views.docs_page, allow_head=False),
    web.get("/docs/{file}", views.docs_file, allow_head=False),
    web.get("/ui", views.dashboard_page, allow_head=False),
    web.get("/ui/{file}", views.dashboard_file, allow_head=False),
]


def setup_routes(app: web.Application) -> None:
    app.add_routes(ROUTES)

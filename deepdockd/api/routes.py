"""Every route of the API in one table, in the order of openapi.yaml (a test holds the two
equal)."""

from __future__ import annotations

from aiohttp import web

from deepdockd.api.auth import PROXY_PATH
from deepdockd.api.handlers import (
    container_stats,
    containers,
    gpus,
    health,
    images,
    proxy,
    static,
    streams,
    tokens,
    usage,
)

# The proxy's route, with the patterns of its parameters.
_PROXY = PROXY_PATH.replace("{port}", r"{port:[1-9][0-9]{0,4}}").replace("{path}", "{path:.*}")

# The methods the proxy relays (a WebSocket is a GET).
PROXY_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

ROUTES = [
    web.get("/images", images.list_images, allow_head=False),
    web.post("/images", images.pull_image),
    web.delete("/images/{image_ref:.+}", images.delete_image),
    web.get("/containers", containers.list_containers, allow_head=False),
    web.post("/containers/create", containers.create_container),
    web.get("/containers/{name}", containers.get_container, allow_head=False),
    web.delete("/containers/{name}", containers.delete_container),
    web.post("/containers/{name}/start", containers.start_container),
    web.post("/containers/{name}/stop", containers.stop_container),
    web.post("/containers/{name}/restart", containers.restart_container),
    web.post("/containers/{name}/pause", containers.pause_container),
    web.post("/containers/{name}/unpause", containers.unpause_container),
    web.post("/containers/{name}/commit", containers.commit_container),
    web.post("/containers/{name}/extend", containers.extend_lease),
    web.get("/containers/{name}/logs", streams.container_logs, allow_head=False),
    web.get("/containers/{name}/stats", container_stats.container_stats, allow_head=False),
    web.post("/containers/{name}/proxy-session", proxy.open_session),
    web.get(_PROXY, proxy.relay, allow_head=False),
    *(web.route(method, _PROXY, proxy.relay) for method in PROXY_METHODS[1:]),
    web.get("/events", streams.container_events, allow_head=False),
    web.get("/volumes", containers.list_volumes, allow_head=False),
    web.delete("/volumes/{name}", containers.delete_volume),
    web.get("/quota", containers.get_quota, allow_head=False),
    web.get("/metrics", gpus.host_metrics, allow_head=False),
    web.get("/metrics/gpus", gpus.gpu_metrics, allow_head=False),
    web.get("/metrics/prometheus", gpus.prometheus_metrics, allow_head=False),
    web.get("/gpus", gpus.list_gpus, allow_head=False),
    web.get("/usage", usage.get_usage, allow_head=False),
    web.get("/tokens", tokens.list_tokens, allow_head=False),
    web.post("/tokens", tokens.mint_token),
    web.delete("/tokens/{token_id}", tokens.revoke_token),
    web.get("/healthz", health.healthz, allow_head=False),
    web.get("/openapi.yaml", static.openapi_yaml, allow_head=False),
    web.get("/openapi.json", static.openapi_json, allow_head=False),
    web.get("/docs", static.docs_page, allow_head=False),
    web.get("/docs/{file}", static.docs_file, allow_head=False),
    web.get("/ui", static.dashboard_page, allow_head=False),
    web.get("/ui/{file}", static.dashboard_file, allow_head=False),
]


def setup_routes(app: web.Application) -> None:
    app.add_routes(ROUTES)

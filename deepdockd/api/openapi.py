"""The API's documentation, served from files installed with the package: the hand-written
OpenAPI spec, and Swagger UI from the swagger-ui-bundle package (no CDN: a GPU server is
often offline)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import yaml
from swagger_ui_bundle import swagger_ui_path

# The Swagger UI files the page loads; nothing else of the bundle is served.
SWAGGER_FILES = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}
)

# validatorUrl null: the default validator is an external service.
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>deepdockd API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      validatorUrl: null,
      deepLinking: true,
      layout: "BaseLayout",
    });
  </script>
</body>
</html>
"""


@functools.cache
def spec_yaml() -> bytes:
    """Blocking on the first call (reads the package's file)."""
    return resources.files("deepdockd").joinpath("openapi.yaml").read_bytes()


@functools.cache
def spec_json() -> bytes:
    return json.dumps(yaml.safe_load(spec_yaml())).encode()


def swagger_file(name: str) -> Path | None:
    """The bundle's file of that name, or None for any other name."""
    return Path(swagger_ui_path) / name if name in SWAGGER_FILES else None

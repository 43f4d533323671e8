"""openapi.yaml as a contract: a middleware that checks every answer of an app under test
against it (openapi-core), so that a response that drifts from the spec fails the test that
saw it."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from openapi_core import OpenAPI
from openapi_core.contrib.aiohttp import AIOHTTPOpenAPIWebRequest, AIOHTTPOpenAPIWebResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound

SPEC_PATH = Path(__file__).parents[1] / "openapi.yaml"
SPEC = OpenAPI.from_file_path(str(SPEC_PATH))


def response_checker(failures: list[str]) -> Middleware:
    """A middleware, outermost, that records each answer that breaks the spec."""

    @web.middleware
    async def check_response(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response):  # streamed answers are checked by their tests
            problem = spec_problem(request, response)
            if problem:
                failures.append(
                    f"{request.method} {request.path_qs} -> {response.status}: {problem}"
                )
        return response

    return check_response


def spec_problem(request: web.Request, response: web.Response) -> str | None:
    try:
        SPEC.validate_response(
            AIOHTTPOpenAPIWebRequest(request, body=None), AIOHTTPOpenAPIWebResponse(response)
        )
    except (PathNotFound, OperationNotFound):
        return None  # no route: the router-equals-spec test guards those
    except Exception as exc:
        cause = exc.__cause__
        details = getattr(cause, "schema_errors", None) or [cause] if cause else []
        return f"{exc!r} {[str(d)[:500] for d in details]}"
    return None

"""openapi.yaml as a contract: every answer a test sees is checked against it (openapi-core),
so that a response that drifts from the spec fails the test that saw it.

Three doors lead here, one for each way a test talks to deepdockd:

- ``response_checker``, a middleware on apps under pytest-aiohttp's client: whole answers as
  they leave the handler, and streamed answers line by line as they are written;
- ``answer_problem``, for answers read over a real socket from deepdockd running as a process
  (``support.daemon.http_request``);
- ``ndjson_problem``, for a stream of NDJSON lines, whichever door it came through.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from openapi_core import OpenAPI
from openapi_core.contrib.aiohttp import AIOHTTPOpenAPIWebRequest, AIOHTTPOpenAPIWebResponse
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from werkzeug.datastructures import Headers, ImmutableMultiDict

from deepdockd.api.auth import PROXY_PATH

SPEC_PATH = Path(__file__).parents[2] / "openapi.yaml"
SPEC = OpenAPI.from_file_path(str(SPEC_PATH))
NDJSON = "application/x-ndjson"

_DOCUMENT = yaml.safe_load(SPEC_PATH.read_text())
_REGISTRY: Registry[Any] = Registry().with_resource(
    "openapi.yaml", Resource.from_contents(_DOCUMENT, default_specification=DRAFT4)
)
# What a streamed answer is made of: events, then exactly one last line that ends it.
_STREAM_EVENT = "PullProgress"
_STREAM_ENDS = ("PullResult", "Error")
# Answers whose body is a stream (no whole body to check with openapi-core).
_STREAMED_TYPES = (NDJSON,)
_TEXT_STREAMS = ("text/plain", "text/event-stream")


def _schema_errors(instance: object, component: str) -> list[str]:
    validator = OAS30Validator(
        {"$ref": f"openapi.yaml#/components/schemas/{component}"}, registry=_REGISTRY
    )
    return [error.message for error in validator.iter_errors(instance)]


def ndjson_problem(body: bytes, *, complete: bool = True) -> str | None:
    """What is wrong with an NDJSON answer: a line that is not JSON, an event that is not a
    ``PullProgress``, a stream that ends otherwise than with one ``PullResult`` or ``Error``
    line (``complete`` False: the client left early, so the end may be missing)."""
    text = body.decode()
    lines = text.splitlines()
    if not complete and not text.endswith("\n"):
        lines = lines[:-1]  # the line being written when the client left
    if complete and not lines:
        return "an empty stream: a pull always ends with its result or its error"
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except ValueError:
            return f"line {number} is not JSON: {line[:200]!r}"
        last = complete and number == len(lines)
        expected = _STREAM_ENDS if last else (_STREAM_EVENT,)
        errors = {name: _schema_errors(item, name) for name in expected}
        if all(errors.values()):
            return f"line {number} is not a {' or '.join(expected)}: {line[:200]!r} {errors}"
        if not last and any(key in item for key in ("error", "id")) and "status" not in item:
            return f"line {number} ends the stream before its last line: {line[:200]!r}"
    return None


# --- answers read over a socket ---


@dataclass(frozen=True)
class _Request:
    """A request as openapi-core's protocol wants it."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        query = ImmutableMultiDict(parse_qs(urlsplit(self.url).query))
        parameters = RequestParameters(query=query, header=Headers(dict(self.headers)))
        object.__setattr__(self, "parameters", parameters)

    @property
    def host_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/json")


@dataclass(frozen=True)
class _Response:
    status_code: int
    headers: Mapping[str, str]
    data: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


def answer_problem(
    method: str,
    url: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    request_headers: Mapping[str, str] | None = None,
) -> str | None:
    """What is wrong with one answer that deepdockd gave over a real socket, or None."""
    if headers.get("Content-Type", "").startswith(_STREAMED_TYPES):
        return ndjson_problem(body)
    request = _Request(method.lower(), url, dict(request_headers or {}), None)
    return _validate(request, _Response(status, dict(headers), body))


# --- answers of an app under pytest-aiohttp's client ---


@dataclass
class _Tee:
    """What a streamed answer wrote, and whether the client left before it ended."""

    written: bytearray = field(default_factory=bytearray)
    broken: bool = False


_STREAM_TEE = web.RequestKey("spec_stream_tee", _Tee)


def response_checker(failures: list[str]) -> Middleware:
    """A middleware, outermost, that records each answer that breaks the spec. Streamed
    answers are teed as they are written (``tee_streams`` on the app) and checked whole."""

    @web.middleware
    async def check_response(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response):
            problem = _validate(
                AIOHTTPOpenAPIWebRequest(request, body=None), AIOHTTPOpenAPIWebResponse(response)
            )
        elif isinstance(response, web.FileResponse):
            problem = None  # a static file (Swagger UI's), not an answer of the API
        elif _relayed(request):
            problem = None  # a container's service answered, through the proxy
        elif _STREAM_TEE in request and response.content_type in _TEXT_STREAMS:
            # A text stream (a container's logs, an event stream): checked whole, as the spec
            # describes it.
            tee = request[_STREAM_TEE]
            written = bytes(tee.written)
            # openapi-core decodes text/plain itself, and leaves other types as they come.
            text = written if response.content_type == "text/plain" else written.decode()
            whole = _Response(response.status, dict(response.headers), text)  # type: ignore[arg-type]
            problem = _validate(AIOHTTPOpenAPIWebRequest(request, body=None), whole)
        elif _STREAM_TEE in request:
            tee = request[_STREAM_TEE]
            problem = ndjson_problem(bytes(tee.written), complete=not tee.broken)
        else:
            problem = f"a streamed answer of type {response.content_type} that no check knows"
        if problem:
            failures.append(f"{request.method} {request.path_qs} -> {response.status}: {problem}")
        return response

    return check_response


def _relayed(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical == PROXY_PATH


async def tee_streams(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: keep a copy of what a streamed answer writes."""
    streamed = response.content_type.startswith((*_STREAMED_TYPES, *_TEXT_STREAMS))
    if isinstance(response, web.Response) or not streamed:
        return
    tee = request[_STREAM_TEE] = _Tee()
    write = response.write

    async def write_and_keep(data: bytes | bytearray | memoryview) -> None:
        try:
            await write(data)
        except ConnectionError:
            tee.broken = True
            raise
        tee.written.extend(data)

    response.write = write_and_keep  # type: ignore[method-assign]


def _validate(request: Any, response: Any) -> str | None:
    try:
        SPEC.validate_response(request, response)
    except (PathNotFound, OperationNotFound):
        return None  # no route: the router-equals-spec test guards those
    except Exception as exc:
        cause = exc.__cause__
        details = getattr(cause, "schema_errors", None) or [cause] if cause else []
        return f"{exc!r} {[str(d)[:500] for d in details]}"
    return None

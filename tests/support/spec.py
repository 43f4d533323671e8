"""openapi.yaml as a contract: every answer a test sees is checked against it (openapi-core),
so that a response that drifts from the spec fails the test that saw it.

Three doors lead here, one for each way a test talks to deepdockd:

- ``response_checker``, a middleware on apps under pytest-aiohttp's client: whole answers as
  they leave the handler, and streamed answers line by line as they are written;
- ``answer_problem``, for answers read over a real socket from deepdockd running as a process
  (``support.daemon.http_request``);
- ``ndjson_problem``, for a stream of NDJSON lines, and ``sse_problem``, for a stream of
  Server-Sent Events, whichever door they came through.

Every check is against a STRICT copy of openapi.yaml, made here at import time (the served
spec stays as written, so that clients may tolerate additions): every response object schema
that does not say otherwise gets ``additionalProperties: false`` (an answer that leaks a key
fails), and each response's ``Error.code`` gets the ``enum`` of the codes its status may carry,
from docs/api.md's Errors table (``documented_error_codes``; a test holds it equal to what
deepdockd/ can raise, ``raisable_error_codes``).
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import pkgutil
import re
from collections.abc import Iterator, Mapping
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
from openapi_core.templating.paths.exceptions import (
    OperationNotFound,
    PathNotFound,
    ServerNotFound,
)
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from werkzeug.datastructures import Headers, ImmutableMultiDict

import deepdockd
from deepdockd.api.auth import PROXY_PATH
from deepdockd.errors import ApiError

ROOT = Path(__file__).parents[2]
SPEC_PATH = ROOT / "openapi.yaml"
API_DOC = ROOT / "docs" / "api.md"
NDJSON = "application/x-ndjson"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
ERROR_REF = "#/components/schemas/Error"


# --- the error codes: documented, and raisable ---


def documented_error_codes() -> dict[int, set[str]]:
    """docs/api.md's Errors table: each status and the codes it may carry."""
    section = API_DOC.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    codes: dict[int, set[str]] = {}
    for row in re.finditer(r"^\| (\d{3}) \| ([^|]+) \|", section, re.MULTILINE):
        codes.setdefault(int(row[1]), set()).update(re.findall(r"`([a-z_]+)`", row[2]))
    return codes


def raisable_error_codes() -> dict[int, set[str]]:
    """What deepdockd/ can answer: every ``ApiError`` subclass that some module raises or
    makes (a base class only subclassed, e.g. ``BadGateway``, answers nothing itself), by its
    ``status``, and every literal ``error_response(STATUS, "code", ...)``."""
    called: set[str] = set()
    codes: dict[int, set[str]] = {}
    for source in Path(deepdockd.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Name):
                called.add(node.exc.id)  # raise NotFound: made by the raise
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            called.add(name)
            if name == "error_response" and len(node.args) >= 2:
                status, code = (getattr(arg, "value", None) for arg in node.args[:2])
                if isinstance(status, int) and isinstance(code, str):
                    codes.setdefault(status, set()).add(code)
    for module in pkgutil.walk_packages(deepdockd.__path__, "deepdockd."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    for error in _subclasses(ApiError):
        if error.__name__ in called:
            codes.setdefault(error.status, set()).add(error.code)
    return codes


def _subclasses(cls: type[ApiError]) -> Iterator[type[ApiError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# --- the strict copy ---


def strict_document(document: dict[str, Any], codes: Mapping[int, set[str]]) -> dict[str, Any]:
    """A copy of the spec with every response object closed (``additionalProperties: false``
    where the schema does not set it) and each response's ``Error.code`` held to the codes of
    its status (``Error4xx`` schemas of the copy's own; the bare ``Error``, in a stream's
    ``oneOf``, to every code)."""
    strict = copy.deepcopy(document)
    schemas = strict["components"]["schemas"]
    responses = strict["components"].get("responses", {})
    every_code = sorted(set().union(*codes.values()))
    reached: set[str] = set()
    error = schemas["Error"]
    for status, its_codes in codes.items():
        schemas[f"Error{status}"] = _error_with_codes(error, sorted(its_codes))
    schemas["Error"] = _error_with_codes(error, every_code)
    for item in strict["paths"].values():
        for method in METHODS:
            answers = item.get(method, {}).get("responses", {})
            for status, answer in list(answers.items()):
                if "$ref" in answer:  # a shared response: a copy of its own, per status
                    answer = answers[status] = copy.deepcopy(
                        responses[answer["$ref"].rsplit("/", 1)[1]]
                    )
                for media in answer.get("content", {}).values():
                    schema = media.get("schema")
                    if schema == {"$ref": ERROR_REF} and str(status).isdigit():
                        if int(status) not in codes:
                            raise ValueError(f"status {status} answers an Error, no code listed")
                        media["schema"] = {"$ref": f"{ERROR_REF}{status}"}
                    elif schema is not None:
                        _close(schema, schemas, reached)
    for name in [*(f"Error{status}" for status in codes), "Error", "Event"]:
        _close({"$ref": f"#/components/schemas/{name}"}, schemas, reached)
    return strict


def _error_with_codes(error: dict[str, Any], codes: list[str]) -> dict[str, Any]:
    schema = copy.deepcopy(error)
    schema["properties"]["error"]["properties"]["code"]["enum"] = codes
    return schema


def _close(schema: Any, schemas: dict[str, Any], reached: set[str]) -> None:
    """``additionalProperties: false`` on every object with ``properties`` that does not say,
    here and in the component schemas it reaches (each once)."""
    if isinstance(schema, list):
        for item in schema:
            _close(item, schemas, reached)
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name not in reached:
            reached.add(name)
            _close(schemas[name], schemas, reached)
        return
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for key in ("properties",):
        for sub in schema.get(key, {}).values():
            _close(sub, schemas, reached)
    for key in ("items", "additionalProperties", "not"):
        _close(schema.get(key), schemas, reached)
    for key in ("oneOf", "anyOf", "allOf"):
        _close(schema.get(key, []), schemas, reached)


_DOCUMENT = yaml.safe_load(SPEC_PATH.read_text())
ERROR_STATUSES = frozenset(documented_error_codes())
STRICT_DOCUMENT = strict_document(_DOCUMENT, documented_error_codes())
SPEC = OpenAPI.from_dict(STRICT_DOCUMENT)
_REGISTRY: Registry[Any] = Registry().with_resource(
    "openapi.yaml", Resource.from_contents(STRICT_DOCUMENT, default_specification=DRAFT4)
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


_SSE = "text/event-stream"
_SSE_FIELDS = ("id", "event", "data")


def sse_problem(body: bytes, *, complete: bool = True) -> str | None:
    """What is wrong with a Server-Sent Events answer (``GET /events``): frames of ``id:``
    (increasing digits), ``event:`` and one ``data:`` line that is an ``Event`` whose ``type``
    is the frame's ``event``, or comments (``: ...``), each ended by a blank line; no other
    field. ``complete`` False: the client left, so a last frame may be cut short."""
    text = body.decode()
    frames = re.split(r"\r\n\r\n|\n\n|\r\r", text)
    rest = frames.pop()  # after the last blank line: nothing, unless a frame was cut short
    if rest and complete:
        return f"the stream ends inside a frame: {rest[:200]!r}"
    last_id = -1
    for number, frame in enumerate(frames, 1):
        fields: dict[str, list[str]] = {}
        for line in re.split(r"\r\n|\n|\r", frame):
            if line.startswith(":"):
                continue  # a comment
            name, colon, value = line.partition(":")
            if not colon or name not in _SSE_FIELDS:
                return f"frame {number} has a line that is no field of ours: {line[:200]!r}"
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if not fields:
            continue  # comments only
        if sorted(fields) != sorted(_SSE_FIELDS) or any(len(v) != 1 for v in fields.values()):
            return f"frame {number} is not one id, one event and one data line: {frame[:200]!r}"
        (frame_id,), (event,), (data,) = fields["id"], fields["event"], fields["data"]
        if not frame_id.isdigit() or int(frame_id) <= last_id:
            return f"frame {number}'s id {frame_id!r} is not an integer above {last_id}"
        last_id = int(frame_id)
        try:
            item = json.loads(data)
        except ValueError:
            return f"frame {number}'s data is not JSON: {data[:200]!r}"
        if errors := _schema_errors(item, "Event"):
            return f"frame {number}'s data is not an Event: {data[:200]!r} {errors}"
        if item["type"] != event:
            return f"frame {number}'s event {event!r} is not its data's type {item['type']!r}"
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
    complete: bool = True,
) -> str | None:
    """What is wrong with one answer that deepdockd gave over a real socket, or None
    (``complete`` False: an event stream the client left, whose last frame may be cut)."""
    content_type = headers.get("Content-Type", "")
    if content_type.startswith(_STREAMED_TYPES):
        return ndjson_problem(body)
    request = _Request(method.lower(), url, dict(request_headers or {}), None)
    if content_type.startswith(_SSE):
        # A stream read before its first byte (a browser's, cut when the page went) is held to
        # its status and type: a comment stands for the frames that did not come.
        text = body.decode() if body or complete else ": nothing read\n\n"
        return _validate(request, _Response(status, dict(headers), text)) or (  # type: ignore[arg-type]
            sse_problem(body, complete=complete)
        )
    return _validate(request, _Response(status, dict(headers), body))


# --- answers of an app under pytest-aiohttp's client ---


@dataclass
class _Tee:
    """What a streamed answer wrote, and whether the client left before it ended."""

    written: bytearray = field(default_factory=bytearray)
    broken: bool = False
    framed: int = 0  # an event stream: where the frames not checked yet begin
    reported: bool = False  # an event stream: a frame outside the spec is recorded already


_STREAM_TEE = web.RequestKey("spec_stream_tee", _Tee)
# Where a stream records a frame outside the spec as it is written: an event stream may still
# be open when its test ends (the server ends it after the test's own checks).
_FAILURES = web.RequestKey("spec_failures", list[str])


def response_checker(failures: list[str]) -> Middleware:
    """A middleware, outermost, that records each answer that breaks the spec. Streamed
    answers are teed as they are written (``tee_streams`` on the app) and checked whole."""

    @web.middleware
    async def check_response(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_FAILURES] = failures
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
            if not problem and response.content_type == _SSE and not tee.reported:
                problem = sse_problem(written, complete=not tee.broken)
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
        if response.content_type == _SSE and not tee.reported:
            _check_new_frames(request, tee)

    response.write = write_and_keep  # type: ignore[method-assign]


def _check_new_frames(request: web.Request, tee: _Tee) -> None:
    """The frames of an event stream that its last write completed, checked as they go."""
    end = tee.written.rfind(b"\n\n", tee.framed) + 2
    if end < 2 or end <= tee.framed:
        return
    problem = sse_problem(bytes(tee.written[tee.framed : end]))
    tee.framed = end
    if problem and _FAILURES in request:
        tee.reported = True
        request[_FAILURES].append(f"{request.method} {request.path_qs} -> 200: {problem}")


def _validate(request: Any, response: Any) -> str | None:
    try:
        SPEC.validate_response(request, response)
    except (PathNotFound, OperationNotFound, ServerNotFound):
        # No route (the router-equals-spec test guards those), or a target the matcher cannot
        # place (a raw request's line break): an error answer still has its one shape.
        return _unrouted_problem(response)
    except Exception as exc:
        cause = exc.__cause__
        details = getattr(cause, "schema_errors", None) or [cause] if cause else []
        return f"{exc!r} {[str(d)[:500] for d in details]}"
    return None


def _unrouted_problem(response: Any) -> str | None:
    """An answer to a request the spec has no operation for: an error (4xx, 5xx) must still
    be an ``Error`` with a code of its status."""
    if response.status_code < 400 or not response.content_type.startswith("application/json"):
        return None
    try:
        body = json.loads(response.data)
    except ValueError:
        return f"an error answer that is not JSON: {response.data[:200]!r}"
    if response.status_code not in ERROR_STATUSES:
        return f"status {response.status_code} is no error status of docs/api.md"
    errors = _schema_errors(body, f"Error{response.status_code}")
    return f"not an Error{response.status_code}: {errors}" if errors else None

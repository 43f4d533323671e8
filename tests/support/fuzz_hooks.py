"""Schemathesis hooks for the fuzz run (loaded through SCHEMATHESIS_HOOKS): the check that
holds every answer to ``tests/support/fuzz_rule.problem``, and the record of every answer.

The environment says who calls: ``DEEPDOCKD_FUZZ_CALLER`` (``admin``, ``user`` or
``host-user``) and ``DEEPDOCKD_FUZZ_USER`` (their user name). ``DEEPDOCKD_FUZZ_RECORD`` is the
file each answer is written to, one JSON line each, for the test to count.
``DEEPDOCKD_FUZZ_IMAGE`` is an image the host has, public, that some of the non-admins'
``DELETE /images/{image_ref}`` name; ``DEEPDOCKD_FUZZ_PULLABLE`` (optional) a reference that
some streamed pulls ask for, so that a stream runs its course.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis

from tests.support.fuzz_rule import ADMIN, CALLERS, NDJSON, Answer, error_code, problem, record
from tests.support.spec import ndjson_problem

CALLER = os.environ.get("DEEPDOCKD_FUZZ_CALLER", "")
if CALLER not in CALLERS:
    raise RuntimeError(f"DEEPDOCKD_FUZZ_CALLER is one of {CALLERS}, not {CALLER!r}")
CALLER_NAME = os.environ.get("DEEPDOCKD_FUZZ_USER")
RECORD = os.environ.get("DEEPDOCKD_FUZZ_RECORD")
PRESENT_IMAGE = os.environ.get("DEEPDOCKD_FUZZ_IMAGE")
PULLABLE = os.environ.get("DEEPDOCKD_FUZZ_PULLABLE")
# An event stream stays open until its client leaves: the run asks for one second of it.
EVENT_STREAM_SECONDS = 1
_calls: Counter[str] = Counter()


def _operation(case: Any) -> str:
    return str(case.operation.definition.raw["operationId"])


def _content_type(response: Any) -> str:
    return str((response.headers.get("content-type") or [""])[0])


@schemathesis.check
def answers_within_the_rule(ctx: Any, response: Any, case: Any) -> None:
    body = response.content or b""
    found = problem(
        _operation(case),
        CALLER,
        response.status_code,
        _content_type(response),
        body,
        user=CALLER_NAME,
    )
    # schemathesis has no reader for NDJSON (it says it skips those answers): the spec's own.
    if not found and _content_type(response).startswith(NDJSON):
        found = ndjson_problem(body)
    if found:
        raise AssertionError(found)


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    if case.operation.path == "/events":
        case.query = {**(case.query or {}), "timeout": EVENT_STREAM_SECONDS}
    return case


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    operation = _operation(case)
    turn = _calls[operation]
    _calls[operation] += 1
    if operation == "pullImage" and turn % 2:
        # Every other pull asks for the progress stream, whose error comes inside a 200; of
        # those, every other one pulls an image that is there, for a stream that runs.
        case.headers = {**(case.headers or {}), "Accept": NDJSON}
        if PULLABLE and turn % 4 == 1 and isinstance(case.body, dict):
            case.body = {**case.body, "repo_tag": PULLABLE}
    if operation == "deleteImage" and CALLER != ADMIN and PRESENT_IMAGE and turn % 3 == 0:
        # Every third names an image that is there, so that the admins' answer is in reach.
        case.path_parameters = {**(case.path_parameters or {}), "image_ref": PRESENT_IMAGE}


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    if RECORD is not None:
        status = response.status_code
        code = error_code(response.content or b"") if status >= 400 else None
        answer = Answer(_operation(case), status, code, _content_type(response))
        record(Path(RECORD), answer)

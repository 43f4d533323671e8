"""The rule the fuzz run holds every answer to (tests/test_fuzz.py, through the hooks of
``tests/support/fuzz_hooks.py``), per operation and per caller, and the record of its answers.

- A server error is a failure, but for the pulling operations' 502 ``registry_unreachable``:
  the rig's machine reaches no registry but the rig's, so a pull of a generated reference from
  Docker Hub gets the documented answer for an upstream that cannot be reached.
- A pull's NDJSON stream (a 200) ends with an ``Error`` line where the pull fails: that line
  is held to the same rule, with the status its code has as a plain answer (openapi.yaml:
  "with the code the plain answer would have").
- A 403 is a failure unless this caller meets it by design on this operation (a user on an
  admin-only route, a token on ``POST /tokens``, a quota). An admin-only route that answers
  anyone else but an admin with a 2xx is a failure; so is another user's quota.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import deepdockd.api.app  # noqa: F401  (imports every module that defines an ApiError)
from deepdockd.errors import ApiError

NDJSON = "application/x-ndjson"
# Who calls: an admin's token, a user's token, or a host user on the local socket (no token).
ADMIN, USER, HOST_USER = "admin", "user", "host-user"
CALLERS = (ADMIN, USER, HOST_USER)

# The operations that pull: the only ones that ask a registry, so the only ones that may say
# that it cannot be reached.
PULLS = ("pullImage", "createContainer")
EXPECTED_5XX: Mapping[str, frozenset[tuple[int, str]]] = {
    operation: frozenset({(502, "registry_unreachable")}) for operation in PULLS
}

# Routes that answer admins only (openapi.yaml: "removing images is for admins", "it answers
# admin tokens only"): anyone else gets 403 forbidden, never the answer.
ADMIN_ONLY = ("deleteImage", "prometheusMetrics")
_USERS = frozenset({USER, HOST_USER})
_TOKENS = frozenset({ADMIN, USER})
_EVERYONE = frozenset(CALLERS)
# The 403s each caller meets by design, per operation and code (each one the operation's
# documented 403); any other 403 fails.
EXPECTED_403: Mapping[str, Mapping[str, frozenset[str]]] = {
    "deleteImage": {"forbidden": _USERS},
    "prometheusMetrics": {"forbidden": _USERS},
    "getQuota": {"forbidden": _USERS},  # another user's quota
    "pullImage": {"tag_in_use": _USERS},  # admins may re-point any tag
    # idle_reclaim false is an admin's to ask; an admin has no quota here (no [quotas] table
    # of their own), but a start counts against the container owner's, whoever starts it.
    "createContainer": {"forbidden": _USERS, "quota_exceeded": _USERS},
    "commitContainer": {"quota_exceeded": _USERS},  # a user's disk quota, as for a create
    "startContainer": {"quota_exceeded": _EVERYONE},
    "restartContainer": {"quota_exceeded": _EVERYONE},
    "mintToken": {"forbidden": _TOKENS},  # made on the local socket only, without a token
    "openProxySession": {"forbidden": frozenset({HOST_USER})},  # a session stands in for a token
}


def _statuses_of_codes() -> Mapping[str, int]:
    """Each error code deepdockd has, with the status it is answered with."""
    found: dict[str, int] = {}
    pending: list[type[ApiError]] = [ApiError]
    while pending:
        error = pending.pop()
        if found.setdefault(error.code, error.status) != error.status:
            raise AssertionError(f"{error.code} has two statuses: {error}")
        pending.extend(error.__subclasses__())
    return found


STATUS_OF_CODE = _statuses_of_codes()


def problem(
    operation: str,
    caller: str,
    status: int,
    content_type: str,
    body: bytes,
    *,
    user: str | None = None,
) -> str | None:
    """What is wrong with an answer of ``status`` to ``caller``'s request to ``operation``
    (an operationId), by the rule above; None where nothing is. ``user`` is the caller's own
    name."""
    if status >= 500:
        return _server_error(operation, status, error_code(body), "")
    if status == 403:
        code = error_code(body)
        if caller not in EXPECTED_403.get(operation, {}).get(code or "", ()):
            return f"unexpected 403 ({code}) for {caller} from {operation}: {body[:300]!r}"
    if not 200 <= status < 300 or caller == ADMIN:
        return _stream_error(operation, body) if content_type.startswith(NDJSON) else None
    if operation in ADMIN_ONLY:
        return f"{caller} got {status} from {operation}, which answers admins only"
    if operation == "getQuota" and (whose := _json(body).get("user")) != user:
        return f"{caller} {user} got {status} with {whose}'s quota"
    if operation == "getUsage" and user is not None:
        rows = _json(body).get("rows")
        owners = (
            {r.get("owner") for r in rows if isinstance(r, dict)}
            if isinstance(rows, list)
            else set()
        )
        others = owners - {user, None}
        if others:
            return f"{caller} {user} got {status} with GPU-hours of {sorted(others)}"
    return _stream_error(operation, body) if content_type.startswith(NDJSON) else None


def _server_error(operation: str, status: int, code: str | None, where: str) -> str | None:
    if (status, code) in EXPECTED_5XX.get(operation, ()):
        return None
    return f"server error {status} ({code}) from {operation}{where}"


def _stream_error(operation: str, body: bytes) -> str | None:
    """The rule for each ``Error`` line of an NDJSON stream."""
    for line in body.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # not JSON: the spec's ndjson_problem judges that (fuzz_hooks)
        if not isinstance(item, dict) or "error" not in item:
            continue
        code = error_code(line)
        if code not in STATUS_OF_CODE:
            return f"a stream of {operation} ends with {code!r}, a code deepdockd has not"
        status = STATUS_OF_CODE[code]
        if status >= 500:
            return _server_error(operation, status, code, f" in a 200 stream: {line[:300]!r}")
    return None


def _json(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def error_code(body: bytes) -> str | None:
    try:
        code = json.loads(body)["error"]["code"]
    except Exception:
        return None
    return code if isinstance(code, str) else None


# --- the record: one JSON line per answer ---


@dataclass(frozen=True)
class Answer:
    operation: str
    status: int
    code: str | None  # an error's
    content_type: str


def record(path: Path, answer: Answer) -> None:
    with path.open("a") as lines:
        lines.write(json.dumps(answer.__dict__) + "\n")


def read_record(path: Path) -> Iterator[Answer]:
    if path.exists():
        for line in path.read_text().splitlines():
            yield Answer(**json.loads(line))

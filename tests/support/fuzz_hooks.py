"""Schemathesis hooks for the fuzz run (loaded through SCHEMATHESIS_HOOKS).

This machine reaches no registry but the rig's, so a pull of a generated reference from
Docker Hub is answered 502 registry_unreachable: the documented answer for an upstream that
cannot be reached. Every other 5xx is a failure.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# The only server-side status an offline host may give to a well-formed request.
EXPECTED_5XX = {(502, "registry_unreachable")}


@schemathesis.check
def no_unexpected_server_error(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 500:
        return
    try:
        code = response.json()["error"]["code"]
    except Exception:
        code = None
    if (response.status_code, code) not in EXPECTED_5XX:
        raise AssertionError(f"server error {response.status_code} ({code}): {response.text[:300]}")


# An event stream stays open until its client leaves: the run asks for one second of it.
EVENT_STREAM_SECONDS = 1


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    if case.operation.path == "/events":
        case.query = {**(case.query or {}), "timeout": EVENT_STREAM_SECONDS}
    return case

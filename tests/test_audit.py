"""The audit and access lines, read as an admin's tool reads them (logfmt: ``key=value``
pairs, a value with a space, a quote or an ``=`` in double quotes): requests crafted to make
a line claim another user's action — a path with spaces, sent without a token, and a
``repo_tag`` with spaces, sent with a user's token — to a real deepdockd process, whose log
is then parsed line by line. See docs/security.md#audit."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from deepdockd.logfmt import logfmt
from deepdockd.tokens import TokenStore

from tests.support.checking_relay import exchange_problems
from tests.support.daemon import RunningDaemon

LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(?P<logger>[\w.]+): (?P<message>.*)$"
)
# What the attacker wants a line to say: that the admin deleted the victim's container.
FORGED = "user=admin action=DELETE /containers/victim target=victim outcome=200"
AUDIT_FIELDS = ["user", "action", "target", "outcome"]
ACCESS_FIELDS = ["method", "path", "status", "duration_ms", "user", "client"]


class NotLogfmt(ValueError):
    """A line that a strict logfmt reader refuses."""


def logfmt_pairs(text: str) -> list[tuple[str, str | None]]:
    """``text`` read by go-logfmt's grammar, as log tools (Loki's ``| logfmt``, lnav, hl)
    read it: a key is a run of printable characters other than ``=`` and ``"``; its value is
    either a double-quoted string with backslash escapes, or what follows ``=`` up to the
    next space; a key without ``=`` has no value."""
    pairs: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        start = i
        while i < n and text[i] > " " and text[i] not in '="':
            i += 1
        key = text[start:i]
        if not key:
            raise NotLogfmt(f"unexpected {text[i]!r} at {i}: {text!r}")
        if i == n or text[i] == " ":
            pairs.append((key, None))
            continue
        if text[i] == '"':
            raise NotLogfmt(f"unexpected '\"' in key at {i}: {text!r}")
        i += 1  # the '='
        if i < n and text[i] == '"':
            value, i = _quoted(text, i + 1)
            if i < n and text[i] != " ":
                raise NotLogfmt(f"unexpected {text[i]!r} after a quoted value: {text!r}")
        else:
            start = i
            while i < n and text[i] != " ":
                if text[i] in '="':
                    raise NotLogfmt(f"unexpected {text[i]!r} in a value at {i}: {text!r}")
                i += 1
            value = text[start:i]
        pairs.append((key, value))
    return pairs


def _quoted(text: str, i: int) -> tuple[str, int]:
    escapes = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    value = []
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(value), i + 1
        if c == "\\":
            following = text[i + 1 : i + 2]
            if following in escapes:
                value.append(escapes[following])
                i += 2
            elif following in ("x", "u", "U"):
                width = {"x": 2, "u": 4, "U": 8}[following]
                value.append(chr(int(text[i + 2 : i + 2 + width], 16)))
                i += 2 + width
            else:
                raise NotLogfmt(f"unknown escape at {i}: {text!r}")
            continue
        value.append(c)
        i += 1
    raise NotLogfmt(f"unterminated quoted value: {text!r}")


@given(st.dictionaries(st.sampled_from(AUDIT_FIELDS + ACCESS_FIELDS), st.text(), min_size=1))
def test_every_value_reads_back_whole_as_one_field(fields: dict[str, str]) -> None:
    assert logfmt_pairs(logfmt(fields)) == list(fields.items())


def test_a_line_stays_one_line() -> None:
    line = logfmt({"action": "DELETE /x\n2026-01-01 INFO deepdockd.audit: user=admin\u2028"})
    assert line == 'action="DELETE /x\\n2026-01-01 INFO deepdockd.audit: user=admin\\u2028"'
    assert logfmt({"user": "alice", "target": "", "outcome": 200}) == (
        'user=alice target="" outcome=200'
    )


def raw_request(
    port: int, method: str, target: str, body: bytes = b"", token: str | None = None
) -> int:
    """One request as an attacker sends it by hand (a target no HTTP library would rewrite):
    its status."""
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    sent = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"{authorization}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(sent)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    problems = exchange_problems(f"http://127.0.0.1:{port}", sent, answer)
    assert not problems, "\n".join(problems)  # held to the strict spec
    return int(answer.split()[1])


def test_no_path_or_body_field_can_write_an_audit_or_access_field(
    rig_daemon: Callable[..., RunningDaemon], namespace: str
) -> None:
    daemon = rig_daemon(env={"DEEPDOCKD_NAMESPACE": namespace}, auth=True)
    alice = TokenStore(daemon.state_dir).add("alice", "user")  # read at her first request
    port = int(daemon.base.rsplit(":", 1)[1])
    encoded = FORGED.replace(" ", "%20")
    paths = [
        f"/x%20{encoded}",  # no route, no token
        f"/containers/box%20{encoded}",  # a route's name, no token
        f"/x%22%20{encoded.replace('=', '=%22', 1)}",  # quotes, to close a quoted value
    ]
    repo_tags = [f"busybox {FORGED}", f'busybox" {FORGED} note="']
    try:
        statuses = [raw_request(port, "POST", path) for path in paths]
        statuses.append(raw_request(port, "DELETE", f"/images/busybox%20{encoded}", token=alice))
        for repo_tag in repo_tags:
            body = json.dumps({"repo_tag": repo_tag}).encode()
            statuses.append(raw_request(port, "POST", "/images", body, token=alice))
    finally:
        exit_status, log = daemon.stop()

    lines = [m for m in map(LOG_LINE.match, log.splitlines()) if m]
    audit = [m["message"] for m in lines if m["logger"] == "deepdockd.audit"]
    access = [
        m["message"] for m in lines if m["logger"] == "deepdockd.access" and "healthz" not in m[0]
    ]
    assert (len(audit), len(access)) == (6, 6), log
    # Nothing the attacker sent reads as the admin's action, however the line is read.
    claims = [
        line
        for line in audit + access
        if {("user", "admin"), ("action", "DELETE")} & set(_pairs_if_logfmt(line))
    ]
    assert claims == [], claims
    # Every line is well-formed logfmt with its own fields, once each.
    parsed_audit = [dict(logfmt_pairs(line)) for line in audit]
    assert [[k for k, _ in logfmt_pairs(line)] for line in audit] == [AUDIT_FIELDS] * 6, audit
    assert [[k for k, _ in logfmt_pairs(line)] for line in access] == [ACCESS_FIELDS] * 6, access
    # The values are what was sent, whole; a target only for input that is valid.
    assert [(a["user"], a["action"], a["target"]) for a in parsed_audit] == [
        ("-", "POST " + unquote(paths[0]), "-"),
        ("-", f"POST /containers/box {FORGED}", "-"),
        ("-", "POST " + unquote(paths[2]), "-"),
        ("alice", f"DELETE /images/busybox {FORGED}", f"busybox {FORGED}"),
        ("alice", "POST /images", "-"),
        ("alice", "POST /images", "-"),
    ]
    assert [a["outcome"] for a in parsed_audit] == [str(s) for s in statuses]
    assert statuses[-2:] == [422, 422]
    assert [dict(logfmt_pairs(line))["user"] for line in access] == ["-"] * 3 + ["alice"] * 3
    assert exit_status == 0


def _pairs_if_logfmt(line: str) -> list[tuple[str, str | None]]:
    try:
        return logfmt_pairs(line)
    except NotLogfmt:
        return []  # asserted below: every line is logfmt

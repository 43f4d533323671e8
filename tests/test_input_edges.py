"""Input at its edges, sent as an attacker would send it: names that end in a line break,
JSON nested past any use or with numbers no one means, a path that carries a forged log
line, and clients that send half a request header and wait."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config, ConfigError, load_config

from tests.support.api import Client, ClientFactory
from tests.support.checking_relay import exchange_problems
from tests.support.daemon import Started, http_request, run_deepdockd

# Where no Docker answers: none of these tests needs one, and none may reach one.
NO_DOCKER = "no-docker.sock"


@pytest.fixture
async def app_client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    """The app in process (answers checked against openapi.yaml), auth off, no Docker."""
    config = Config(
        docker_host=f"unix://{tmp_path / NO_DOCKER}", state_dir=tmp_path / "state", auth=False
    )
    return await aiohttp_client(create_app(config))


def box(**fields: Any) -> dict[str, Any]:
    """A create body that is valid but for ``fields``."""
    return {"name": "box", "image": "busybox", "user_name": "u1", "password": "pw"} | fields


async def error_of(response: Any) -> tuple[int, dict[str, Any]]:
    return response.status, (await response.json())["error"]


def no_traceback(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The records that carry a traceback (there must be none)."""
    return [r.getMessage() for r in caplog.records if r.exc_info]


# --- names that end in a line break ---

USER_NAME_RULE = (
    "must be a Linux user name: up to 32 lower-case letters, digits, '_' or '-', starting "
    "with a letter or '_'"
)


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        (
            {"name": "box\n"},
            "name",
            "must be 2-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ),
        ({"user_name": "root\n"}, "user_name", USER_NAME_RULE),
        ({"user_name": "alice\n"}, "user_name", USER_NAME_RULE),
        (
            {"env": {"FOO\n": "1"}},
            "env.FOO\n.key",
            "must be a variable name ([A-Za-z_][A-Za-z0-9_]*)",
        ),
    ],
    ids=["name", "user_name-root", "user_name", "env-name"],
)
async def test_a_trailing_newline_is_not_part_of_a_valid_name(
    app_client: Client, fields: dict[str, Any], field: str, why: str
) -> None:
    status, error = await error_of(await app_client.post("/containers/create", json=box(**fields)))

    assert status == 422
    assert error == {
        "code": "invalid_input",
        "message": f"{field}: {why}",
        "details": {"fields": {field: why}},
    }


def test_a_token_user_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"

    result = run_deepdockd("token", "--state-dir", str(state), "add", "alice\n")

    assert result.returncode == 2
    assert result.stderr == (
        "deepdockd token: 'alice\\n' is not a valid user name "
        "(lower-case letters, digits, '_', '.', '-')\n"
    )
    assert not (state / "tokens.json").exists()


def test_a_namespace_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}, {"DEEPDOCKD_NAMESPACE": "lab\n"}, default_file=tmp_path / "absent")

    assert str(caught.value) == (
        "namespace: 'lab\\n' must be 1-63 characters of lower-case letters, digits, '_', '.' "
        "or '-', starting with a letter or digit (from DEEPDOCKD_NAMESPACE)"
    )


# --- JSON past any use ---


def nested(depth: int) -> str:
    """A JSON body of ``depth`` nested lists."""
    return "[" * depth + "]" * depth


async def post_raw(client: Client, path: str, body: str) -> Any:
    return await client.post(path, data=body, headers={"Content-Type": "application/json"})


async def test_json_nested_100000_deep_is_400_without_a_traceback(
    app_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    status, error = await error_of(await post_raw(app_client, "/images", nested(100_000)))

    assert (status, error) == (
        400,
        {
            "code": "bad_request",
            "message": "the request body nests deeper than 32 levels",
            "details": {},
        },
    )
    assert no_traceback(caplog) == []


async def test_json_32_deep_is_read_and_33_deep_is_not(app_client: Client) -> None:
    read_status, read = await error_of(await post_raw(app_client, "/images", nested(32)))
    refused_status, refused = await error_of(await post_raw(app_client, "/images", nested(33)))

    # Read: the schema says what is wrong with it.
    assert (read_status, read["message"]) == (422, "body: Invalid input type.")
    assert (refused_status, refused["message"]) == (
        400,
        "the request body nests deeper than 32 levels",
    )


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("9" * 5000, "a number in the request body has more than 100 digits"),
        ("-" + "1" * 101, "a number in the request body has more than 100 digits"),
        ("0." + "1" * 200, "a number in the request body has more than 100 digits"),
        ("1e400", "a number in the request body is too large: 1e400"),
        ("-1E+999", "a number in the request body is too large: -1E+999"),
        ("NaN", "the request body is not valid JSON: NaN is not a JSON value"),
        ("-Infinity", "the request body is not valid JSON: -Infinity is not a JSON value"),
    ],
    ids=["5000-digits", "101-digits", "long-fraction", "1e400", "-1E+999", "NaN", "-Infinity"],
)
async def test_an_absurd_number_is_400_without_a_traceback(
    app_client: Client, caplog: pytest.LogCaptureFixture, number: str, message: str
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps(box(gpu_ids=[0])).replace("[0]", f"[{number}]")

    status, error = await error_of(await post_raw(app_client, "/containers/create", body))

    assert (status, error) == (400, {"code": "bad_request", "message": message, "details": {}})
    assert no_traceback(caplog) == []


async def test_a_number_of_100_digits_is_read(app_client: Client) -> None:
    body = json.dumps(box()).replace('"box"', "9" * 100, 1)

    status, error = await error_of(await post_raw(app_client, "/containers/create", body))

    # Read, and then refused by the schema like any number where a name belongs.
    assert (status, error["message"]) == (422, "name: Not a valid string.")


async def test_a_list_as_long_as_a_body_holds_is_refused_at_once(app_client: Client) -> None:
    # 50,000 GPU ids in 340 kB: the duplicate check used to count each one in the whole list.
    started = time.monotonic()

    status, error = await error_of(
        await app_client.post("/containers/create", json=box(gpu_ids=list(range(50_000))))
    )

    assert (status, error["message"]) == (422, "gpu_ids: Longer than maximum length 64.")
    assert time.monotonic() - started < 5


async def test_a_body_in_an_unknown_charset_is_400_without_a_traceback(
    app_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Content-Type": "application/json; charset=no-such-codec"}

    response = await app_client.post("/images", data=b'{"repo_tag": "busybox"}', headers=headers)

    assert await error_of(response) == (
        400,
        {
            "code": "bad_request",
            "message": "the request body's charset 'no-such-codec' is unknown",
            "details": {},
        },
    )
    assert no_traceback(caplog) == []


async def test_a_5000_digit_query_number_is_422_without_a_traceback(
    app_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    status, error = await error_of(await app_client.get(f"/metrics/gpus?limit={'9' * 5000}"))

    assert (status, error) == (
        422,
        {
            "code": "invalid_input",
            "message": "limit: must be a whole number from 1 to 10000000",
            "details": {"field": "limit"},
        },
    )
    assert no_traceback(caplog) == []


# --- deepdockd as a process: its log and its connections ---


LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(?P<logger>[\w.]+): (?P<message>.*)$"
)
FORGED = (
    "2026-01-01 00:00:00,000 INFO deepdockd.audit: user=admin action=DELETE /images/everything "
    "target=everything outcome=200"
)


def raw_request(port: int, method: str, target: str, body: bytes = b"") -> tuple[int, Any]:
    """One request as sent by hand (a target no HTTP library would send as it is): the
    status and the JSON error of the answer."""
    sent = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(sent)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    problems = exchange_problems(f"http://127.0.0.1:{port}", sent, answer)
    assert not problems, "\n".join(problems)  # held to the strict spec
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)["error"]


def test_a_line_break_in_a_path_or_a_body_cannot_forge_a_log_line(
    start_daemon: Callable[..., Started],
) -> None:
    started = start_daemon()
    encoded = FORGED.replace(" ", "%20")
    try:
        answers = [raw_request(started.port, "DELETE", f"/images/busybox%0A{encoded}")]
        for line_break in ("%0A", "%0D", "%0D%0A", "%E2%80%A8"):
            answers.append(
                raw_request(started.port, "DELETE", f"/containers/box{line_break}{encoded}")
            )
        pull = json.dumps({"repo_tag": f"busybox\n{FORGED}"}).encode()
        answers.append(raw_request(started.port, "POST", "/images", pull))
    finally:
        status, log = started.daemon.stop()

    lines = log.splitlines()
    parsed = [LOG_LINE.match(line) for line in lines]
    assert [line for line, match in zip(lines, parsed, strict=True) if not match] == []
    audit = [m["message"] for m in parsed if m and m["logger"] == "deepdockd.audit"]
    assert len(audit) == 6, audit
    assert all(m.startswith("user=anonymous action=") for m in audit), audit
    # logfmt (docs/security.md#audit): the line break is an escape inside the quoted value.
    assert audit[0] == (
        f'user=anonymous action="DELETE /images/busybox\\n{FORGED}" target=- outcome=404'
    )
    assert audit[1] == (
        f'user=anonymous action="DELETE /containers/box\\n{FORGED}" target=- outcome=404'
    )
    assert audit[2].startswith(f'user=anonymous action="DELETE /containers/box\\r{FORGED}" ')
    assert audit[3].startswith(f'user=anonymous action="DELETE /containers/box\\r\\n{FORGED}" ')
    assert audit[4].startswith(f'user=anonymous action="DELETE /containers/box\\u2028{FORGED}" ')
    # An invalid repo_tag is no target: the audit names valid input only.
    assert audit[5] == 'user=anonymous action="POST /images" target=- outcome=422'
    assert [(status, error["code"]) for status, error in answers] == [
        *[(404, "not_found")] * 5, (422, "invalid_input"),
    ]  # fmt: skip
    assert status == 0
    assert "Traceback" not in log


HALF_A_HEADER = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"
SLOW_CLIENTS = 60
HEADER_TIMEOUT_S = 1.0
# How late after the timeout a connection may still be closed (a loaded 2-core machine).
MARGIN_S = 3.0


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed (or reset) the connection; False when it stays open
    through the socket's timeout."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_clients_that_send_half_a_header_are_dropped_while_others_are_served(
    start_daemon: Callable[..., Started],
) -> None:
    started = start_daemon(DEEPDOCKD_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S))
    opened: dict[socket.socket, float] = {}
    closed_after: dict[socket.socket, float] = {}
    served: list[int] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", started.port))
            sock.sendall(HALF_A_HEADER)
            opened[sock] = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", started.port))  # sends nothing at all
        opened[silent] = time.monotonic()
        deadline = time.monotonic() + HEADER_TIMEOUT_S + MARGIN_S
        while len(closed_after) < len(opened) and time.monotonic() < deadline:
            served.append(http_request("GET", f"{started.base}/metrics", timeout_s=5)[0])
            waiting = [s for s in opened if s not in closed_after]
            readable, _, _ = select.select(waiting, [], [], 0.1)
            for sock in readable:
                if closed_by_peer(sock):
                    closed_after[sock] = time.monotonic() - opened[sock]
    finally:
        for sock in opened:
            sock.close()

    assert len(closed_after) == len(opened), f"{len(opened) - len(closed_after)} still open"
    assert min(closed_after.values()) >= HEADER_TIMEOUT_S - 0.1
    assert max(closed_after.values()) <= HEADER_TIMEOUT_S + MARGIN_S
    assert len(served) >= 5
    assert set(served) == {200}


def read_answer(sock: socket.socket) -> tuple[bytes, Any]:
    """The status line and JSON body of one answer on a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: (\d+)", head)
    assert length, head
    while len(body) < int(length[1]):
        body += sock.recv(4096)
    return head.split(b"\r\n")[0], json.loads(body)


def test_a_slow_body_and_an_idle_kept_alive_connection_are_not_dropped(
    start_daemon: Callable[..., Started],
) -> None:
    started = start_daemon(DEEPDOCKD_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S))
    body = json.dumps({"name": "box"}).encode()
    with socket.create_connection(("127.0.0.1", started.port), timeout=10) as sock:
        sock.sendall(
            b"POST /containers/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        # The header is whole; the body takes three times the header timeout.
        chunks = [body[i : i + 4] for i in range(0, len(body), 4)]
        for chunk in chunks:
            time.sleep(3 * HEADER_TIMEOUT_S / len(chunks))
            sock.sendall(chunk)
        slow_body = read_answer(sock)
        time.sleep(2 * HEADER_TIMEOUT_S)  # idle between two requests: aiohttp's keep-alive
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        after_idle = read_answer(sock)
        # A later request's header has the same time as the first's.
        sock.sendall(HALF_A_HEADER)
        sent = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT_S + MARGIN_S)
        dropped = closed_by_peer(sock)
        dropped_after = time.monotonic() - sent

    assert slow_body[0] == b"HTTP/1.1 422 Unprocessable Entity"
    assert slow_body[1]["error"]["details"]["fields"] == {
        field: "Missing data for required field." for field in ("image", "user_name")
    }  # (the password is asked for once these are there: keys may stand in for it)
    assert after_idle[0] == b"HTTP/1.1 200 OK"
    assert dropped
    assert HEADER_TIMEOUT_S - 0.1 <= dropped_after <= HEADER_TIMEOUT_S + MARGIN_S

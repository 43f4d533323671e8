"""Client connections that cannot pile up, tried as a stranger without a token would: idle
keep-alive connections, many of them, and more than a client's share from one address; and
the start-up check that the process's file limit fits the connection caps.

Every test runs deepdockd as a process (on no Docker: none of them needs one), on 127.0.0.1;
other clients come from other loopback addresses (127.0.0.2, ...), which Linux routes to it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

import pytest

from tests.support.daemon import Started, http_request

pytestmark = pytest.mark.process

ASK = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# How late after a deadline a connection may still be closed (a loaded 2-core machine).
MARGIN_S = 3.0


def idle_connection(port: int, source: str, timeout_s: float = 5) -> socket.socket:
    """A connection from ``source`` that asks for /metrics once, reads the answer, and then
    stays idle (kept alive) for as long as the daemon lets it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout_s, source_address=(source, 0))
    try:
        sock.sendall(ASK)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "closed before answering"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = re.search(rb"(?im)^content-length: (\d+)", head)
        assert length, head
        while len(body) < int(length[1]):
            body += sock.recv(4096)
    except BaseException:
        sock.close()
        raise
    return sock


def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the other end closes (or resets) the connection within ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


KEEPALIVE_TIMEOUT_S = 1.0


def test_idle_kept_alive_connections_are_closed_after_the_keepalive_timeout(
    start_daemon: Callable[..., Started],
) -> None:
    started = start_daemon(DEEPDOCKD_KEEPALIVE_TIMEOUT=str(KEEPALIVE_TIMEOUT_S))
    socks = [idle_connection(started.port, "127.0.0.2") for _ in range(20)]
    answered = time.monotonic()
    try:
        closed_after = []
        for sock in socks:
            if closed_by_peer(sock, KEEPALIVE_TIMEOUT_S + MARGIN_S):
                closed_after.append(time.monotonic() - answered)
        # The daemon still serves, and a connection in use is not idle: a request on a fresh
        # connection is answered.
        status, _ = http_request("GET", f"{started.base}/metrics", timeout_s=5)
    finally:
        for sock in socks:
            sock.close()

    assert len(closed_after) == len(socks), f"{len(socks) - len(closed_after)} still open"
    assert min(closed_after) >= KEEPALIVE_TIMEOUT_S - 0.1
    assert max(closed_after) <= KEEPALIVE_TIMEOUT_S + MARGIN_S
    assert status == 200


# A service manager's usual file limit (systemd: soft 1024, hard 524288), scaled down: the
# soft limit is too small for the connections below, the hard one is not.
LOW_SOFT_NOFILE = 256
ROOMY_HARD_NOFILE = 8192
IDLE_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 6)]
IDLE_PER_ADDRESS = 100


def test_a_valid_request_succeeds_while_hundreds_of_idle_connections_are_open(
    start_daemon: Callable[..., Started],
) -> None:
    started = start_daemon(
        nofile=(LOW_SOFT_NOFILE, ROOMY_HARD_NOFILE), DEEPDOCKD_KEEPALIVE_TIMEOUT="120"
    )
    idle: list[socket.socket] = []
    try:
        for source in IDLE_ADDRESSES:
            for _ in range(IDLE_PER_ADDRESS):
                try:
                    idle.append(idle_connection(started.port, source, timeout_s=2))
                except (OSError, AssertionError):
                    break  # the daemon takes no more: the attack has done its work
        try:
            served: int | str = http_request("GET", f"{started.base}/metrics", timeout_s=5)[0]
        except (OSError, AssertionError) as exc:  # no answer, or one outside the spec
            served = repr(exc)
        still_open = sum(not closed_by_peer(sock, 0.01) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
        _, log = started.daemon.stop()

    assert served == 200
    assert len(idle) == len(IDLE_ADDRESSES) * IDLE_PER_ADDRESS
    assert still_open == len(idle)  # each address is within its share: none was closed
    assert "Too many open files" not in log
    assert (
        f"raised the soft limit on open files (RLIMIT_NOFILE) from {LOW_SOFT_NOFILE} to "
        f"{ROOMY_HARD_NOFILE}"
    ) in log


PER_CLIENT = 20
OVER = 5


def test_a_client_over_its_connection_cap_has_its_newest_closed_while_others_are_served(
    start_daemon: Callable[..., Started],
) -> None:
    started = start_daemon(DEEPDOCKD_MAX_CONNECTIONS_PER_CLIENT=str(PER_CLIENT))
    held = [idle_connection(started.port, "127.0.0.2") for _ in range(PER_CLIENT)]
    over: list[socket.socket] = []
    try:
        for _ in range(OVER):
            over.append(socket.create_connection(("127.0.0.1", started.port), 5, ("127.0.0.2", 0)))
        over_closed = [closed_by_peer(sock, MARGIN_S) for sock in over]
        # Another client is served meanwhile, on a new connection.
        served = http_request("GET", f"{started.base}/metrics", timeout_s=5)[0]
        # The first client's connections within its share are untouched and still answer.
        held[0].sendall(ASK)
        held[0].settimeout(5)
        again = held[0].recv(4096)
        held_open = sum(not closed_by_peer(sock, 0.01) for sock in held[1:])
    finally:
        for sock in held + over:
            sock.close()
        _, log = started.daemon.stop()

    assert over_closed == [True] * OVER
    assert served == 200
    assert again.startswith(b"HTTP/1.1 200 ")
    assert held_open == PER_CLIENT - 1
    # One log line for the address, however many of its connections were closed in a minute.
    lines = [line for line in log.splitlines() if "max_connections_per_client" in line]
    assert len(lines) == 1, lines
    assert "127.0.0.2" in lines[0]
    assert f"({PER_CLIENT})" in lines[0]


TIGHT_NOFILE = 256


def test_the_daemon_says_at_start_when_its_file_limit_does_not_fit_the_connection_caps(
    start_daemon: Callable[..., Started],
) -> None:
    started = start_daemon(nofile=(TIGHT_NOFILE, TIGHT_NOFILE))
    _, log = started.daemon.stop()

    warning = [line for line in log.splitlines() if "RLIMIT_NOFILE" in line]
    assert len(warning) == 1, log
    assert " WARNING " in warning[0]
    assert f"the limit on open files (RLIMIT_NOFILE) is {TIGHT_NOFILE}" in warning[0]
    assert "max_connections (4096)" in warning[0]
    assert "LimitNOFILE=" in warning[0]

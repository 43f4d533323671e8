"""Run deepdockd as a real process, the way a person or systemd starts it."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support import lanes
from tests.support.spec import answer_problem


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any DEEPDOCKD_ setting the caller may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPDOCKD_")}
    # No local socket unless the test asks for one: daemons of one run would share its path.
    env["DEEPDOCKD_HOST_USERS"] = "false"
    # No egress rules unless the test asks for them: they are the host's, and each test's
    # namespace would leave its own behind (tests/test_egress.py turns them on and removes them).
    env["DEEPDOCKD_EGRESS_POLICY"] = "false"
    env.update(extra or {})
    return env


def run_deepdockd(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (for starts that must fail)."""
    return subprocess.run(
        [sys.executable, "-m", "deepdockd", *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class AnswerOutsideSpec(AssertionError):
    """deepdockd answered something that openapi.yaml does not allow."""


def http_request(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10,
) -> tuple[int, bytes]:
    """One request to a deepdockd process: its status and body. Every answer is checked
    against openapi.yaml, as the in-process tests' answers are: one outside the spec raises
    ``AnswerOutsideSpec``, whatever the caller meant to assert."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, answer_headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, answer_headers, body = exc.code, dict(exc.headers), exc.read()
    problem = answer_problem(method, url, status, answer_headers, body, request_headers=sent)
    if problem:
        raise AnswerOutsideSpec(f"{method} {url} -> {status}: {problem}")
    return status, body


def http_json(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """``http_request`` with the body parsed as JSON."""
    status, body = http_request(method, url, **kwargs)
    return status, json.loads(body)


def http_get(url: str, timeout_s: float = 5) -> tuple[int, bytes]:
    return http_request("GET", url, timeout_s=timeout_s)


# --- ports: one a daemon process, and which process listens on one ---

_HANDED_OUT: set[int] = set()


def daemon_port() -> int:
    """A loopback port for one deepdockd process: free now (the kernel's choice, as a bind to
    port 0 makes it, so concurrent runs on one machine do not draw the same numbers) and never
    handed to another daemon of this run, so that no daemon answers for another."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (TCP, IPv4 and IPv6), from
    /proc/net/tcp: columns local_address (hex ip:port), st (0A: LISTEN) and inode."""
    inodes = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets that process ``pid`` holds open (``socket:[INODE]``)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port``."""
    listening = _listening_inodes(port)
    return bool(listening) and bool(listening & _socket_inodes(pid))


def listening_pids(port: int) -> set[int]:
    """The processes (of those this user may look into) listening on ``port``."""
    listening = _listening_inodes(port)
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and listening & _socket_inodes(int(entry.name)):
            pids.add(int(entry.name))
    return pids


class Daemon:
    """A deepdockd process started in the background; ``stop()`` sends SIGTERM and returns
    its exit status and everything it logged. Auth is off unless ``auth`` (tests of other
    things than auth need no token)."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        log: Path,
        auth: bool = False,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        """``nofile``: the process's (soft, hard) RLIMIT_NOFILE, as ``prlimit --nofile``."""
        lanes.require("process", "starts deepdockd as a serving process")
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deepdockd", *args],
            env=clean_env({"DEEPDOCKD_AUTH": str(auth).lower(), **(env or {})}),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile))
            if nofile
            else None,
        )

    def wait_until_serving(self, url: str, timeout_s: float = 20) -> None:
        """Return once this process answers ``url``: an answer counts only while the port's
        listening socket is this process's own, so a daemon that another test (or an earlier
        one of this test) left on the port is never taken for this one."""
        port = urlsplit(url).port
        assert port is not None, url
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"deepdockd exited early:\n{self.log.read_text()}")
            try:
                http_get(url, timeout_s=1)
            except OSError:
                time.sleep(0.1)
                continue
            if listens_on(self.process.pid, port):
                return
            time.sleep(0.1)  # another process answered: this one will fail to listen, or come
        listeners = listening_pids(port)
        raise AssertionError(
            f"deepdockd (pid {self.process.pid}) did not serve {url} within {timeout_s} s"
            + (f"; pid {sorted(listeners)} listens there" if listeners else "")
        )

    def wait_for_exit(self, timeout_s: float = 20) -> tuple[int, str]:
        """For a daemon that must stop by itself."""
        status = self.process.wait(timeout_s)
        self._log_file.close()
        return status, self.log.read_text()

    def stop(self, timeout_s: float = 20) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._log_file.close()
        return status, self.log.read_text()


@dataclass
class RunningDaemon:
    """A deepdockd process serving on the rig: its process, URL and state directory."""

    daemon: Daemon
    base: str
    state_dir: Path

    def stop(self) -> tuple[int, str]:
        return self.daemon.stop()


@dataclass
class Started:
    """A deepdockd process with no Docker behind it (``start_daemon`` in conftest.py)."""

    daemon: Daemon
    base: str
    port: int

"""Real host accounts for the local socket's tests: made with useradd and groupadd, removed
when the test ends; calls made as them with runuser, over ``curl --unix-socket`` and with the
``deepdock`` client. Every answer is checked against openapi.yaml."""

from __future__ import annotations

import importlib.metadata
import json
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from tests.support.spec import answer_problem

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "client" / "deepdock"
# Debian's python3, which any host user may run (the test environment's own Python may sit
# in root's home, out of their reach).
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class HostAccounts:
    """Accounts and groups made by one test; ``remove()`` takes them all away again."""

    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def group(self) -> str:
        name = f"ddg{uuid.uuid4().hex[:8]}"
        _run("groupadd", name)
        self.groups.append(name)
        return name

    def user(self, *groups: str) -> str:
        """A new account (with a home), in ``groups`` besides its own."""
        name = f"ddu{uuid.uuid4().hex[:8]}"
        extra = ["--groups", ",".join(groups)] if groups else []
        _run("useradd", "--create-home", "--shell", "/bin/sh", *extra, name)
        self.users.append(name)
        return name

    def gone(self, name: str) -> None:
        _run("userdel", "--remove", name)
        self.users.remove(name)

    def remove(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        for name in self.groups:
            subprocess.run(["groupdel", name], capture_output=True, check=False)


def host_accounts() -> Iterator[HostAccounts]:
    accounts = HostAccounts()
    try:
        yield accounts
    finally:
        accounts.remove()


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def world_readable_dir() -> Path:
    """A new directory every host user may enter and read (a pytest tmp_path is root's
    alone)."""
    path = Path(tempfile.mkdtemp(prefix="deepdockd-test-"))
    path.chmod(0o755)
    return path


def on_socket(
    socket: Path,
    method: str,
    path: str,
    *,
    user: str | None = None,
    uid: int | None = None,
    body: Any = None,
    token: str | None = None,
) -> tuple[int, Any]:
    """One request over the local socket with curl, run as host account ``user`` (runuser)
    or as a bare ``uid`` that has no account (setpriv); its status and JSON answer."""
    curl = ["curl", "--silent", "--include", "--unix-socket", str(socket), "-X", method]
    sent = {}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        sent["Content-Type"] = "application/json"
        curl += ["--data-binary", json.dumps(body)]
    for name, value in sent.items():
        curl += ["--header", f"{name}: {value}"]
    url = f"http://localhost{path}"
    if user is not None:
        argv = ["runuser", "-u", user, "--", *curl, url]
    else:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *curl, url]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=180)
    head, _, answer = done.stdout.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    status = int(status_line.split()[1])
    problem = answer_problem(method, url, status, headers, answer, request_headers=sent)
    assert problem is None, f"{method} {path} -> {status}: {problem}"
    return status, json.loads(answer)


def client_install() -> Path:
    """The deepdock client and its pure-Python dependencies, copied as ``pip install
    ./client`` would put them, into a directory any host user may read: for Debian's python3."""
    target = world_readable_dir()
    shutil.copytree(
        CLIENT_SOURCE, target / "deepdock", ignore=shutil.ignore_patterns("__pycache__")
    )
    wanted, seen = ["click", "rich", "httpx"], set()
    while wanted:
        distribution = importlib.metadata.distribution(wanted.pop())
        if distribution.metadata["Name"].lower() in seen:
            continue
        seen.add(distribution.metadata["Name"].lower())
        for file in distribution.files or []:
            if file.parts[0].endswith((".dist-info", "__pycache__")) or ".." in file.parts:
                continue
            copy = target / file
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(distribution.locate_file(file), copy)  # type: ignore[arg-type]
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def deepdock_as(
    user: str, install: Path, socket: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``deepdock ARGS`` run as host account ``user``, in their home, on the server: no URL,
    no server configured, the daemon's socket at ``socket``."""
    environment = {
        "HOME": f"/home/{user}",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(install),
        "PYTHONDONTWRITEBYTECODE": "1",
        "DEEPDOCK_SOCKET": str(socket),
        **(env or {}),
    }
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i",
         *(f"{k}={v}" for k, v in environment.items()), SYSTEM_PYTHON, "-m", "deepdock", *args],
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )  # fmt: skip


def no_such_uid() -> int:
    """A uid no account has."""
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1

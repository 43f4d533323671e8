"""The token files at start: a tokens.json or admin.token that others could read or change,
or that another user owns, stops ``deepdockd`` (and ``deepdockd token``) with one line that
names the file and the command that fixes it; after that command, the daemon starts."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from deepdockd.tokens import TokenStore

from tests.support.daemon import Daemon, http_json, run_deepdockd

OTHER_UID = 12345  # no user of this machine: a file a stranger owns
NO_DOCKER = "unix:///nonexistent/docker.sock"  # not needed to start: the refusal comes first


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory as the first start leaves it: tokens.json and admin.token, 0600."""
    state_dir = tmp_path / "state"
    TokenStore(state_dir).ensure_admin()
    return state_dir


def empty_config(tmp_path: Path) -> str:
    """A config file of the test's own, so that a config on this machine cannot interfere."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    return str(config)


def start_args(tmp_path: Path, state: Path) -> list[str]:
    return [
        "--config",
        empty_config(tmp_path),
        "--state-dir",
        str(state),
        "--docker-host",
        NO_DOCKER,
    ]


def the_fix(message: str) -> list[str]:
    """The command the message tells the operator to run."""
    return shlex.split(message.rstrip("\n").rsplit("; run ", 1)[1])


READABLE = "others could read a token from it"
WRITABLE = "others could change it"


@pytest.mark.process  # then deepdockd starts and serves on the fixed file
@pytest.mark.parametrize(
    ("name", "mode", "why"),
    [
        pytest.param("tokens.json", 0o640, READABLE, id="tokens.json-0640"),  # the group reads
        pytest.param("tokens.json", 0o604, READABLE, id="tokens.json-0604"),  # everyone reads
        pytest.param("tokens.json", 0o620, WRITABLE, id="tokens.json-0620"),  # adds a token
        pytest.param("admin.token", 0o640, READABLE, id="admin.token-0640"),
        pytest.param("admin.token", 0o606, READABLE, id="admin.token-0606"),
    ],
)
def test_a_token_file_others_can_reach_stops_the_start_until_chmod_600(
    tmp_path: Path, state: Path, free_port: int, name: str, mode: int, why: str
) -> None:
    path = state / name
    os.chmod(path, mode)
    args = start_args(tmp_path, state)

    refused = run_deepdockd(*args)

    assert refused.returncode == 2
    assert refused.stderr == f"deepdockd: {path} has mode {mode:04o}: {why}; run chmod 600 {path}\n"
    assert the_fix(refused.stderr) == ["chmod", "600", str(path)]
    assert stat.S_IMODE(path.stat().st_mode) == mode  # refused, not silently changed

    subprocess.run(the_fix(refused.stderr), check=True)
    assert_starts_and_serves(tmp_path, state, args, free_port)


@pytest.mark.rig  # root: it gives the file to another user
@pytest.mark.process  # then deepdockd starts and serves on the fixed file
@pytest.mark.parametrize("name", ["tokens.json", "admin.token"])
def test_a_token_file_another_user_owns_stops_the_start_until_chown(
    tmp_path: Path, state: Path, free_port: int, name: str
) -> None:
    path = state / name
    os.chown(path, OTHER_UID, -1)  # still mode 0600: only its owner, a stranger, reads it
    args = start_args(tmp_path, state)

    refused = run_deepdockd(*args)

    uid = os.geteuid()
    assert refused.returncode == 2
    assert refused.stderr == (
        f"deepdockd: {path} belongs to uid {OTHER_UID}, not to the daemon's user (uid {uid}); "
        f"run chown {uid} {path}\n"
    )
    assert path.stat().st_uid == OTHER_UID

    subprocess.run(the_fix(refused.stderr), check=True)
    assert_starts_and_serves(tmp_path, state, args, free_port)


def test_token_add_refuses_to_write_to_a_file_others_can_read(tmp_path: Path, state: Path) -> None:
    path = state / "tokens.json"
    os.chmod(path, 0o644)
    before = path.read_text()

    config = empty_config(tmp_path)
    refused = run_deepdockd("token", "--config", config, "--state-dir", str(state), "add", "bob")

    assert refused.returncode == 2
    assert refused.stdout == ""  # no token was made
    assert (
        refused.stderr
        == f"deepdockd token: {path} has mode 0644: {READABLE}; run chmod 600 {path}\n"
    )
    assert path.read_text() == before


def assert_starts_and_serves(tmp_path: Path, state: Path, args: list[str], port: int) -> None:
    """The daemon starts on these files and knows the admin's token from them."""
    admin_token = (state / "admin.token").read_text().strip()
    daemon = Daemon(*args, "--port", str(port), log=tmp_path / "daemon.log", auth=True)
    base = f"http://127.0.0.1:{port}"
    try:
        daemon.wait_until_serving(f"{base}/healthz")
        with_token = http_json("GET", f"{base}/metrics", token=admin_token)[0]
        without = http_json("GET", f"{base}/metrics")[0]
    finally:
        status, log = daemon.stop()

    assert (with_token, without) == (200, 401)
    assert status == 0
    assert "first start" not in log  # the admin token it kept, not a new one

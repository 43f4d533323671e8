"""A token file broken while the daemon runs (a hand edit gone wrong, a directory in its place)
locks nobody out and answers nothing undocumented: the daemon keeps the last token set it
read, says so once in its log, and takes the file again once it is mended."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon, clean_env, http_json
from tests.support.rig import Rig


def token_add(rig: Rig, namespace: str, state_dir: Path, user: str) -> str:
    """``deepdockd token add USER`` on the rig's Docker, in a namespace where the name owns
    nothing (the command asks; see test_user_lifecycle.py)."""
    on_rig = {"DEEPDOCKD_DOCKER_HOST": rig.docker_host, "DEEPDOCKD_NAMESPACE": namespace}
    added = subprocess.run(
        [sys.executable, "-m", "deepdockd", "token", "--state-dir", str(state_dir), "add", user],
        env=clean_env(on_rig), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return added.stdout.strip()


def break_by_writing(text: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        path.write_text(text)

    return damage


def break_with_a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (break_by_writing('{"users": {"alice": '), "Expecting value"),
        (break_by_writing('{"users": {"alice": {"role": "user"}}}'), "not a token file"),
        (break_by_writing("[1, 2]"), "not a token file"),
        (break_with_a_directory, "Is a directory"),
    ],
    ids=["truncated", "entry-without-hash", "not-an-object", "a-directory"],
)
def test_a_broken_token_file_keeps_the_last_good_tokens(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    namespace: str,
    damage: Callable[[Path], None],
    why: str,
) -> None:
    daemon = rig_daemon(auth=True)
    tokens_file = daemon.state_dir / "tokens.json"
    alice = token_add(rig, namespace, daemon.state_dir, "alice")
    base = daemon.base
    try:
        before = http_json("GET", f"{base}/containers", token=alice)
        good = tokens_file.read_text()
        damage(tokens_file)
        while_broken = [http_json("GET", f"{base}/containers", token=alice) for _ in range(3)]
        stranger = http_json("GET", f"{base}/containers", token="ddk_not-a-token")
        if tokens_file.is_dir():
            shutil.rmtree(tokens_file)
        tokens_file.write_text(good)  # mended by hand: alice is there, bob is not
        tokens_file.chmod(0o600)
        bob = token_add(rig, namespace, daemon.state_dir, "bob")
        after = http_json("GET", f"{base}/containers", token=bob)
    finally:
        status, log = daemon.stop()

    assert before == (200, {"containers": []})
    assert while_broken == [(200, {"containers": []})] * 3
    assert stranger[0] == 401
    assert after == (200, {"containers": []})
    reports = [line for line in log.splitlines() if f"cannot read {tokens_file}" in line]
    assert len(reports) == 1, log  # once for the broken version, not once a request
    assert why in reports[0]
    assert "still accepting the 2 token(s) read before" in reports[0]
    assert "internal_error" not in log
    assert "Traceback" not in log
    assert status == 0


def test_a_token_file_broken_before_any_request_keeps_the_tokens_read_at_start(
    rig_daemon: Callable[..., RunningDaemon],
) -> None:
    daemon = rig_daemon(auth=True)
    tokens_file = daemon.state_dir / "tokens.json"
    admin = (daemon.state_dir / "admin.token").read_text().strip()
    try:
        tokens_file.write_text(json.dumps({"users": "nobody"}))
        # The daemon read the admin's token at start, so that one goes on working.
        kept = http_json("GET", f"{daemon.base}/containers", token=admin)
    finally:
        status, log = daemon.stop()

    assert kept == (200, {"containers": []})
    assert "still accepting the 1 token(s) read before" in log
    assert status == 0

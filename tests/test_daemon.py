"""deepdockd as a real process: it serves, logs each request, honours its config sources,
and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, http_get
from tests.support.rig import Rig

# Every test here starts deepdockd as a process of its own.
pytestmark = pytest.mark.process


def test_daemon_serves_healthz_and_logs_each_request(
    rig: Rig, tmp_path: Path, free_port: int
) -> None:
    config = tmp_path / "deepdockd.toml"
    config.write_text(f'docker_host = "{rig.docker_host}"\n')
    url = f"http://127.0.0.1:{free_port}/healthz"
    daemon = Daemon(
        "--config",
        str(config),
        "--port",
        str(free_port),
        "--state-dir",
        str(tmp_path / "state"),
        log=tmp_path / "daemon.log",
        auth=True,  # the default; /healthz needs no token
    )
    try:
        daemon.wait_until_serving(url)
        status, body = http_get(url)
    finally:
        exit_status, log = daemon.stop()

    assert status == 200
    assert json.loads(body)["docker"]["ok"] is True
    assert re.search(
        r"deepdockd\.access: method=GET path=/healthz status=200 duration_ms=[\d.]+ user=- "
        r"client=127\.0\.0\.1",
        log,
    ), log
    assert exit_status == 0
    assert "Traceback" not in log
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_flag_beats_environment_beats_file_in_a_real_start(
    rig: Rig, tmp_path: Path, free_port: int
) -> None:
    config = tmp_path / "deepdockd.toml"
    config.write_text(f'docker_host = "{rig.docker_host}"\nport = 1\nnamespace = "from-file"\n')
    daemon = Daemon(
        "--config",
        str(config),
        "--port",
        str(free_port),
        "--state-dir",
        str(tmp_path / "state"),
        env={"DEEPDOCKD_PORT": "2", "DEEPDOCKD_NAMESPACE": "from-env"},
        log=tmp_path / "daemon.log",
    )
    try:
        daemon.wait_until_serving(f"http://127.0.0.1:{free_port}/healthz")
    finally:
        exit_status, log = daemon.stop()

    assert exit_status == 0
    listening = f"listening on http://127.0.0.1:{free_port}, Docker at {rig.docker_host}"
    assert f"{listening}, namespace 'from-env'" in log


def test_port_in_use_is_one_clear_line(rig: Rig, tmp_path: Path, free_port: int) -> None:
    first = Daemon(
        "--port",
        str(free_port),
        "--docker-host",
        rig.docker_host,
        "--state-dir",
        str(tmp_path / "state"),
        log=tmp_path / "first.log",
    )
    try:
        first.wait_until_serving(f"http://127.0.0.1:{free_port}/healthz")
        second = Daemon(
            "--port",
            str(free_port),
            "--docker-host",
            rig.docker_host,
            "--state-dir",
            str(tmp_path / "state"),
            log=tmp_path / "second.log",
        )
        status, second_log = second.wait_for_exit()
    finally:
        first.stop()

    assert status == 1
    assert f"cannot listen on 127.0.0.1:{free_port}" in second_log
    assert "Traceback" not in second_log

"""Operations: the systemd unit and default config, sd_notify and the watchdog, riding out a
Docker restart, a clean stop on SIGTERM, and JSON logs."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepdockd.config import PARSERS, Config, load_config
from deepdockd.server import CANCEL_GRACE_S

from tests.support.daemon import Daemon, RunningDaemon, http_get, http_json
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig, RigError

ROOT = Path(__file__).parents[1]
UNIT = ROOT / "systemd" / "deepdockd.service"
SAMPLE_CONFIG = ROOT / "systemd" / "deepdockd.toml"


def post(url: str, fields: dict[str, Any] | None = None) -> tuple[int, Any]:
    """A POST to a deepdockd process, its answer checked against openapi.yaml; a create or a
    start waits for sshd, so it may take a while."""
    return http_json("POST", url, json_body=fields, timeout_s=120)


def get(url: str) -> tuple[int, Any]:
    return http_json("GET", url)


def port_range(ports: tuple[int, int]) -> str:
    """An ``ssh_port_range`` as the environment gives it."""
    return f"{ports[0]}-{ports[1]}"


def wait_until(condition: Any, what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.2)


# --- the unit and the default config ---


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # A root with the system's units and an executable where `make install` puts deepdockd.
    shutil.copytree("/lib/systemd/system", tmp_path / "lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system/deepdockd.service")
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    # The console script of the environment that runs the tests (.venv, or make test-floor's).
    shutil.copy(Path(sys.executable).parent / "deepdockd", tmp_path / "usr/local/bin/deepdockd")
    (tmp_path / "bin").mkdir()
    shutil.copy("/bin/kill", tmp_path / "bin/kill")  # ExecReload's

    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={tmp_path}", "deepdockd.service"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == ""


def test_the_unit_is_a_notify_service_that_survives_docker_restarts() -> None:
    unit = configparser.ConfigParser(strict=False)
    unit.read(UNIT)

    assert unit["Service"]["Type"] == "notify"
    assert unit["Service"]["Restart"] == "on-failure"
    assert int(unit["Service"]["WatchdogSec"]) > 0
    assert unit["Service"]["StateDirectory"] == "deepdockd"
    assert "docker.service" in unit["Unit"]["Wants"]
    assert "docker.service" in unit["Unit"]["After"]
    assert "Requires" not in unit["Unit"]
    for option in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert option in unit["Service"]
    assert "PrivateDevices" not in unit["Service"]  # it would hide /dev/nvidia*
    # systemctl reload: SIGHUP, which reloads the fair-share settings.
    assert unit["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_the_default_config_shows_every_key_with_its_default(tmp_path: Path) -> None:
    lines = SAMPLE_CONFIG.read_text().splitlines()
    settings = [line.removeprefix("# ") for line in lines if re.match(r"# [a-z_]+ = ", line)]
    uncommented = tmp_path / "all.toml"
    uncommented.write_text("\n".join(settings) + "\n")

    assert tomllib.loads(SAMPLE_CONFIG.read_text()) == {}  # everything commented
    assert {s.split(" = ")[0] for s in settings} == set(PARSERS)
    assert load_config({"config": str(uncommented)}, {}) == Config()


# --- systemd's notifications ---


@pytest.mark.process  # deepdockd under a stand-in for systemd's notify socket
def test_ready_once_listening_then_watchdog_pings_then_stopping(
    rig: Rig, tmp_path: Path, free_port: int
) -> None:
    # A daemon of its own: READY=1 must come before anything else talks to it.
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}  # a ping every 0.1 s
    daemon = Daemon(
        "--port", str(free_port), "--docker-host", rig.docker_host, "--state-dir", str(tmp_path / "s"),
        env=env, log=tmp_path / "daemon.log",
    )  # fmt: skip
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1")
        with socket.create_connection(("127.0.0.1", free_port), timeout=2):
            pass  # listening when READY=1 came
        pings = [listener.recv(4096).decode() for _ in range(5)]
        assert pings == ["WATCHDOG=1"] * 5
    finally:
        status, log = daemon.stop()
    messages = []
    listener.settimeout(2)
    while not messages or messages[-1] == "WATCHDOG=1":
        messages.append(listener.recv(4096).decode())
    listener.close()

    assert messages[-1] == "STOPPING=1"
    assert status == 0
    assert "Traceback" not in log


# --- Docker going away and coming back ---


def test_a_docker_restart_is_ridden_out_without_restarting_deepdockd(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    namespace: str,
    ssh_ports: tuple[int, int],
) -> None:
    env = {"DEEPDOCKD_NAMESPACE": namespace, "DEEPDOCKD_SSH_PORT_RANGE": port_range(ssh_ports)}
    daemon = rig_daemon(env=env)
    base = daemon.base
    try:
        fields = {
            "name": f"{namespace}-kept",
            "image": DEBIAN_SSH_IMAGE,
            "user_name": "ops",
            "password": "pw",
        }
        assert post(f"{base}/containers/create", fields)[0] == 201

        with rig.docker_stopped():
            containers = get(f"{base}/containers")
            images = get(f"{base}/images")
            metrics = get(f"{base}/metrics")
            health = get(f"{base}/healthz")

        assert containers[0] == images[0] == 503
        assert containers[1]["error"]["code"] == "docker_unavailable"
        assert "Docker is not reachable" in containers[1]["error"]["message"]
        assert metrics[0] == 200
        assert health[0] == 503
        assert health[1]["docker"]["ok"] is False

        def listed_running() -> bool:
            status, body = get(f"{base}/containers")
            return status == 200 and [c["status"] for c in body["containers"]] == ["running"]

        wait_until(listed_running, "the container listed as running again")
        name = fields["name"]
        assert post(f"{base}/containers/{name}/stop")[0] == 200
        assert post(f"{base}/containers/{name}/start")[0] == 200
        assert get(f"{base}/healthz")[0] == 200
        assert daemon.daemon.process.poll() is None  # the same process all along
    finally:
        status, log = daemon.stop()
        ids = rig.docker("ps", "-aq", "--filter", f"label=deepdockd.namespace={namespace}").split()
        if ids:
            rig.docker("rm", "--force", *ids)
    assert status == 0
    assert "Traceback" not in log


# --- stopping ---


def test_sigterm_lets_a_slow_request_finish_and_exits_cleanly(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    namespace: str,
    ssh_ports: tuple[int, int],
    slow_sshd_image: str,
) -> None:
    env = {"DEEPDOCKD_NAMESPACE": namespace, "DEEPDOCKD_SSH_PORT_RANGE": port_range(ssh_ports)}
    running = rig_daemon(env=env)
    daemon, base = running.daemon, running.base
    name = f"{namespace}-slow"
    answer: list[tuple[int, Any]] = []
    try:
        # An sshd that starts 3 s late: a slow request.
        fields = {"name": name, "image": slow_sshd_image, "user_name": "ops", "password": "pw"}
        request = threading.Thread(
            target=lambda: answer.append(post(f"{base}/containers/create", fields))
        )
        request.start()
        wait_until(
            lambda: rig.docker("ps", "-q", "--filter", f"name=^{name}$").strip(),
            "the create in flight",
        )

        daemon.process.send_signal(signal.SIGTERM)
        request.join(timeout=120)
        exit_status, log = daemon.wait_for_exit(timeout_s=60)
    finally:
        ids = rig.docker("ps", "-aq", "--filter", f"label=deepdockd.namespace={namespace}").split()
        if ids:
            rig.docker("rm", "--force", *ids)

    assert answer, "the create got no answer"
    assert answer[0][0] == 201, answer
    assert exit_status == 0
    assert "Traceback" not in log
    assert log.index("stopping: finishing the requests in flight") < log.index(
        "method=POST path=/containers/create status=201"
    )
    assert log.rstrip().endswith("deepdockd: stopped")


def processes_of(rig: Rig, container: str) -> str:
    """``docker top``: the container's processes, or "" while it is not running."""
    try:
        return rig.docker("top", container)
    except RigError:
        return ""


def test_sigterm_cancels_a_request_that_outlasts_the_shutdown_timeout(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    namespace: str,
    silent_sshd_image: str,
    ssh_ports: tuple[int, int],
) -> None:
    shutdown_timeout_s = 1
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": port_range(ssh_ports),
        "DEEPDOCKD_SHUTDOWN_TIMEOUT": str(shutdown_timeout_s),
    }
    running = rig_daemon(env=env)
    daemon, base = running.daemon, running.base
    name = f"{namespace}-stuck"
    outcome: list[object] = []

    def create() -> None:
        fields = {"name": name, "image": silent_sshd_image, "user_name": "ops", "password": "pw"}
        try:
            outcome.append(post(f"{base}/containers/create", fields))
        except Exception as exc:  # what the client met, for the test to look at
            outcome.append(exc)

    request = threading.Thread(target=create)
    try:
        request.start()
        # Running, its sshd asleep: the create waits for an SSH server that will not come.
        wait_until(
            lambda: outcome or "sleep 3600" in processes_of(rig, name),
            "the create in flight, its container's sshd asleep",
        )
        assert not outcome, f"the create answered first: {outcome}\n{daemon.log.read_text()}"

        stopping = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        exit_status, log = daemon.wait_for_exit(timeout_s=60)
        took_s = time.monotonic() - stopping
        request.join(timeout=30)
        left = rig.docker("ps", "-aq", "--filter", f"label=deepdockd.namespace={namespace}")
    finally:
        ids = rig.docker("ps", "-aq", "--filter", f"label=deepdockd.namespace={namespace}").split()
        if ids:
            rig.docker("rm", "--force", *ids)

    # It waited for the request as long as it was told, then no longer than the clean-up.
    assert shutdown_timeout_s <= took_s < shutdown_timeout_s + CANCEL_GRACE_S
    assert exit_status == 0
    assert (
        f"shutdown_timeout ({shutdown_timeout_s} s) ran out: cancelling 1 request(s) still "
        "in flight: POST /containers/create"
    ) in log
    assert "Traceback" not in log
    assert log.rstrip().endswith("deepdockd: stopped")
    # The client's connection closed without an answer, and the half-made container is gone.
    [answer] = outcome
    assert isinstance(answer, ConnectionError), answer
    assert left.split() == []


# --- logs ---


def test_json_logs_are_one_object_a_line(rig_daemon: Callable[..., RunningDaemon]) -> None:
    daemon = rig_daemon("--log-format", "json")
    try:
        http_get(f"{daemon.base}/no/such/route")  # auth off: a 404
    finally:
        status, log = daemon.stop()

    entries = [json.loads(line) for line in log.splitlines()]
    assert status == 0
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    [access] = [
        e for e in entries if e["logger"] == "deepdockd.access" and e["path"] == "/no/such/route"
    ]
    assert {k: access[k] for k in ("method", "status", "user", "client")} == {
        "method": "GET", "status": 404, "user": "anonymous", "client": "127.0.0.1",
    }  # fmt: skip
    assert access["duration_ms"] >= 0

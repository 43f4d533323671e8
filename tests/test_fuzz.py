"""A property-based run of schemathesis against a live daemon on the real rig, with auth on:
generated requests for every operation of openapi.yaml, bounded in time, first as an admin,
then as a `user` (so the access matrix is fuzzed from a user's side too: every 403 a user
meets must be one the spec documents), then over the local socket as a host user with no
token. No answer may break the spec, and no answer may be a
server error but the documented 502 ``registry_unreachable``
(``tests/support/fuzz_hooks.no_unexpected_server_error``).

A second run against a daemon whose Docker cannot be reached proves that rule is live: it
must fail on the 503s, which the spec documents but the rule does not allow."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket as stdlib_socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deepdockd.tokens import TokenStore

from tests.support.daemon import RunningDaemon
from tests.support.gpus import NVML_SIM_LIBRARY
from tests.support.host_users import (
    SYSTEM_PYTHON,
    HostAccounts,
    host_accounts,
    world_readable_dir,
)
from tests.support.rig import Rig

ROOT = Path(__file__).parents[1]
FUZZ_SECONDS = 60
# docs/api.md (#the-spec-is-a-contract) promises at least 2,000 generated requests; a run that
# makes fewer has not exercised the spec the way it says.
MIN_CASES = 2000
# The user's run shares the admin's daemon, and is shorter: the same operations, seen with
# fewer rights, and the whole file stays under about two minutes.
USER_FUZZ_SECONDS = 25
MIN_USER_CASES = 500
# Once more over the local socket, as a host user with no token (tests/test_host_users.py).
SOCKET_FUZZ_SECONDS = 15
MIN_SOCKET_CASES = 300
CHECKS = (
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "no_unexpected_server_error",  # ours; schemathesis runs only the checks this list names
)


def schemathesis(
    base: str, token: str | None, *, seconds: int, examples: int, only_path: str | None = None
) -> subprocess.CompletedProcess[str]:
    selection = ["--include-path", only_path] if only_path else []
    # No token: the caller is whoever the daemon's local socket says (through socket_relay).
    if token is not None:
        selection += ["--header", f"Authorization: Bearer {token}"]
    return subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", str(ROOT / "openapi.yaml"),
            "--url", base,
            "--workers", "1", "--seed", "20261127", "--max-examples", str(examples),
            "--max-time", str(seconds), "--request-timeout", "60",
            "--phases", "examples,coverage,fuzzing", "--checks", ",".join(CHECKS),
            "--generation-database", "none",  # the seed alone decides; nothing is written here
            "--no-color", *selection,
        ],
        env={"SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=seconds + 240, check=False,
    )  # fmt: skip


@pytest.fixture
def accounts() -> Iterator[HostAccounts]:
    yield from host_accounts()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = world_readable_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def admin_token(daemon: RunningDaemon) -> str:
    return (daemon.state_dir / "admin.token").read_text().strip()


@contextlib.contextmanager
def relay_as(user: str, socket: Path, directory: Path) -> Iterator[str]:
    """A TCP port relaying to the daemon's socket, run as host user ``user`` (so the daemon
    sees them there); its URL."""
    relay = directory / "socket_relay.py"
    shutil.copyfile(ROOT / "tests" / "support" / "socket_relay.py", relay)
    relay.chmod(0o644)
    with contextlib.closing(stdlib_socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["runuser", "-u", user, "--", SYSTEM_PYTHON, str(relay), str(socket), str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "relaying\n"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate()  # and its pipe closed


def test_generated_requests_get_answers_within_the_spec(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    namespace: str,
    accounts: HostAccounts,
    socket_dir: Path,
) -> None:
    env = {
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(ROOT / "tests" / "nvml-sim" / "demo-4gpu.json"),
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": "23000-23999",
        # Off the default 23000-23999, which is its SSH ports here (tests/support/ports.py).
        "DEEPDOCKD_SERVICE_PORT_RANGE": "24000-24999",
    }
    host_user = accounts.user()
    socket = socket_dir / "api.sock"
    env |= {"DEEPDOCKD_HOST_USERS": "true", "DEEPDOCKD_SOCKET": str(socket)}
    daemon = rig_daemon(env=env, auth=True)
    user_token = TokenStore(daemon.state_dir).add("fuzzer", "user")  # read at its first request
    try:
        run = schemathesis(daemon.base, admin_token(daemon), seconds=FUZZ_SECONDS, examples=50)
        user_run = schemathesis(daemon.base, user_token, seconds=USER_FUZZ_SECONDS, examples=20)
        with relay_as(host_user, socket, socket_dir) as relayed:
            socket_run = schemathesis(relayed, None, seconds=SOCKET_FUZZ_SECONDS, examples=20)
    finally:
        status, log = daemon.stop()
        leftovers = rig.docker(
            "ps", "--all", "--quiet", "--filter", f"label=deepdockd.namespace={namespace}"
        )
        if leftovers.split():
            rig.docker("rm", "--force", *leftovers.split())
        volumes = rig.docker(
            "volume", "ls", "--quiet", "--filter", f"label=deepdockd.namespace={namespace}"
        )
        if volumes.split():
            rig.docker("volume", "rm", "--force", *volumes.split())
        rig.build_images()  # generated DELETE /images may have hit a test image

    runs = ((run, MIN_CASES), (user_run, MIN_USER_CASES), (socket_run, MIN_SOCKET_CASES))
    for made, at_least in runs:
        generated = re.search(r"(\d+) generated", made.stdout)
        assert generated, made.stdout[-3000:]
        assert made.returncode == 0, made.stdout[-6000:]
        assert int(generated.group(1)) >= at_least, made.stdout[-3000:]
    assert status == 0
    assert "Traceback" not in log, log[-3000:]
    # The socket's run was the host user's, by the kernel's word, and not refused as no one.
    assert re.search(rf"status=200 .*user={host_user}\b", log), log[-3000:]


def test_the_fuzz_run_fails_on_an_undocumented_server_error(
    rig_daemon: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    # Docker is unreachable: every Docker-backed route answers 503 docker_unavailable. The
    # spec documents that answer, so only our own check can fail the run.
    daemon = rig_daemon("--docker-host", f"unix://{tmp_path}/no-docker.sock", auth=True)
    try:
        run = schemathesis(
            daemon.base, admin_token(daemon), seconds=20, examples=5, only_path="/containers"
        )
    finally:
        daemon.stop()

    assert run.returncode != 0, run.stdout[-3000:]
    assert "server error 503 (docker_unavailable)" in run.stdout, run.stdout[-3000:]

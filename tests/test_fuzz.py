"""A property-based run of schemathesis against a live daemon on the real rig, with auth on:
generated requests for every operation of openapi.yaml, bounded in time, first as an admin,
then as a `user`, then over the local socket as a host user with no token. Each run must
reach every operation of the spec (at least ``MIN_PER_OPERATION`` answers each, counted from
the hooks' record, so that a route the run does not reach fails it), and no answer may break
the spec or ``tests/support/fuzz_rule.py``'s rule: no server error but the pulls' documented
502 ``registry_unreachable``, the same for the error line that ends a pull's 200 NDJSON
stream, and no 403 that the caller does not meet by design (while the users' runs do meet
the admin-only routes' 403).

Two more runs prove the rule live: against a daemon whose Docker cannot be reached, it must
fail on the 503s (which the spec documents but the rule does not allow); and a pull whose
layer the registry serves corrupt must fail it from inside the stream's 200."""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import json
import re
import shutil
import socket as stdlib_socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from deepdockd.tokens import TokenStore

from tests.support import fuzz_rule
from tests.support.daemon import RunningDaemon
from tests.support.fuzz_rule import ADMIN, HOST_USER, NDJSON, USER, Answer, read_record
from tests.support.gpus import NVML_SIM_LIBRARY
from tests.support.host_users import (
    SYSTEM_PYTHON,
    HostAccounts,
    host_accounts,
    world_readable_dir,
)
from tests.support.images import registry_layer_files
from tests.support.rig import BUSYBOX_IMAGE, Rig

ROOT = Path(__file__).parents[1]
SPEC = ROOT / "openapi.yaml"
FUZZ_SECONDS = 60
# docs/api.md (#the-spec-is-a-contract) promises at least 2,000 generated requests; a run that
# makes fewer has not exercised the spec the way it says.
MIN_CASES = 2000
# The user's run shares the admin's daemon, and is shorter: the same operations, seen with
# fewer rights. (25 s gave GET /events, a second a case, 8 cases on a fast machine and 4 on
# one twice as slow: 40 s keeps it over MIN_PER_OPERATION on both.)
USER_FUZZ_SECONDS = 40
MIN_USER_CASES = 500
# Once more over the local socket, as a host user with no token (tests/test_host_users.py).
SOCKET_FUZZ_SECONDS = 15
MIN_SOCKET_CASES = 300
# Every operation of the spec gets at least this many answers in each run (the hooks' record),
# so that a route the run does not reach fails it. The fewest seen on the rig: 11 in the
# admin's 60 s (GET /images, GET /tokens: a GET without parameters gets a few cases from the
# coverage phase, then one from each of fuzzing's passes), 8 in the user's 25 s (GET /events,
# a second each; 4 on a machine twice as slow, hence its 40 s), 6 in the socket's 15 s (GET
# /images, GET /tokens).
MIN_PER_OPERATION = {ADMIN: 5, USER: 5, HOST_USER: 3}
CHECKS = (
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "answers_within_the_rule",  # ours (fuzz_hooks); schemathesis runs only the checks named
)


def operations() -> list[str]:
    """The operationId of every operation of openapi.yaml."""
    paths = yaml.safe_load(SPEC.read_text())["paths"]
    return [
        o["operationId"] for item in paths.values() for o in item.values() if "operationId" in o
    ]


def schemathesis(
    base: str,
    token: str | None,
    *,
    caller: str,
    seconds: int,
    examples: int,
    record: Path,
    user: str = "",
    only_path: str | None = None,
    pullable: str = "",
) -> subprocess.CompletedProcess[str]:
    """A run as ``caller`` (fuzz_rule.CALLERS), named ``user``; ``record`` receives a line per
    answer; ``pullable`` is a reference that some pulls ask for in place of the generated one."""
    selection = ["--include-path", only_path] if only_path else []
    if token is not None:
        selection += ["--header", f"Authorization: Bearer {token}"]
    else:  # the caller is whoever the socket says (socket_relay): no made-up token either
        selection += ["--generation-with-security-parameters", "false"]
    hooks = {
        "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks",
        "DEEPDOCKD_FUZZ_CALLER": caller,
        "DEEPDOCKD_FUZZ_USER": user,
        "DEEPDOCKD_FUZZ_RECORD": str(record),
        "DEEPDOCKD_FUZZ_IMAGE": BUSYBOX_IMAGE,  # a rig image: public, there for the whole run
        "DEEPDOCKD_FUZZ_PULLABLE": pullable,
    }
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", *run_arguments(base, seconds, examples),
         *selection],
        env={**hooks, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=seconds + 240, check=False,
    )  # fmt: skip


def run_arguments(base: str, seconds: int, examples: int) -> list[str]:
    """``schemathesis run``'s arguments. They are schemathesis 4.32's (setup.cfg pins it, and
    a test below holds each option to its ``--help``): ``--max-time`` is the whole run's
    budget, fuzzing repeated until it is spent; ``--phases`` names coverage."""
    return [
        "run", str(SPEC),
        "--url", base,
        "--workers", "1", "--seed", "20261127", "--max-examples", str(examples),
        "--max-time", str(seconds), "--request-timeout", "60",
        "--phases", "examples,coverage,fuzzing", "--checks", ",".join(CHECKS),
        "--generation-database", "none",  # the seed alone decides; nothing is written here
        "--no-color",
        # and, per run: --include-path (its --include-TYPE), --header
    ]  # fmt: skip


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


def run_problems(
    caller: str, made: subprocess.CompletedProcess[str], answers: list[Answer], at_least: int
) -> Iterator[str]:
    """What is wrong with ``caller``'s run: a failed check, too few cases, an operation of the
    spec it did not reach ``MIN_PER_OPERATION`` times, an admin-only answer it never met."""
    generated = re.search(r"(\d+) generated", made.stdout)
    if made.returncode != 0 or not generated:
        yield f"{caller}'s run failed:\n{made.stdout[-6000:]}"
    elif int(generated.group(1)) < at_least:
        yield f"{caller}'s run made {generated.group(1)} cases, not {at_least}"
    counts = collections.Counter(a.operation for a in answers)
    fewest = MIN_PER_OPERATION[caller]
    if short := {op: counts[op] for op in operations() if counts[op] < fewest}:
        yield f"{caller}'s run reached {short} fewer than {fewest} times each (all: {counts})"
    met = {(a.operation, a.status, a.code) for a in answers}
    if caller != ADMIN:  # what only admins get is in their reach, and they met its 403
        missed = [op for op in fuzz_rule.ADMIN_ONLY if (op, 403, "forbidden") not in met]
        if missed:
            yield f"{caller} never met the 403 of {missed}"


def test_generated_requests_get_answers_within_the_spec(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    registry_image: Callable[..., str],
    namespace: str,
    accounts: HostAccounts,
    socket_dir: Path,
    tmp_path: Path,
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
    pullable = registry_image()  # some pulls stream its progress: a 200 with NDJSON lines
    records = {caller: tmp_path / f"{caller}.jsonl" for caller in (ADMIN, USER, HOST_USER)}
    try:
        runs = {
            ADMIN: schemathesis(
                daemon.base, admin_token(daemon), caller=ADMIN, user="admin",
                seconds=FUZZ_SECONDS, examples=50, record=records[ADMIN], pullable=pullable,
            ),
            USER: schemathesis(
                daemon.base, user_token, caller=USER, user="fuzzer",
                seconds=USER_FUZZ_SECONDS, examples=20, record=records[USER], pullable=pullable,
            ),
        }  # fmt: skip
        with relay_as(host_user, socket, socket_dir) as relayed:
            runs[HOST_USER] = schemathesis(
                relayed, None, caller=HOST_USER, user=host_user,
                seconds=SOCKET_FUZZ_SECONDS, examples=20, record=records[HOST_USER],
            )  # fmt: skip
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

    at_least = {ADMIN: MIN_CASES, USER: MIN_USER_CASES, HOST_USER: MIN_SOCKET_CASES}
    problems = [problem for caller, made in runs.items() for problem in run_problems(
        caller, made, list(read_record(records[caller])), at_least[caller]
    )]  # fmt: skip
    pulls = [a for a in read_record(records[ADMIN]) if a.operation == "pullImage"]
    if not any(a.status == 200 and a.content_type.startswith(NDJSON) for a in pulls):
        problems.append(f"no pull answered a stream: {collections.Counter(pulls)}")
    assert not problems, "\n\n".join(problems)
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
            daemon.base, admin_token(daemon), caller=ADMIN, seconds=10, examples=5,
            record=tmp_path / "record.jsonl", only_path="/containers",
        )  # fmt: skip
    finally:
        daemon.stop()

    assert run.returncode != 0, run.stdout[-3000:]
    assert "server error 503 (docker_unavailable)" in run.stdout, run.stdout[-3000:]


def test_the_fuzz_run_fails_on_a_server_error_inside_a_stream(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    registry_image: Callable[..., str],
    tmp_path: Path,
) -> None:
    # The registry serves the image's layer corrupt: the pull starts (a 200, progress lines),
    # then Docker's checksum fails and the stream ends with a 502-class error line.
    pullable = registry_image()
    for layer in registry_layer_files(rig, pullable):
        layer.write_bytes(bytes(len(layer.read_bytes())))
    daemon = rig_daemon(auth=True)
    try:
        run = schemathesis(
            daemon.base, admin_token(daemon), caller=ADMIN, seconds=6, examples=5,
            record=tmp_path / "record.jsonl", only_path="/images", pullable=pullable,
        )  # fmt: skip
    finally:
        daemon.stop()

    assert run.returncode != 0, run.stdout[-3000:]
    assert re.search(r"server error 502 \(\w+\) from pullImage in a 200 stream", run.stdout), (
        run.stdout[-3000:]
    )


# --- the rule itself, and what the run relies on (no rig) ---


def error(code: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": "m", "details": {}}}).encode()


def error_line(code: str) -> dict[str, object]:
    line: dict[str, object] = json.loads(error(code))
    return line


def stream(*lines: dict[str, object]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


PROGRESS = {"status": "Downloading", "layer": "a1", "current": 1, "total": 2}
JSON = "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("operation", "caller", "status", "content_type", "body", "broken"),
    [
        # The registry's 502 belongs to the pulls only.
        ("pullImage", ADMIN, 502, JSON, error("registry_unreachable"), False),
        ("createContainer", USER, 502, JSON, error("registry_unreachable"), False),
        ("listImages", ADMIN, 502, JSON, error("registry_unreachable"), True),
        ("deleteImage", ADMIN, 502, JSON, error("registry_unreachable"), True),
        ("pullImage", ADMIN, 502, JSON, error("pull_failed"), True),
        ("pullImage", ADMIN, 503, JSON, error("docker_unavailable"), True),
        ("healthz", ADMIN, 500, "text/plain", b"oops", True),
        # A stream's last line is held to the same rule, with its code's own status.
        (
            "pullImage",
            ADMIN,
            200,
            NDJSON,
            stream(PROGRESS, error_line("registry_unreachable")),
            False,
        ),
        ("pullImage", ADMIN, 200, NDJSON, stream(PROGRESS, error_line("docker_error")), True),
        ("pullImage", USER, 200, NDJSON, stream(PROGRESS, error_line("internal_error")), True),
        ("pullImage", ADMIN, 200, NDJSON, stream(PROGRESS, error_line("no_such_code")), True),
        ("pullImage", ADMIN, 200, NDJSON, stream(PROGRESS, error_line("not_found")), False),
        # Admin-only routes: a user's 403 is expected there, and their 200 is a failure.
        ("prometheusMetrics", USER, 403, JSON, error("forbidden"), False),
        ("prometheusMetrics", HOST_USER, 200, "text/plain", b"# metrics", True),
        ("prometheusMetrics", ADMIN, 200, "text/plain", b"# metrics", False),
        ("deleteImage", USER, 403, JSON, error("forbidden"), False),
        ("deleteImage", USER, 200, JSON, b"{}", True),
        ("deleteImage", ADMIN, 403, JSON, error("forbidden"), True),
        # Other 403s only where the caller meets them by design.
        ("listContainers", USER, 403, JSON, error("forbidden"), True),
        ("pullImage", USER, 403, JSON, error("tag_in_use"), False),
        ("pullImage", ADMIN, 403, JSON, error("tag_in_use"), True),
        ("mintToken", USER, 403, JSON, error("forbidden"), False),
        ("mintToken", HOST_USER, 403, JSON, error("forbidden"), True),
        ("openProxySession", HOST_USER, 403, JSON, error("forbidden"), False),
        ("openProxySession", USER, 403, JSON, error("forbidden"), True),
    ],
)
def test_the_rule_of_the_fuzz_run(
    operation: str, caller: str, status: int, content_type: str, body: bytes, broken: bool
) -> None:
    found = fuzz_rule.problem(operation, caller, status, content_type, body)
    assert (found is not None) == broken, found


def test_a_user_may_not_read_another_users_quota() -> None:
    def quota(whose: str) -> bytes:
        return json.dumps({"user": whose, "limits": {}, "used": {}}).encode()

    ok = fuzz_rule.problem("getQuota", USER, 200, JSON, quota("fuzzer"), user="fuzzer")
    leak = fuzz_rule.problem("getQuota", USER, 200, JSON, quota("bob"), user="fuzzer")
    assert ok is None
    assert leak is not None


def test_a_user_may_not_read_another_users_gpu_hours() -> None:
    def usage(*owners: str) -> bytes:
        rows = [{"owner": o, "gpu_hours_held": 1.0, "gpu_hours_busy": 0.5} for o in owners]
        return json.dumps({"from": "x", "to": "y", "by": "owner", "rows": rows}).encode()

    assert fuzz_rule.problem("getUsage", USER, 200, JSON, usage("fuzzer"), user="fuzzer") is None
    leak = fuzz_rule.problem("getUsage", USER, 200, JSON, usage("fuzzer", "bob"), user="fuzzer")
    assert leak is not None
    assert fuzz_rule.problem("getUsage", ADMIN, 200, JSON, usage("fuzzer", "bob")) is None


def test_the_rules_tables_name_operations_of_the_spec() -> None:
    named = {*fuzz_rule.EXPECTED_5XX, *fuzz_rule.EXPECTED_403, *fuzz_rule.ADMIN_ONLY}
    assert named <= set(operations())
    assert len(operations()) == len(set(operations()))  # an operationId names one operation


def test_schemathesis_is_the_pinned_version_with_the_options_the_run_uses() -> None:
    pinned = re.search(r"^\s*schemathesis==(\S+)$", (ROOT / "setup.cfg").read_text(), re.M)
    assert pinned, "setup.cfg pins schemathesis exactly: the run relies on its options"
    assert importlib.metadata.version("schemathesis") == pinned.group(1)
    usage = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    options = [a for a in run_arguments("http://x", 1, 1) if a.startswith("--")]
    for option in [*options, "--include-TYPE", "--header", "--generation-with-security-parameters"]:
        assert re.search(rf"\s{re.escape(option)}[\s,]", usage), option

"""The wait for a container's sshd: a create, start or restart answers once sshd greets on
the published port, or with the bootstrap's own reason when the container gave up."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator

from deepdockd.docker import Docker
from deepdockd.errors import ApiError, InvalidInput

# How long a create waits between its looks for sshd's greeting (each a connect to the
# published port): 5 ms at first, doubling to 20 ms.
PROBE_FIRST_S = 0.005
PROBE_MAX_S = 0.02
# How often, while it does not greet yet, Docker is asked whether the container still runs.
INSPECT_EVERY_S = 0.1
# What bootstrap.sh writes before the reason it gives up.
_FAILED_MARK = "deepdockd-bootstrap: FAILED: "
# What bootstrap.sh writes before the SSH server it chose and why (choose_server).
_SERVER_MARK = "deepdockd-bootstrap: SSH server: "
# What the container's init (tini) writes when the image has no /bin/sh for the bootstrap.
_NO_SHELL = "exec /bin/sh failed: No such file or directory"


class SshUnavailable(InvalidInput):
    """The image cannot give the container an SSH login."""

    code = "ssh_unavailable"


class SshTimeout(ApiError):
    status = 504
    code = "ssh_timeout"


async def wait_for_sshd(
    docker: Docker,
    container_id: str,
    port: int | None,
    *,
    bind_address: str,
    timeout_s: float,
    restarts_before: int = 0,
) -> None:
    """Until sshd greets on the ``port`` published on ``bind_address``; the bootstrap's
    error if it gives up (the container stops, or Docker restarts it), SshTimeout after
    ``timeout_s`` (the config's ssh_ready_timeout)."""
    deadline = time.monotonic() + timeout_s
    host = "127.0.0.1" if bind_address in ("0.0.0.0", "::") else bind_address
    inspected = -math.inf
    for delay in probe_delays():
        # (port None: not ours to wait for, a container without an SSH port label.)
        greeted = port is None or await ssh_greets(host, port)
        now = time.monotonic()
        # Docker is asked whether the container still runs (and has not been restarted:
        # the greeting would be from a bootstrap that failed before) when it greets, and
        # between greetings every INSPECT_EVERY_S: not at each look, each a Docker call.
        if greeted or now - inspected >= INSPECT_EVERY_S:
            inspected = now
            state = await docker.container_state(container_id)
            if state is None or not state.running or state.restart_count > restarts_before:
                raise SshUnavailable(await _bootstrap_error(docker, container_id))
            if greeted:
                return
        if now > deadline:
            raise SshTimeout(
                f"the SSH server did not answer on port {port} within "
                f"{timeout_s:g} s (ssh_ready_timeout)"
            )
        await asyncio.sleep(delay)


def probe_delays() -> Iterator[float]:
    """The waits between looks for a greeting: PROBE_FIRST_S, doubling up to PROBE_MAX_S."""
    delay = PROBE_FIRST_S
    while True:
        yield delay
        delay = min(delay * 2, PROBE_MAX_S)


async def ssh_server_chosen(docker: Docker, container_id: str) -> str | None:
    """Which SSH server the bootstrap started and why ("the image's sshd, OpenSSH_9.2", or
    "deepdockd's bundled server: the image has no OpenSSH sshd"), as its log says; None
    where the log cannot be read or does not say. Read once sshd answers: the image's
    command, which starts after the server, may have logged since, hence the long tail."""
    with contextlib.suppress(ApiError):
        output = await docker.container_logs(container_id, tail=1000)
        said = [
            line.split(_SERVER_MARK, 1)[1] for line in output.splitlines() if _SERVER_MARK in line
        ]
        return said[-1].strip() if said else None
    return None


async def _bootstrap_error(docker: Docker, container_id: str) -> str:
    with contextlib.suppress(ApiError):
        output = await docker.container_logs(container_id)
        if _NO_SHELL in output:  # tini, the container's init, could not start the bootstrap
            return (
                "the container could not provide SSH: the image has no /bin/sh, which"
                " deepdockd's bootstrap needs to set up the"
                " SSH login (an image without a shell, such as a distroless one, cannot be"
                " used): choose an image with a shell"
            )
        failures = [
            line.split(_FAILED_MARK, 1)[1] for line in output.splitlines() if _FAILED_MARK in line
        ]
        if failures:
            return f"the container could not provide SSH: {failures[-1]}"
        tail = " | ".join(output.strip().splitlines()[-3:])
        if tail:
            return f"the container stopped before its sshd answered: {tail}"
    return "the container stopped before its sshd answered"


async def ssh_greets(host: str, port: int) -> bool:
    """Whether an SSH server sends its greeting ("SSH-2.0-...") on host:port."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                greeting = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return greeting.startswith(b"SSH-")

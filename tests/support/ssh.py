"""A real SSH login into a container, as its user types it."""

from __future__ import annotations

import socket
import subprocess


def ssh(port: int, user: str, password: str, command: str) -> subprocess.CompletedProcess[str]:
    """A real OpenSSH client, with the password typed by sshpass."""
    return subprocess.run(
        [
            "sshpass", "-e", "ssh", "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"{user}@127.0.0.1", command,
        ],
        env={"SSHPASS": password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def greeting(port: int) -> str:
    """The SSH server's first line on a local port ("SSH-2.0-OpenSSH_9.2p1 …")."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        return connection.makefile("rb").readline().decode().strip()


def free_local_port() -> int:
    """A loopback port nobody listens on now (for ssh -L)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

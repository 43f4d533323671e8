"""A real SSH login into a container, as its user types it."""

from __future__ import annotations

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

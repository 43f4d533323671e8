"""SSH to containers with their host keys pinned: each container's public host keys (from
``ssh_host_keys`` in the API) go into a known-hosts file of the client's own, under a
``HostKeyAlias`` of its server and name. SSH ports are reused by later containers, so a
plain ``host:port`` entry would soon be someone else's key; an alias per container never is,
and ssh checks strictly: no prompt, no stale warning, no blind trust."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deepdockd.client.settings import Server, _write_private, config_dir


def known_hosts_file() -> Path:
    return config_dir() / "known_hosts"


def identities_file() -> Path:
    return config_dir() / "identities.json"


def alias(server: Server, container: str) -> str:
    return f"deepdock.{server.name}.{container}"


def pin(entries: dict[str, list[dict[str, Any]]]) -> Path:
    """Write the host keys of these aliases ({alias: ssh_host_keys}), replacing what the file
    held for them; other aliases' lines stay."""
    path = known_hosts_file()
    try:
        kept = [
            line for line in path.read_text().splitlines() if line.split(" ", 1)[0] not in entries
        ]
    except FileNotFoundError:
        kept = []
    for name, keys in entries.items():
        kept += [f"{name} {key['public_key']}" for key in keys]
    _write_private(path, "".join(f"{line}\n" for line in kept))
    return path


def remember_identity(server: Server, container: str, public_key_file: Path) -> None:
    """The private key beside the public one given at create, for ``deepdock ssh``."""
    private = public_key_file.with_suffix("")
    if public_key_file.suffix != ".pub" or not private.is_file():
        return
    known = _identities()
    known[alias(server, container)] = str(private.resolve())
    _write_private(identities_file(), json.dumps(known, indent=2) + "\n")


def identity(server: Server, container: str) -> str | None:
    path = _identities().get(alias(server, container))
    return path if path and Path(path).is_file() else None


def _identities() -> dict[str, str]:
    try:
        loaded = json.loads(identities_file().read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def options(server: Server, container: dict[str, Any]) -> dict[str, str]:
    """The ssh options that reach the container: ssh_config keywords and their values."""
    name = container["name"]
    found = {
        "HostName": server.host,
        "Port": str(container["ssh-port"]),
        "User": container["ssh_user"],
        "HostKeyAlias": alias(server, name),
        "UserKnownHostsFile": str(known_hosts_file()),
        "StrictHostKeyChecking": "yes" if container.get("ssh_host_keys") else "ask",
    }
    key = identity(server, name)
    if key:
        found["IdentityFile"] = key
    return found


def ssh_argv(server: Server, container: dict[str, Any], command: list[str]) -> list[str]:
    argv = ["ssh"]
    for keyword, value in options(server, container).items():
        argv += ["-o", f"{keyword}={value}"]
    if command:
        return [*argv, "--", server.host, *command]
    return [*argv, server.host]


def exec_ssh(argv: list[str]) -> None:
    """Become ssh (its exit status is the command's); FileNotFoundError without one."""
    os.execvp(argv[0], argv)

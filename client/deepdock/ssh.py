"""SSH to containers with their host keys pinned: each container's public host keys (from
``ssh_host_keys`` in the API) go into a known-hosts file of the client's own, under a
``HostKeyAlias`` of its server and name. SSH ports are reused by later containers, so a
plain ``host:port`` entry would soon be someone else's key; an alias per container never is,
and ssh checks strictly: no prompt, no stale warning, no blind trust."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from deepdock.settings import Server, _write_private, config_dir

# One public key, as known_hosts holds it: type and base64, nothing that would add a line.
_ONE_KEY = re.compile(r"[a-z0-9@.-]+ [A-Za-z0-9+/]+=*")

# What goes from a server's answer into an ssh config or an ssh argument must pass the
# server's own rules: a name or user with a line break would end its Host block and start
# another ("Host *", then "ProxyCommand ..."), for every host the user reaches. These are
# deepdockd's patterns (deepdockd/api/schemas.py, written as openapi.yaml has them),
# restated because the client imports nothing of the daemon; a test holds them equal.
CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$"
USER_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"


def unfit(container: dict[str, Any]) -> str | None:
    """Why a container of a server's answer cannot go into an ssh config or argument, in a
    few words (its values as Python literals: one line, no control characters); None when
    its name, user and port keep the server's rules."""
    name, user, port = container.get("name"), container.get("ssh_user"), container.get("ssh-port")
    if not isinstance(name, str) or not re.fullmatch(CONTAINER_NAME, name):
        return "its name is not a container name"
    if not isinstance(user, str) or not re.fullmatch(USER_NAME, user):
        return f"its ssh_user {shown(user)} is not a Linux user name"
    if type(port) is not int or not 1 <= port <= 65535:  # not True, not "22"
        return f"its ssh-port {shown(port)} is not a port (1-65535)"
    keys = container.get("ssh_host_keys")
    if keys is not None and not (
        isinstance(keys, list) and all(isinstance(key, dict) for key in keys)
    ):
        return "its ssh_host_keys are not a list of keys"
    return None


def shown(value: object) -> str:
    """A server's value in a message: one line, no control characters, not too long."""
    text = repr(value)  # escapes line breaks and every other control character
    return text if len(text) <= 60 else f"{text[:57]}..."


def known_hosts_file() -> Path:
    return config_dir() / "known_hosts"


def identities_file() -> Path:
    return config_dir() / "identities.json"


def alias(server: Server, container: str) -> str:
    # "/" is in no server or container name: no two pairs share an alias.
    return f"deepdock/{server.name}/{container}"


def pin(entries: dict[str, list[dict[str, Any]]]) -> Path:
    """Write the host keys of these aliases ({alias: ssh_host_keys}), replacing what the file
    held for them; other aliases' lines stay."""
    path = known_hosts_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Two `deepdock ssh` at once must not lose each other's pins.
    with open(path.with_name(".known_hosts.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        kept = [line for line in lines if line.split(" ", 1)[0] not in entries]
        for name, keys in entries.items():
            found = (str(key.get("public_key", "")) for key in keys if isinstance(key, dict))
            kept += [f"{name} {key}" for key in found if _ONE_KEY.fullmatch(key)]
        _write_private(path, "".join(f"{line}\n" for line in kept))
    return path


def remember_identity(server: Server, container: str, public_key_file: Path) -> bool:
    """The private key beside the public one given at create, for ``deepdock ssh``; whether
    there was one."""
    private = public_key_file.with_suffix("")
    if public_key_file.suffix != ".pub" or not private.is_file():
        return False
    known = _identities()
    known[alias(server, container)] = str(private.resolve())
    _write_private(identities_file(), json.dumps(known, indent=2) + "\n")
    return True


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
    """The ssh options that reach the container: ssh_config keywords and their values. The
    container must be one that :func:`unfit` passes."""
    name = container["name"]
    found = {
        "HostName": server.host,
        "Port": str(container["ssh-port"]),
        "User": container["ssh_user"],
        "HostKeyAlias": alias(server, name),
        "UserKnownHostsFile": _path_value(known_hosts_file()),
        "StrictHostKeyChecking": "yes" if container.get("ssh_host_keys") else "ask",
    }
    key = identity(server, name)
    if key:
        found["IdentityFile"] = _path_value(Path(key))
        found["IdentitiesOnly"] = "yes"  # an agent full of keys: no "too many failures"
    return found


def _path_value(path: Path) -> str:
    """A path as ssh_config reads it: ``%`` is ssh's token sign, spaces need quotes."""
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def ssh_argv(server: Server, container: dict[str, Any], command: list[str]) -> list[str]:
    argv = ["ssh"]
    for keyword, value in options(server, container).items():
        argv += ["-o", f"{keyword}={value}"]
    return [*argv, "--", server.host, *command]


def forward_argv(
    server: Server, container: dict[str, Any], local_port: int, remote_port: int
) -> list[str]:
    """ssh forwarding 127.0.0.1:``local_port`` here to the container's own
    127.0.0.1:``remote_port``, with no command and no terminal, failing at once when the
    local port cannot be bound."""
    argv = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes"]
    for keyword, value in options(server, container).items():
        argv += ["-o", f"{keyword}={value}"]
    argv += ["-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}"]
    return [*argv, "--", server.host]


def free_local_port(preferred: int) -> int:
    """``preferred`` when it is free on this machine's loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def exec_ssh(argv: list[str]) -> None:
    """Become ssh (its exit status is the command's); FileNotFoundError without one."""
    os.execvp(argv[0], argv)

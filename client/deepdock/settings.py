"""Where the client's servers are and who it is there: ``~/.config/deepdock/config.toml``
(mode 0600, since it holds tokens), written by ``deepdock login``:

    default = "gpu1"

    [servers.gpu1]
    url = "http://gpu1.lab:8000"
    token = "ddk_…"

``DEEPDOCK_URL`` and ``DEEPDOCK_TOKEN`` override the file; ``--server NAME`` picks one. On the
server itself, with no URL set and no server configured, the client talks to the daemon's
local socket (``DEEPDOCK_SOCKET``, else ``/run/deepdockd/api.sock``), where the daemon knows
the caller from their host account and no token is needed.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
DEFAULT_SOCKET = "/run/deepdockd/api.sock"


class SettingsError(Exception):
    """The config cannot say which server to use; ``str()`` says what to do."""


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    token: str | None
    socket: str | None = None  # the daemon's local socket, when it is this host's

    @property
    def host(self) -> str:
        """The host of the URL: where the containers' SSH ports are published."""
        if self.socket is not None:
            return "127.0.0.1"  # the daemon's own host: its ports are published here
        rest = self.url.split("://", 1)[-1].split("/", 1)[0]
        host = rest.rsplit("@", 1)[-1]
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "deepdock"


def config_file() -> Path:
    return config_dir() / "config.toml"


@dataclass
class Settings:
    servers: dict[str, Server]
    default: str | None

    @classmethod
    def load(cls) -> Settings:
        path = config_file()
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls({}, None)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from None
        servers = {}
        for name, entry in (document.get("servers") or {}).items():
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                raise SettingsError(f"{path}: servers.{name} has no url; run deepdock login")
            token = entry.get("token")
            servers[name] = Server(name, entry["url"], token if isinstance(token, str) else None)
        default = document.get("default")
        return cls(servers, default if isinstance(default, str) else None)

    def save(self) -> Path:
        lines = [f"default = {_quoted(self.default)}\n"] if self.default else []
        for server in self.servers.values():
            lines.append(f"\n[servers.{_quoted(server.name)}]\nurl = {_quoted(server.url)}\n")
            if server.token:
                lines.append(f"token = {_quoted(server.token)}\n")
        path = config_file()
        _write_private(path, "".join(lines))
        return path

    def choose(self, name: str | None) -> Server:
        """The server to talk to: DEEPDOCK_URL (with DEEPDOCK_TOKEN) over all, else ``name``,
        else the default one."""
        url, token = os.environ.get("DEEPDOCK_URL"), os.environ.get("DEEPDOCK_TOKEN")
        if url and name is None:
            return Server("env", url.rstrip("/"), token)
        # DEEPDOCK_TOKEN goes with DEEPDOCK_URL, or else with the default server: never to a
        # server named by --server, which has a token of its own.
        token = token if name is None and not url else None
        if name is not None:
            if name not in self.servers:
                known = ", ".join(self.servers) or "none yet"
                raise SettingsError(
                    f"no server named {name!r} (known: {known}); add it with "
                    f"deepdock login URL --name {name}"
                )
            chosen = self.servers[name]
        elif self.default in self.servers:
            chosen = self.servers[self.default or ""]
        elif len(self.servers) == 1:
            chosen = next(iter(self.servers.values()))
        elif not self.servers and local_socket() is not None:
            return Server("local", "http://localhost", token, socket=local_socket())
        else:
            raise SettingsError(
                "no server configured: run deepdock login URL (or set DEEPDOCK_URL and "
                f"DEEPDOCK_TOKEN); on the server itself, the daemon's socket "
                f"{socket_path()} is used, but it is not there"
            )
        return Server(chosen.name, chosen.url, token or chosen.token)

    def all(self) -> list[Server]:
        """Every configured server (``--all``); DEEPDOCK_URL alone when none is."""
        if self.servers:
            return list(self.servers.values())
        return [self.choose(None)]


def socket_path() -> str:
    return os.environ.get("DEEPDOCK_SOCKET") or DEFAULT_SOCKET


def local_socket() -> str | None:
    """The daemon's local socket, when this host has one."""
    path = socket_path()
    try:
        return path if stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None


def _quoted(text: str | None) -> str:
    # A TOML basic string: JSON's escapes are TOML's for these characters.
    return json.dumps(text or "")


def _write_private(path: Path, text: str) -> None:
    """Atomically, mode 0600 from the first byte, in a directory of mode 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # tokens and pins: ours alone, whoever made the folder
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

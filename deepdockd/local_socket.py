"""The local socket's file: made mode 0666 (who a caller is comes from the kernel, not from
the file's mode), in a directory made if missing; a socket left by a daemon that died is
replaced, while one a live daemon serves on is refused; removed at the stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path


class SocketError(OSError):
    """The socket cannot be served; ``str()`` says why and what to do."""


async def listen(path: Path, protocol_factory: Callable[[], asyncio.Protocol]) -> asyncio.Server:
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _clear_stale(path)
        server = await asyncio.get_running_loop().create_unix_server(protocol_factory, str(path))
        os.chmod(path, 0o666)
    except SocketError:
        raise
    except OSError as exc:
        raise SocketError(
            f"socket: cannot serve on {path}: {exc.strerror or exc}; give another path, or "
            "set host_users = false"
        ) from None
    return server


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"socket: {path} exists and is not a socket; move it away")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink()  # left by a daemon that is gone
            return
        except OSError:
            pass
    raise SocketError(
        f"socket: {path} is served by another process (a second deepdockd?); stop it, or "
        "give this one another socket"
    )

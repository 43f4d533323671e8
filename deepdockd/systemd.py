"""systemd's notification protocol (sd_notify), without a dependency: READY=1 once the
listener is up, WATCHDOG=1 from the event loop (a stuck loop stops the pings and systemd
restarts the service), STOPPING=1 on the way out."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` to $NOTIFY_SOCKET; False when not run by systemd (no socket)."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between two pings (half of WatchdogSec, as systemd advises), or None when
    systemd does not watch this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if not usec.isdecimal() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def ping_watchdog(interval_s: float) -> None:
    """Ping until cancelled. It runs on the event loop, so it pings only while the loop runs."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)

"""What the host's /proc says of a process on a GPU: the Docker container it runs in (from
its cgroup), its user and its command line.

NVML gives host pids; these reads only work where deepdockd sees the host's /proc (it runs on
the host, as its unit does). A process that is gone, or hidden, reads as unknown.
"""

from __future__ import annotations

import pwd
import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_COMMAND_MAX = 200  # characters of the command line kept

# A Docker container's cgroup, the last component of its path (or of a parent's, for a
# process in a sub-cgroup of the container):
#   cgroupfs driver, v1 and v2:  /docker/<id>   (or <cgroup-parent>/<id>)
#   systemd driver, v1 and v2:   /system.slice/docker-<id>.scope
_CONTAINER_COMPONENT = re.compile(r"(?:docker-)?([0-9a-f]{64})(?:\.scope)?")


@dataclass(frozen=True)
class ProcessOrigin:
    container_id: str | None  # the Docker container's full id; None: not in a container
    user: str | None  # the user name of its real uid (the uid as text where none has a name)
    command: str | None  # its command line, shortened; None: gone, or not readable
    started: int | None = None  # its start time (clock ticks after boot): a pid reused differs


UNKNOWN = ProcessOrigin(container_id=None, user=None, command=None)


def container_id_of(cgroup_text: str) -> str | None:
    """The Docker container id in the text of /proc/<pid>/cgroup, None when there is none.
    Each line is ``hierarchy-id:controllers:path``; every hierarchy names the same container,
    so the first line that names one decides."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        for component in reversed(path.split("/")):
            match = _CONTAINER_COMPONENT.fullmatch(component)
            if match:
                return match.group(1)
    return None


def origin_of(pid: int, proc: Path = PROC) -> ProcessOrigin:
    """Where process ``pid`` comes from; UNKNOWN when it is gone or /proc hides it. Whatever
    the process wrote into its own name or command line (any bytes) is only ever text here."""
    directory = proc / str(pid)
    try:
        cgroup = _text(directory / "cgroup")
        status = _text(directory / "status")
        cmdline = (directory / "cmdline").read_bytes()
        started = start_time(pid, proc)
    except OSError:
        return UNKNOWN
    command = b" ".join(part for part in cmdline.split(b"\0") if part).decode(errors="replace")
    if not command:  # a zombie or a kernel thread: its name
        try:
            command = f"[{_text(directory / 'comm').strip()}]"
        except OSError:
            command = ""
    return ProcessOrigin(
        container_id=container_id_of(cgroup),
        user=_user(status),
        command=_shorten(command) or None,
        started=started,
    )


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """When process ``pid`` started (field 22 of /proc/<pid>/stat); None when it is gone.
    The name (field 2, in parentheses) may hold any character: the fields after its last ")"
    are counted."""
    try:
        stat = _text(proc / str(pid) / "stat")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdecimal() else None


def _text(path: Path) -> str:
    return path.read_bytes().decode(errors="replace")


def _user(status: str) -> str | None:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdecimal():
                uid = int(fields[1])
                try:
                    return pwd.getpwuid(uid).pw_name
                except KeyError:
                    return str(uid)
    return None


def _shorten(command: str) -> str:
    return command if len(command) <= _COMMAND_MAX else command[: _COMMAND_MAX - 1] + "…"

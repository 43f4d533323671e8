"""One container's resource use, read straight from its cgroup (v1 or v2) and its network
namespace, as cAdvisor and ``docker stats`` read them.

Where the files are: the container's main pid (Docker's ``State.Pid``) names its cgroup in
``/proc/PID/cgroup``; the cgroup file systems' mount points come from ``/proc/self/mountinfo``.
That is the same for Docker's cgroupfs and systemd drivers, a ``--cgroup-parent``, v1, v2 and
the hybrid layout (v1 controllers beside an empty ``unified`` v2 mount: v1 is used where its
memory controller is mounted).

What is read (the kernel's admin guides: cgroup-v1/cpuacct, memory, blkio, pids; cgroup-v2):

============  =========================================  ==================================
figure        v1                                         v2
============  =========================================  ==================================
CPU time      cpuacct.usage (ns)                         cpu.stat ``usage_usec``
memory        memory.usage_in_bytes                      memory.current
working set   usage - memory.stat ``total_inactive_file``  usage - memory.stat ``inactive_file``
limit         memory.limit_in_bytes (≥ 2^62: none)       memory.max (``max``: none)
block I/O     blkio.throttle.io_service_bytes Read/Write  io.stat ``rbytes``/``wbytes``
pids          pids.current                               pids.current
network       /proc/PID/net/dev, every interface but ``lo`` (both)
============  =========================================  ==================================

Each file is opened once and read with ``os.pread`` from offset 0 (a cgroup file is made
afresh at each read from its start): a read is one system call, no open, no buffer. A read
that fails with an ``OSError`` means the cgroup is gone (the container stopped).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

# memory.limit_in_bytes of an unlimited v1 cgroup is PAGE_COUNTER_MAX pages (2^63 - 4096 on
# x86-64); anything at or above 2^62 is no limit a host could have.
_V1_UNLIMITED = 1 << 62
_READ_SIZE = 65536
_V1_INACTIVE_FILE = re.compile(rb"(?:^|\n)total_inactive_file (\d+)")
_V2_INACTIVE_FILE = re.compile(rb"(?:^|\n)inactive_file (\d+)")
_V1_IO = re.compile(rb"^\S+ (Read|Write) (\d+)$", re.MULTILINE)
_V2_IO = re.compile(rb"\b(rbytes|wbytes)=(\d+)")


@dataclass(frozen=True)
class CgroupFiles:
    """Where one container's figures are: the files' paths (None: that controller is not
    mounted, so that figure is unknown)."""

    version: int  # 1 or 2
    cpu: str | None
    memory: str | None  # usage
    memory_stat: str | None
    memory_limit: str | None
    io: str | None
    pids: str | None
    net_dev: str  # /proc/PID/net/dev


@dataclass(frozen=True, slots=True)
class SlowReading:
    """The files read once a bucket: counters whose rate over the bucket is exact from two
    reads, the page cache's inactive part and the processes, which move slowly."""

    pids: int | None
    inactive_file_bytes: int | None
    memory_limit_bytes: int | None  # None: unlimited (or unknown)
    block_read_bytes: int | None
    block_write_bytes: int | None
    network_receive_bytes: int | None
    network_transmit_bytes: int | None


def locate(pid: int, *, proc: str = "/proc") -> CgroupFiles | None:
    """The files of the cgroup that ``pid`` runs in; None when the process is gone."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as file:
            membership = file.read().decode()
        with open(f"{proc}/self/mountinfo", "rb") as file:
            mounts = _cgroup_mounts(file.read().decode())
    except OSError:
        return None
    v1: dict[str, str] = {}  # controller -> path of the pid's cgroup in that hierarchy
    v2_path = None
    for line in membership.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            v2_path = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    net_dev = f"{proc}/{pid}/net/dev"

    def directory(key: str, path: str) -> str | None:
        mount = mounts.get(key)
        if mount is None:
            return None
        point, root = mount
        if root != "/" and path.startswith(root):  # a cgroup namespace's root, mounted
            path = path[len(root) :]
        return point + path.rstrip("/") if path != "/" else point

    if "memory" in v1 and "memory" in mounts:
        memory = directory("memory", v1["memory"])
        cpu = directory("cpuacct", v1.get("cpuacct", "/"))
        blkio = directory("blkio", v1.get("blkio", "/"))
        pids = directory("pids", v1.get("pids", "/")) if "pids" in v1 else None
        return CgroupFiles(
            version=1,
            cpu=f"{cpu}/cpuacct.usage" if cpu and "cpuacct" in v1 else None,
            memory=f"{memory}/memory.usage_in_bytes" if memory else None,
            memory_stat=f"{memory}/memory.stat" if memory else None,
            memory_limit=f"{memory}/memory.limit_in_bytes" if memory else None,
            io=f"{blkio}/blkio.throttle.io_service_bytes" if blkio and "blkio" in v1 else None,
            pids=f"{pids}/pids.current" if pids else None,
            net_dev=net_dev,
        )
    if v2_path is None or "" not in mounts:
        return None
    base = directory("", v2_path)
    return CgroupFiles(
        version=2,
        cpu=f"{base}/cpu.stat",
        memory=f"{base}/memory.current",
        memory_stat=f"{base}/memory.stat",
        memory_limit=f"{base}/memory.max",
        io=f"{base}/io.stat",
        pids=f"{base}/pids.current",
        net_dev=net_dev,
    )


def _cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """Controller -> (mount point, root) of each v1 hierarchy, and "" -> that of v2's."""
    mounts: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        fields, _, after = line.partition(" - ")
        parts = fields.split()
        kind = after.split()
        if len(parts) < 5 or len(kind) < 3:
            continue
        root, point = parts[3], parts[4].replace("\\040", " ")
        if kind[0] == "cgroup2":
            mounts.setdefault("", (point, root))
        elif kind[0] == "cgroup":
            for option in kind[2].split(","):
                mounts.setdefault(option, (point, root))
    return mounts


class CgroupReader:
    """The open files of one container. Not thread-safe: the sampler's one worker reads."""

    def __init__(self, files: CgroupFiles) -> None:
        self.files = files
        self._fds: dict[str, int] = {}
        try:
            for key in ("cpu", "memory", "memory_stat", "memory_limit", "io", "pids", "net_dev"):
                path = getattr(files, key)
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):  # a controller's file missing
                        self._fds[key] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise
        if "memory" not in self._fds and "cpu" not in self._fds:
            self.close()
            raise FileNotFoundError(f"no cgroup files at {files.memory} or {files.cpu}")

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def _read(self, key: str) -> bytes | None:
        fd = self._fds.get(key)
        return None if fd is None else os.pread(fd, _READ_SIZE, 0)

    def fast(self) -> tuple[int | None, int | None]:
        """The files read every tick: CPU time used, all cores, since the cgroup began (ns),
        and memory usage, page cache included (bytes); a plain tuple, made 300 times a second.
        Raises OSError once the cgroup is gone."""
        fds = self._fds
        cpu = os.pread(fds["cpu"], _READ_SIZE, 0) if "cpu" in fds else None
        memory = os.pread(fds["memory"], _READ_SIZE, 0) if "memory" in fds else None
        if cpu is not None:
            cpu_ns = parse_cpu_stat_ns(cpu) if self.files.version == 2 else int(cpu)
        else:
            cpu_ns = None
        return cpu_ns, int(memory) if memory is not None else None

    def slow(self) -> SlowReading:
        """Raises OSError once the cgroup is gone."""
        v2 = self.files.version == 2
        pids = self._read("pids")
        stat = self._read("memory_stat")
        limit = self._read("memory_limit")
        io = self._read("io")
        try:
            net = self._read("net_dev")
        except OSError:  # the pid read through is gone; its cgroup's fate says the rest
            net = None
        read_bytes = write_bytes = None
        if io is not None:
            read_bytes, write_bytes = parse_io_stat(io) if v2 else parse_blkio(io)
        receive = transmit = None
        if net is not None:
            receive, transmit = parse_net_dev(net)
        return SlowReading(
            pids=int(pids) if pids is not None else None,
            inactive_file_bytes=parse_inactive_file(stat, v2) if stat is not None else None,
            memory_limit_bytes=parse_limit(limit, v2) if limit is not None else None,
            block_read_bytes=read_bytes,
            block_write_bytes=write_bytes,
            network_receive_bytes=receive,
            network_transmit_bytes=transmit,
        )


# --- the parsers, each of one file as the kernel writes it ---


def parse_cpu_stat_ns(text: bytes) -> int | None:
    """v2 cpu.stat: its ``usage_usec`` line, in ns."""
    start = text.find(b"usage_usec ")
    if start < 0:
        return None
    end = text.find(b"\n", start)
    return int(text[start + 11 : end if end >= 0 else None]) * 1000


def parse_inactive_file(text: bytes, v2: bool) -> int | None:
    found = (_V2_INACTIVE_FILE if v2 else _V1_INACTIVE_FILE).search(text)
    return int(found.group(1)) if found else None


def parse_limit(text: bytes, v2: bool) -> int | None:
    value = text.strip()
    if v2:
        return None if value == b"max" else int(value)
    limit = int(value)
    return None if limit >= _V1_UNLIMITED else limit


def parse_blkio(text: bytes) -> tuple[int, int]:
    """v1 blkio.throttle.io_service_bytes: the Read and Write lines of every device."""
    read = write = 0
    for kind, value in _V1_IO.findall(text):
        if kind == b"Read":
            read += int(value)
        else:
            write += int(value)
    return read, write


def parse_io_stat(text: bytes) -> tuple[int, int]:
    """v2 io.stat: ``rbytes`` and ``wbytes`` of every device."""
    read = write = 0
    for key, value in _V2_IO.findall(text):
        if key == b"rbytes":
            read += int(value)
        else:
            write += int(value)
    return read, write


def parse_net_dev(text: bytes) -> tuple[int, int]:
    """/proc/net/dev: bytes received and sent on every interface but the loopback."""
    receive = transmit = 0
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(b":")
        if name.strip() == b"lo":
            continue
        fields = counters.split()
        if len(fields) >= 9:
            receive += int(fields[0])
            transmit += int(fields[8])
    return receive, transmit

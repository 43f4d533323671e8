"""The cgroup reader on files laid out as the kernel lays them out: cgroup v1 (this rig's
layout, with a cgroupfs driver's ``/docker/<id>`` and the hybrid ``unified`` mount beside it)
and cgroup v2 (a systemd driver's ``system.slice/docker-<id>.scope``), in a temporary
directory that stands for /proc and /sys/fs/cgroup. The rig runs cgroup v1, so v2 is tested
here, on real files of v2's names and formats; the rig tests read the real v1 files."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepdockd.stats.cgroup import (
    CgroupReader,
    locate,
    parse_blkio,
    parse_cpu_stat_ns,
    parse_inactive_file,
    parse_io_stat,
    parse_limit,
    parse_net_dev,
)

PID = 4242
ID = "3f2c" * 16

NET_DEV = b"""\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  900000     100    0    0    0     0          0         0   900000     100    0    0    0     0       0          0
  eth0: 1234567    2000    0    0    0     0          0         0    76543     900    0    0    0     0       0          0
  eth1:    1000      10    0    0    0     0          0         0      500       5    0    0    0     0       0          0
"""

V1_BLKIO = b"""\
8:0 Read 4096
8:0 Write 8192
8:0 Sync 12288
8:0 Async 0
8:0 Discard 0
8:0 Total 12288
253:1 Read 100
253:1 Write 200
253:1 Sync 300
253:1 Async 0
253:1 Discard 0
253:1 Total 300
Total 12588
"""

V1_MEMORY_STAT = b"""\
cache 209715200
rss 1875968
rss_huge 0
shmem 0
mapped_file 0
inactive_anon 1839104
active_anon 16384
inactive_file 16384
active_file 188416
hierarchical_memory_limit 536870912
total_cache 209715200
total_rss 1875968
total_inactive_anon 1839104
total_active_anon 16384
total_inactive_file 52428800
total_active_file 188416
total_unevictable 0
"""

V2_CPU_STAT = b"""\
usage_usec 2500000
user_usec 2000000
system_usec 500000
nr_periods 0
nr_throttled 0
throttled_usec 0
"""

V2_MEMORY_STAT = b"""\
anon 104857600
file 73400320
kernel_stack 65536
shmem 0
file_mapped 0
active_anon 104857600
inactive_anon 0
active_file 52428800
inactive_file 20971520
slab 1048576
"""

V2_IO_STAT = b"""\
8:0 rbytes=1048576 wbytes=2097152 rios=256 wios=512 dbytes=0 dios=0
253:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0
"""


def _write(path: Path, text: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def _v1_host(root: Path) -> Path:
    """/proc and /sys/fs/cgroup of a v1 host with the cgroupfs driver (as this rig's)."""
    proc, cgroup = root / "proc", root / "cgroup"
    mounts = ["cpu", "cpuacct", "memory", "blkio", "pids"]
    lines = [f"31 23 0:28 / {cgroup} rw,relatime - tmpfs tmpfs rw,mode=755"]
    lines += [
        f"{32 + n} 31 0:{29 + n} / {cgroup}/{name} rw,relatime - cgroup cgroup rw,{name}"
        for n, name in enumerate(mounts)
    ]
    lines.append(f"41 31 0:38 / {cgroup}/unified rw,relatime - cgroup2 cgroup2 rw")
    _write(proc / "self" / "mountinfo", "\n".join(lines) + "\n")
    _write(
        proc / str(PID) / "cgroup",
        "".join(f"{9 - n}:{name}:/docker/{ID}\n" for n, name in enumerate(mounts))
        + "4:devices:/docker/" + ID + "\n0::/\n",
    )  # fmt: skip
    _write(proc / str(PID) / "net" / "dev", NET_DEV)
    box = f"docker/{ID}"
    _write(cgroup / "cpuacct" / box / "cpuacct.usage", "3500000000\n")
    _write(cgroup / "memory" / box / "memory.usage_in_bytes", "262144000\n")
    _write(cgroup / "memory" / box / "memory.stat", V1_MEMORY_STAT)
    _write(cgroup / "memory" / box / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(cgroup / "blkio" / box / "blkio.throttle.io_service_bytes", V1_BLKIO)
    _write(cgroup / "pids" / box / "pids.current", "7\n")
    return proc


def _v2_host(root: Path) -> Path:
    """/proc and /sys/fs/cgroup of a v2 host with Docker's systemd driver."""
    proc, cgroup = root / "proc", root / "cgroup"
    _write(
        proc / "self" / "mountinfo",
        f"25 30 0:23 / {cgroup} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2"
        " rw,nsdelegate,memory_recursiveprot\n",
    )
    scope = f"/system.slice/docker-{ID}.scope"
    _write(proc / str(PID) / "cgroup", f"0::{scope}\n")
    _write(proc / str(PID) / "net" / "dev", NET_DEV)
    box = cgroup / scope.lstrip("/")
    _write(box / "cpu.stat", V2_CPU_STAT)
    _write(box / "memory.current", "178257920\n")
    _write(box / "memory.stat", V2_MEMORY_STAT)
    _write(box / "memory.max", "536870912\n")
    _write(box / "io.stat", V2_IO_STAT)
    _write(box / "pids.current", "3\n")
    return proc


def test_v1_files_are_found_from_the_pid_and_read(tmp_path: Path) -> None:
    proc = _v1_host(tmp_path)
    files = locate(PID, proc=str(proc))
    assert files is not None
    assert files.version == 1
    assert files.memory == f"{tmp_path}/cgroup/memory/docker/{ID}/memory.usage_in_bytes"
    reader = CgroupReader(files)
    try:
        fast, slow = reader.fast(), reader.slow()
    finally:
        reader.close()
    assert fast == (3_500_000_000, 262144000)
    assert slow.pids == 7
    assert slow.inactive_file_bytes == 52428800  # total_inactive_file, not inactive_file
    assert slow.memory_limit_bytes is None  # v1's "unlimited"
    assert (slow.block_read_bytes, slow.block_write_bytes) == (4196, 8392)
    assert (slow.network_receive_bytes, slow.network_transmit_bytes) == (1235567, 77043)


def test_v2_files_are_found_from_the_pid_and_read(tmp_path: Path) -> None:
    proc = _v2_host(tmp_path)
    files = locate(PID, proc=str(proc))
    assert files is not None
    assert files.version == 2
    assert files.cpu == f"{tmp_path}/cgroup/system.slice/docker-{ID}.scope/cpu.stat"
    reader = CgroupReader(files)
    try:
        fast, slow = reader.fast(), reader.slow()
    finally:
        reader.close()
    assert fast == (2_500_000_000, 178257920)
    assert slow.pids == 3
    assert slow.inactive_file_bytes == 20971520
    assert slow.memory_limit_bytes == 536870912
    assert (slow.block_read_bytes, slow.block_write_bytes) == (1052672, 2097152)
    assert (slow.network_receive_bytes, slow.network_transmit_bytes) == (1235567, 77043)


def test_a_cgroup_namespace_root_is_taken_off_the_path(tmp_path: Path) -> None:
    """Inside a cgroup namespace (deepdockd in a container), the mount's root is a prefix of
    the path that /proc/PID/cgroup names."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    _write(
        proc / "self" / "mountinfo",
        f"25 30 0:23 /outer {cgroup} rw - cgroup2 cgroup2 rw\n",
    )
    _write(proc / str(PID) / "cgroup", f"0::/outer/docker/{ID}\n")
    files = locate(PID, proc=str(proc))
    assert files is not None
    assert files.memory == f"{cgroup}/docker/{ID}/memory.current"


def test_a_process_that_is_gone_has_no_files(tmp_path: Path) -> None:
    _v2_host(tmp_path)
    assert locate(PID + 1, proc=str(tmp_path / "proc")) is None


def test_a_removed_cgroup_fails_the_read(tmp_path: Path) -> None:
    """The sampler drops a container whose read fails: the files' disappearance must show."""
    proc = _v2_host(tmp_path)
    files = locate(PID, proc=str(proc))
    assert files is not None
    for name in ("cpu.stat", "memory.current", "memory.stat", "memory.max", "io.stat"):
        (tmp_path / "cgroup" / f"system.slice/docker-{ID}.scope" / name).unlink()
    (tmp_path / "cgroup" / f"system.slice/docker-{ID}.scope" / "pids.current").unlink()
    with pytest.raises(FileNotFoundError):
        CgroupReader(files)


@pytest.mark.parametrize(
    ("text", "v2", "expected"),
    [
        (b"max\n", True, None),
        (b"1073741824\n", True, 1073741824),
        (b"9223372036854771712\n", False, None),
        (b"1073741824\n", False, 1073741824),
    ],
)
def test_limits(text: bytes, v2: bool, expected: int | None) -> None:
    assert parse_limit(text, v2) == expected


def test_parsers_of_single_files() -> None:
    assert parse_cpu_stat_ns(V2_CPU_STAT) == 2_500_000_000
    assert parse_cpu_stat_ns(b"user_usec 1\n") is None
    assert parse_inactive_file(V1_MEMORY_STAT, v2=False) == 52428800
    assert parse_inactive_file(V2_MEMORY_STAT, v2=True) == 20971520
    assert parse_blkio(b"Total 0\n") == (0, 0)  # a cgroup that never did I/O
    assert parse_io_stat(b"") == (0, 0)
    assert parse_net_dev(NET_DEV.splitlines(keepends=True)[0] * 2) == (0, 0)

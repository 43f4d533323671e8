"""The cgroup reading of the GPU accounting and the per-container stats, against the host's own
/proc and /sys/fs/cgroup: on a cgroup v2 host (Debian 12, Ubuntu 22.04 and later) that is the
only check of the v2 paths on real files, which the rig (cgroup v1) cannot give.

In the ``gpu`` lane, with the real-GPU tests, since a machine with a GPU is the one place
these run on a host other than the rig's (docs/compatibility.md):

    .venv/bin/pytest -m gpu tests/test_host_cgroup.py -s   # prints the version it found
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from deepdockd.gpu.procfs import container_id_of
from deepdockd.stats.cgroup import CgroupReader, locate

pytestmark = pytest.mark.gpu

_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def host_cgroup_version() -> int:
    """2 where /sys/fs/cgroup is the unified hierarchy itself, else 1 (v1, or hybrid)."""
    return 2 if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists() else 1


def test_this_process_cgroup_is_found_and_read_as_the_host_mounts_it() -> None:
    version = host_cgroup_version()
    print(f"\nthis host's cgroup version: {version}")
    files = locate(os.getpid())
    assert files is not None
    assert files.version == version, files
    reader = CgroupReader(files)
    try:
        cpu_ns, memory_bytes = reader.fast()
        slow = reader.slow()
    finally:
        reader.close()
    assert (cpu_ns or 0) > 0, files  # None (unreadable) fails too
    assert (memory_bytes or 0) > 0, files
    # (The root of a hierarchy has no pids.current: a process there has no count of its own.)
    if files.pids is not None and Path(files.pids).exists():
        assert (slow.pids or 0) >= 1, (files, slow)


def test_every_process_cgroup_line_of_this_host_parses() -> None:
    """Each /proc/PID/cgroup of the host gives no container, or one well-formed container id;
    where the line has Docker's own forms (``/docker/<id>``, ``docker-<id>.scope``), that id."""
    seen = 0
    for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            text = cgroup.read_text()
        except OSError:  # gone meanwhile
            continue
        seen += 1
        found = container_id_of(text)
        docker_ids = re.findall(r"(?:/docker/|docker-)([0-9a-f]{64})", text)
        if docker_ids:
            assert found == docker_ids[0], text
        else:
            assert found is None or _CONTAINER_ID.fullmatch(found), text
    assert seen > 1

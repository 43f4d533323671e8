"""What a test may allocate: SSH ports and service ports of its own.

Allocation reads every namespace's containers, so a container that another test left behind
(a failed one, in any file) holds its port and GPUs for everyone. Each test that creates
containers takes a block of ports (and a UUID stem, ``gpu_stem``) that no other test uses, so
its expectations ("the lowest port", "GPU 0 is free") hold whatever the others did. No other
test uses the pools: the default range is 22000-22999, the fuzz test's 23000-23999 (and its
service ports 24000-24999), and Linux hands out ephemeral ports from 32768 to 60999, so the
pools sit below and above those. (The bench, 24000-24999 and a few from 25000 for its
`docker run` baseline, never runs beside the tests: both hold the rig's lock.)
"""

from __future__ import annotations

import pytest

SSH_PORT_POOL = (25000, 32749)
SSH_PORT_BLOCK = 30

# The host ports of containers' published services ("ports", service_port_range) come from a
# pool of their own, above Linux's ephemeral ports, in blocks as large as the most a test
# publishes at once.
SERVICE_PORT_POOL = (61000, 65499)
SERVICE_PORT_BLOCK = 50


class PortBlocks:
    """A pool of ports handed out in blocks of ``size``, each block once per run."""

    def __init__(self, pool: tuple[int, int], size: int, what: str) -> None:
        self.pool = pool
        self.size = size
        self.what = what
        # The first port of each block, up to the last block that fits the pool whole.
        self._starts = iter(range(pool[0], pool[1] - size + 2, size))

    def take(self) -> tuple[int, int]:
        """The next block, as a port range (first, last)."""
        low = next(self._starts, None)
        if low is None:
            pytest.fail(
                f"more tests ask for {self.what} than {self.pool[0]}-{self.pool[1]} has blocks "
                f"of {self.size}: widen the pool or shrink its blocks"
            )
        return low, low + self.size - 1


SSH_PORTS = PortBlocks(SSH_PORT_POOL, SSH_PORT_BLOCK, "ssh_ports")
SERVICE_PORTS = PortBlocks(SERVICE_PORT_POOL, SERVICE_PORT_BLOCK, "service_ports")

"""Where a create's time goes: its phases, timed one after another, for the debug log and the
answer's ``Server-Timing`` header (which a browser's network panel shows, and ``make bench``
reads beside its by-hand baseline)."""

from __future__ import annotations

import time

# The phases of a create, in order (docs/api.md, "Server-Timing").
CREATE_PHASES = (
    "resolve",  # the image reference to an id, the GPUs asked for
    "allocate",  # under the allocation lock: name, quota, GPUs, ports
    "home_network",  # the owner's home volume and network, made or found
    "docker_create",  # Docker's create
    "hash_wait",  # what is left of the password's hash, made in a thread from the start
    "bootstrap_files",  # the bootstrap's files written on the host (or copied in)
    "start",  # Docker's start
    "sshd_ready",  # from the start until the container's SSH server greets
    "answer",  # the view refreshed, the answer read
)


class PhaseClock:
    """Milliseconds per phase: each :meth:`done` closes the phase that began when the one
    before it ended (or when the clock was made)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.ms[phase] = self.ms.get(phase, 0.0) + (now - self._last) * 1000
        self._last = now

    def server_timing(self) -> str:
        """The phases as an HTTP ``Server-Timing`` header's value."""
        return ", ".join(f"{phase};dur={ms:.1f}" for phase, ms in self.ms.items())

    def __str__(self) -> str:
        total = sum(self.ms.values())
        parts = ", ".join(f"{phase} {ms:.0f}" for phase, ms in self.ms.items())
        return f"{total:.0f} ms ({parts})"

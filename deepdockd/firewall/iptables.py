"""The one door to the iptables binaries: each call an asyncio subprocess, never a shell.

``-w`` waits for the xtables lock that dockerd and others take, so a change of Docker's (a
network made at the same moment) and ours never fail each other. Only the filter table is
touched.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence

# Seconds an iptables call may take, lock wait included; far above the milliseconds it takes.
CALL_TIMEOUT_S = 30.0


class IptablesError(Exception):
    """iptables is missing, refused (not root), or failed; ``str()`` says which, in one line."""


class Iptables:
    """``binary`` and ``restore_binary`` are seams for tests; the defaults are the host's."""

    def __init__(self, binary: str = "iptables", restore_binary: str = "iptables-restore") -> None:
        self._binary = binary
        self._restore_binary = restore_binary

    async def listing(self) -> str:
        """The filter table, as ``iptables -S`` prints it."""
        return await self._run(self._binary, "-w", "-S")

    async def restore(self, text: str) -> None:
        """Apply ``text`` (iptables-restore's format) in one transaction, leaving every chain
        it does not name as it was."""
        await self._run(self._restore_binary, "-w", "--noflush", stdin=text)

    async def has_chain(self, chain: str) -> bool:
        try:
            await self._run(self._binary, "-w", "-S", chain)
        except IptablesError:
            return False
        return True

    async def new_chain(self, chain: str) -> None:
        await self._run(self._binary, "-w", "-N", chain)

    async def has_rule(self, chain: str, rule: Sequence[str]) -> bool:
        try:
            await self._run(self._binary, "-w", "-C", chain, *rule)
        except IptablesError:
            return False
        return True

    async def insert_first(self, chain: str, rule: Sequence[str]) -> None:
        await self._run(self._binary, "-w", "-I", chain, "1", *rule)

    async def change(self, arguments: Sequence[str]) -> None:
        """One change given as iptables' own arguments (``-D CHAIN RULE…``, ``-X CHAIN``)."""
        await self._run(self._binary, "-w", *arguments)

    async def _run(self, binary: str, *arguments: str, stdin: str | None = None) -> str:
        command = " ".join((binary, *arguments))
        path = shutil.which(binary)
        if path is None:
            raise IptablesError(f"{binary} is not installed (not on PATH)")
        try:
            process = await asyncio.create_subprocess_exec(
                path,
                *arguments,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise IptablesError(f"cannot run {binary}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                out, err = await process.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise IptablesError(f"{command}: no answer in {CALL_TIMEOUT_S:g} s") from None
        if process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            why = lines[-1] if lines else f"exit status {process.returncode}"
            raise IptablesError(f"{command}: {why}")
        return out.decode(errors="replace")

"""State files that fail closed.

What Docker cannot hold lives in small files of the state directory (mode 0600, written whole
and atomically): who pulled which private image and who set each tag (``images.json``),
extended leases and stop reasons (``containers.json``), when each port was freed
(``ports.json``). A file that deepdockd wrote before and cannot find now is *lost*: reading it
raises :class:`StateFileLost`, never gives an empty file, and the decisions that depend on it
are refused until an admin restores it, or writes it anew (``{}``), which is their word that
what it held is gone.

"Never written" is told from "lost" by the directory's manifest, ``state-files.json``
(``{"written": ["containers.json", ...]}``): every state file deepdockd wrote or read. An
absent file that the manifest lists is lost; one it does not list was never written. Without
a manifest (:meth:`StateDirectory.settle`, at start):

- some state file is there: the directory of a deepdockd from before the manifest; the
  manifest is made from the files there, and the absent ones count as never written;
- none is there: a new directory, or a whole directory lost. Docker is the witness: this
  namespace's labelled containers exist only where deepdockd ran before. A new directory's
  manifest starts empty; a lost one's lists every state file, each lost until restored.
  Until the witness has answered (Docker down at start), an absent file is
  :class:`StateFileUnknown`: neither empty nor lost, and refused like a lost one.

A manifest that cannot be read counts as listing every state file.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from deepdockd.errors import ApiError
from deepdockd.private_files import write_private

log = logging.getLogger(__name__)

MANIFEST = "state-files.json"
# Whether deepdockd ran on this Docker before, in this namespace: Docker holds its containers.
Witness = Callable[[], Awaitable[bool]]


class StateFileMissing(Exception):
    """An absent state file that may not be taken as empty. ``until`` says what ends it."""

    until = "it is restored"

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class StateFileLost(StateFileMissing):
    """Written before (the manifest says so), absent now."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, f"{path} was written before and is gone")


class StateFileUnknown(StateFileMissing):
    """Absent, in a directory without a manifest, and Docker has not said yet whether
    deepdockd ran here before."""

    until = "Docker answers"

    def __init__(self, path: Path) -> None:
        super().__init__(
            path,
            f"{path} is absent, and deepdockd cannot tell yet whether it was lost: the state "
            "directory has no manifest and Docker has not said whether this namespace has "
            "containers",
        )


class StateDirectory:
    """The state directory and its manifest. ``witness`` None (tools, tests of one file): a
    directory without a manifest is a new one."""

    def __init__(self, path: Path, *, witness: Witness | None = None) -> None:
        self.path = path
        self._witness = witness
        self._settled = witness is None
        self._names: set[str] = set()  # the state files, as their keepers open them
        self._known: set[str] = set()  # those known written: the manifest as read, and notes
        self._seen: tuple[int, int, int] | None = None  # the manifest's (inode, size, mtime)
        self._broken = False  # the manifest cannot be read

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def file(self, name: str) -> StateFile:
        self._names.add(name)
        return StateFile(self, name)

    async def settle(self) -> None:
        """Decide what a directory without a manifest is (see the module's note), once.
        Raises what the witness raises (Docker down, say): call it again later."""
        if self._settled or self._settle_by_files():
            return
        assert self._witness is not None
        ran_here_before = await self._witness()
        if self._settle_by_files():  # a file written while Docker was asked
            return
        if ran_here_before:
            self._known |= self._names
            log.error(
                "%s holds none of its state files (%s) and no %s, but Docker holds "
                "containers of this namespace: the state directory was lost (or comes from a "
                "deepdockd older than the manifest that never wrote these files). Each file "
                "is refused until it is restored from a backup, or written anew as {} to "
                "forget what it held (after such an upgrade: {} in each)",
                self.path, ", ".join(sorted(self._names)), MANIFEST,
            )  # fmt: skip
        self._write_manifest()
        self._settled = True

    async def keep_settling(self, *, retry_s: float = 2.0) -> None:
        """:meth:`settle`, tried again every ``retry_s`` until the witness answers."""
        failing = False
        while True:
            try:
                await self.settle()
            except ApiError as exc:  # Docker down: each absent state file waits for it
                if not failing:
                    log.warning(
                        "cannot tell whether %s was lost yet (%s): absent state files are "
                        "refused until Docker answers",
                        self.path, exc.message,
                    )  # fmt: skip
                failing = True
                await asyncio.sleep(retry_s)
            else:
                if failing:
                    log.info("%s: Docker answered; the state files are read again", self.path)
                return

    # --- for StateFile ---

    def check_never_written(self, name: str) -> None:
        """Return if the absent file ``name`` was never written; raise if it may not be
        taken as empty."""
        if not self._read_manifest():
            if self._settled:
                if self._known:  # lost while deepdockd ran: what it knew is written back
                    self._write_manifest()
            elif not self._settle_by_files():
                raise StateFileUnknown(self.path / name)
        if name in self._known or self._broken:
            raise StateFileLost(self.path / name)

    def note_written(self, name: str) -> None:
        """``name`` exists now: from here on, its absence is a loss."""
        present = self._read_manifest()
        if name in self._known and present:
            return
        if not present and not self._settled and self._settle_by_files():
            return  # the manifest just made lists it
        self._known.add(name)
        self._write_manifest()

    # --- the manifest ---

    def _settle_by_files(self) -> bool:
        """Settle without the witness where the directory itself says: a manifest, or state
        files of a deepdockd from before the manifest."""
        if self._read_manifest():
            self._settled = True
            return True
        present = {name for name in self._names if (self.path / name).exists()}
        if not present:
            return False
        self._known |= present
        self._write_manifest()
        self._settled = True
        return True

    def _read_manifest(self) -> bool:
        """Read the manifest into ``_known`` if it changed; whether there is one."""
        path = self.manifest_path
        try:
            info = path.stat()
        except FileNotFoundError:
            self._seen, self._broken = None, False
            return False
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen == self._seen:
            return True
        self._seen = seen
        try:
            names = json.loads(path.read_text())["written"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError("'written' is not a list of file names")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not self._broken:
                log.error(
                    "%s cannot be read (%s): every state file counts as written, so one that "
                    "is absent is refused as lost until the manifest is mended",
                    path, exc,
                )  # fmt: skip
            self._broken = True
            return True
        self._broken = False
        self._known |= set(names)
        return True

    def _write_manifest(self) -> None:
        if self._broken:
            return  # a broken manifest is the admin's to mend, never written over
        write_private(self.manifest_path, json.dumps({"written": sorted(self._known)}) + "\n")
        self._seen = None  # read back at the next question


class StateFile:
    """One state file of a :class:`StateDirectory`."""

    def __init__(self, directory: StateDirectory, name: str) -> None:
        self.directory = directory
        self.name = name
        self.path = directory.path / name

    def read(self) -> str | None:
        """The file's text; None when it was never written. Raises
        :class:`StateFileMissing` when it is absent and may not be taken as empty (an
        ``OSError`` other than its absence passes through)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self.directory.check_never_written(self.name)
            return None
        self.directory.note_written(self.name)
        return text

    def check_absent(self) -> None:
        """For a keeper that found the file absent (by its own ``stat``): return if it was
        never written; raise :class:`StateFileMissing` if it may not be taken as empty."""
        self.directory.check_never_written(self.name)

    def write(self, text: str) -> None:
        """Write it whole, atomically, mode 0600; from here on its absence is a loss."""
        write_private(self.path, text)
        self.directory.note_written(self.name)

"""What deepdockd must know about images that Docker does not keep: who pulled an image with
credentials (a private image, for them and the admins only), and who set each tag through
deepdockd (a tag only they, or an admin, may move).

Docker keeps no owner for an image and no way to label one after it exists, so these records
live in ``STATE_DIR/images.json``, a state file that fails closed (``state_files.py``):

    {"private": {"sha256:…": {"owners": ["alice"], "references": ["registry.lab/x:1"]}},
     "tags": {"registry.lab/team/cuda:12": {"image_id": "sha256:…", "set_by": null},
              "registry.lab/alice/tool:1": {"image_id": "sha256:…", "set_by": "alice"}}}

``set_by`` null is an admin. Every record names an image id and is asked about that image
only, so a record that Docker no longer backs (an image removed by hand, a tag moved outside
deepdockd) decides nothing: a tag without a record that still names its image is the admins'.
A file that cannot be read, or that was written before and is gone, refuses every question
(fail closed): private images stay hidden until it is mended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deepdockd.errors import ServiceUnavailable
from deepdockd.state_files import StateDirectory, StateFileMissing
from deepdockd.tokens import Caller

log = logging.getLogger(__name__)

FILE_NAME = "images.json"


class ImageRecordsUnreadable(ServiceUnavailable):
    """The record of private images cannot be read: the image routes wait for it to be
    mended rather than show what may be someone's private image."""

    code = "image_records_unreadable"


@dataclass
class _Private:
    owners: set[str] = field(default_factory=set)
    references: set[str] = field(default_factory=set)  # what they pulled it as


@dataclass(frozen=True)
class TagRecord:
    """Who set a tag through deepdockd, last: a user, or None for an admin."""

    image_id: str
    set_by: str | None


class ImageRecords:
    def __init__(self, state: StateDirectory | Path) -> None:
        directory = state if isinstance(state, StateDirectory) else StateDirectory(state)
        self._file = directory.file(FILE_NAME)
        self.path = self._file.path
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) last read
        self._broken: ImageRecordsUnreadable | None = None
        self._private: dict[str, _Private] = {}  # image id -> who pulled it with credentials
        self._tags: dict[str, TagRecord] = {}  # tag -> who set it, on which image

    # --- questions ---

    def check(self) -> None:
        """Raise :class:`ImageRecordsUnreadable` unless the records can be read now."""
        self._refresh()

    def may_use(self, image_id: str, caller: Caller) -> bool:
        """Whether ``caller`` may see and use the image: an admin any; a user a public one,
        or a private one that the registry let them pull (:meth:`add_owner`)."""
        if caller.is_admin:
            return True
        self._refresh()
        private = self._private.get(image_id)
        return private is None or caller.user in private.owners

    def tag(self, tag: str, image_id: str) -> TagRecord | None:
        """Who set ``tag`` on ``image_id`` through deepdockd; None when no one did (the tag
        was on the host first, or was moved outside deepdockd)."""
        self._refresh()
        record = self._tags.get(tag)
        return record if record is not None and record.image_id == image_id else None

    def owners(self, image_id: str) -> frozenset[str]:
        """Who pulled the image with credentials; empty for a public image."""
        self._refresh()
        private = self._private.get(image_id)
        return frozenset(private.owners) if private else frozenset()

    # --- changes, each written through at once ---

    def add_owner(self, image_id: str, owner: str, reference: str) -> None:
        self._refresh()
        private = self._private.setdefault(image_id, _Private())
        if owner not in private.owners or reference not in private.references:
            private.owners.add(owner)
            private.references.add(reference)
            self._save()

    def make_public(self, image_id: str) -> None:
        self._refresh()
        if self._private.pop(image_id, None) is not None:
            self._save()

    def set_tag(self, tag: str, image_id: str, *, by: str | None) -> None:
        """``by`` (a user; None: an admin) set ``tag`` on ``image_id`` through deepdockd."""
        self._refresh()
        record = TagRecord(image_id, by)
        if self._tags.get(tag) != record:
            self._tags[tag] = record
            self._save()

    def forget(self, *, image_ids: Iterable[str] = (), tags: Iterable[str] = ()) -> None:
        """Drop what Docker no longer has: removed images, untagged tags."""
        self._refresh()
        gone_ids, gone_tags = set(image_ids), set(tags)
        private = {i: p for i, p in self._private.items() if i not in gone_ids}
        kept = {
            t: r for t, r in self._tags.items() if t not in gone_tags and r.image_id not in gone_ids
        }
        if private != self._private or kept != self._tags:
            self._private, self._tags = private, kept
            self._save()

    # --- the file ---

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._refresh_absent()
            return
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen != self._seen:
            self._seen = seen
            try:
                self._private, self._tags = _parse(self._file.read() or "{}")
                self._broken = None
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._fail(
                    f"{self.path} cannot be read ({exc}); until it is mended, image routes are "
                    "refused, so that no private image shows"
                )
            except StateFileMissing as exc:  # removed between the stat and the read
                self._seen = None
                self._fail(_missing_message(exc))
        if self._broken is not None:
            raise self._broken

    def _refresh_absent(self) -> None:
        self._seen, self._private, self._tags = None, {}, {}
        try:
            self._file.check_absent()
        except StateFileMissing as exc:
            raise self._fail(_missing_message(exc)) from None
        except OSError as exc:  # the state directory itself unreadable
            raise self._fail(
                f"{self.path} cannot be read ({exc}); image routes are refused"
            ) from None
        self._broken = None

    def _fail(self, message: str) -> ImageRecordsUnreadable:
        """The records are unreadable for ``message``: logged once, until it changes."""
        if self._broken is None or self._broken.message != message:
            log.error("%s", message)
        self._broken = ImageRecordsUnreadable(message)
        return self._broken

    def _save(self) -> None:
        document = {
            "private": {
                image_id: {"owners": sorted(p.owners), "references": sorted(p.references)}
                for image_id, p in sorted(self._private.items())
            },
            "tags": {
                tag: {"image_id": r.image_id, "set_by": r.set_by}
                for tag, r in sorted(self._tags.items())
            },
        }
        self._file.write(json.dumps(document, indent=2) + "\n")
        info = self.path.stat()
        self._seen = (info.st_ino, info.st_size, info.st_mtime_ns)


def _missing_message(exc: StateFileMissing) -> str:
    return (
        f"{exc}: until {exc.until}, image routes are refused, so that no private image shows "
        "(writing it anew as {} forgets who pulled what: every private image becomes public, "
        "every tag the admins')"
    )


def _parse(text: str) -> tuple[dict[str, _Private], dict[str, TagRecord]]:
    document = json.loads(text)
    private = {
        str(image_id): _Private({str(o) for o in entry["owners"]}, set(entry["references"]))
        for image_id, entry in document.get("private", {}).items()
    }
    # An older file's "admin_tags" ({tag: image id}) are tags an admin set.
    tags = {
        str(tag): TagRecord(str(image_id), None)
        for tag, image_id in document.get("admin_tags", {}).items()
    }
    for tag, entry in document.get("tags", {}).items():
        set_by = entry["set_by"]
        tags[str(tag)] = TagRecord(str(entry["image_id"]), None if set_by is None else str(set_by))
    return private, tags

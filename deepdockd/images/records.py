"""What deepdockd must know about images that Docker does not keep: who pulled an image with
credentials (a private image, for them and the admins only), and which tags an admin pulled
(tags that only an admin may re-point).

Docker keeps no owner for an image and no way to label one after it exists, so these records
live in ``STATE_DIR/images.json`` (mode 0600, written whole and atomically, read again
whenever the file changes):

    {"private": {"sha256:…": {"owners": ["alice"], "references": ["registry.lab/x:1"]}},
     "admin_tags": {"registry.lab/team/cuda:12": "sha256:…"}}

Every record names an image id and is asked about that image only, so a record that Docker
no longer backs (an image removed by hand, a tag moved outside deepdockd) decides nothing.
A file that cannot be read refuses every question (fail closed): private images stay hidden
until it is mended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deepdockd.errors import ServiceUnavailable
from deepdockd.private_files import write_private
from deepdockd.tokens import Caller

log = logging.getLogger(__name__)


class ImageRecordsUnreadable(ServiceUnavailable):
    """The record of private images cannot be read: the image routes wait for it to be
    mended rather than show what may be someone's private image."""

    code = "image_records_unreadable"


@dataclass
class _Private:
    owners: set[str] = field(default_factory=set)
    references: set[str] = field(default_factory=set)  # what they pulled it as


class ImageRecords:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "images.json"
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) last read
        self._broken: ImageRecordsUnreadable | None = None
        self._private: dict[str, _Private] = {}  # image id -> who pulled it with credentials
        self._admin_tags: dict[str, str] = {}  # tag -> the image id an admin pulled under it

    # --- questions ---

    def may_use(self, image_id: str, caller: Caller) -> bool:
        """Whether ``caller`` may see and use the image: an admin any; a user a public one,
        or a private one they pulled with credentials themselves."""
        if caller.is_admin:
            return True
        self._refresh()
        private = self._private.get(image_id)
        return private is None or caller.user in private.owners

    def admin_pulled(self, tag: str, image_id: str) -> bool:
        """Whether an admin pulled ``tag`` and it still names the image they pulled."""
        self._refresh()
        return self._admin_tags.get(tag) == image_id

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

    def mark_admin_pulled(self, tag: str, image_id: str) -> None:
        self._refresh()
        if self._admin_tags.get(tag) != image_id:
            self._admin_tags[tag] = image_id
            self._save()

    def forget(self, *, image_ids: Iterable[str] = (), tags: Iterable[str] = ()) -> None:
        """Drop what Docker no longer has: removed images, untagged tags."""
        self._refresh()
        gone_ids, gone_tags = set(image_ids), set(tags)
        private = {i: p for i, p in self._private.items() if i not in gone_ids}
        admin_tags = {
            t: i for t, i in self._admin_tags.items() if t not in gone_tags and i not in gone_ids
        }
        if private != self._private or admin_tags != self._admin_tags:
            self._private, self._admin_tags = private, admin_tags
            self._save()

    # --- the file ---

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._broken, self._private, self._admin_tags = None, None, {}, {}
            return
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen != self._seen:
            self._seen = seen
            try:
                self._private, self._admin_tags = _parse(self.path.read_text())
                self._broken = None
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._broken = ImageRecordsUnreadable(
                    f"{self.path} cannot be read ({exc}); until it is mended, image routes are "
                    "refused, so that no private image shows"
                )
                log.error("%s", self._broken.message)
        if self._broken is not None:
            raise self._broken

    def _save(self) -> None:
        document = {
            "private": {
                image_id: {"owners": sorted(p.owners), "references": sorted(p.references)}
                for image_id, p in sorted(self._private.items())
            },
            "admin_tags": dict(sorted(self._admin_tags.items())),
        }
        write_private(self.path, json.dumps(document, indent=2) + "\n")
        info = self.path.stat()
        self._seen = (info.st_ino, info.st_size, info.st_mtime_ns)


def _parse(text: str) -> tuple[dict[str, _Private], dict[str, str]]:
    document = json.loads(text)
    private = {
        str(image_id): _Private({str(o) for o in entry["owners"]}, set(entry["references"]))
        for image_id, entry in document.get("private", {}).items()
    }
    admin_tags = {
        str(tag): str(image_id) for tag, image_id in document.get("admin_tags", {}).items()
    }
    return private, admin_tags

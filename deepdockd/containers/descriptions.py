"""The containers as the API describes them (ManagedContainer: Docker's labels and state, and
the fair-share record), each made again only when its summary or its record has changed: a
list of hundreds is answered from memory, with one read of the records file, not one each."""

from __future__ import annotations

from collections.abc import Collection

from deepdockd.containers.model import ManagedContainer
from deepdockd.docker import ContainerSummary
from deepdockd.fairshare.records import EMPTY, ContainerRecords, Record


class Descriptions:
    def __init__(self, records: ContainerRecords) -> None:
        self._records = records
        # By container id: the summary and record it was described from, and the description.
        self._described: dict[str, tuple[ContainerSummary, Record, ManagedContainer]] = {}

    def of(self, summary: ContainerSummary, record: Record | None = None) -> ManagedContainer:
        """The container as ``summary`` and its ``record`` (read when not given) describe it.
        The view and the records put a new object in place of one that changes, so a
        description made from the same two objects (or an equal summary) is the same."""
        if record is None:
            record = self._records.get(summary.id)
        known = self._described.get(summary.id)
        # The same summary object (the live view's), or an equal one (read from Docker again
        # while the view is stale, or with live_view off).
        if (
            known is not None
            and known[1] is record
            and (known[0] is summary or known[0] == summary)
        ):
            return known[2]
        described = ManagedContainer.from_summary(summary, record)
        self._described[summary.id] = (summary, record, described)
        return described

    def all_of(self, summaries: list[ContainerSummary]) -> list[ManagedContainer]:
        """Each of ``summaries`` described (they are every container there is: the removed
        ones are forgotten), the records read once for them all."""
        records = self._records.snapshot()
        if len(self._described) > len(summaries) + 64:
            current = {s.id for s in summaries}
            self._described = {i: d for i, d in self._described.items() if i in current}
        return [self.of(s, records.get(s.id, EMPTY)) for s in summaries]

    def ids(self) -> Collection[str]:
        """The containers described lately: every one there is, and a few removed since."""
        return self._described.keys()

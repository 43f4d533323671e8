"""``GET /containers`` at memory speed: each container's answer kept JSON-encoded, encoded
again only when what it shows changes. Its description (Docker's labels and state, its
fair-share record) changes with a Docker event or a lease; its GPU use and disk with their
measurements. The two parts are encoded apart, each cached with what it was made from, and
put together as bytes: a list of hundreds is a join, not hundreds of ``json.dumps``."""

from __future__ import annotations

import json
from collections.abc import Collection

from deepdockd.accounting import GpuAccounting
from deepdockd.api import answers
from deepdockd.containers.disk import DiskMeter
from deepdockd.containers.service import ManagedContainer
from deepdockd.stats.sampler import ContainerStats


class EncodedContainers:
    def __init__(self) -> None:
        # By container id: the description it was encoded from, and its answer's keys from
        # it as JSON without the closing brace.
        self._described: dict[str, tuple[ManagedContainer, bytes]] = {}
        # By container id: the measurements' keys, as JSON from the comma to the closing
        # brace, and the values they were encoded from.
        self._used: dict[str, tuple[tuple[object, ...], bytes]] = {}

    def list_body(
        self,
        containers: list[ManagedContainer],
        accounting: GpuAccounting,
        disk: DiskMeter | None,
        *,
        existing: Collection[str],
        stats: ContainerStats | None = None,
    ) -> bytes:
        """``{"containers": [...]}``, the answer of GET /containers; ``existing``: the ids
        of every container there is (whoever asks), so that the removed ones are forgotten."""
        parts = [self.encode(c, accounting, disk, stats) for c in containers]
        if len(self._described) > len(existing) + 64:
            self._forget_all_but(existing)
        return b'{"containers": [' + b", ".join(parts) + b"]}"

    def encode(
        self,
        container: ManagedContainer,
        accounting: GpuAccounting,
        disk: DiskMeter | None,
        stats: ContainerStats | None = None,
    ) -> bytes:
        """The container's answer (answers.container) as JSON."""
        known = self._described.get(container.id)
        if known is None or known[0] is not container:
            head = json.dumps(answers.container_described(container)).encode()[:-1]
            known = self._described[container.id] = (container, head)
        use = answers.container_use(container, accounting, disk, stats)
        values = tuple(use.values())
        measured = self._used.get(container.id)
        if measured is None or measured[0] != values:
            tail = b", " + json.dumps(use).encode()[1:]
            measured = self._used[container.id] = (values, tail)
        return known[1] + measured[1]

    def _forget_all_but(self, keep: Collection[str]) -> None:
        self._described = {i: d for i, d in self._described.items() if i in keep}
        self._used = {i: u for i, u in self._used.items() if i in keep}

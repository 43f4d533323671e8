"""A live view of this namespace's containers, kept current by Docker's event stream, so that
lists are answered from memory instead of asking Docker each time (an informer, in
Kubernetes' words: a list, then a watch of changes, listed again when the watch breaks).

The view is for answering only. Decisions (ports, GPUs) read Docker's labels under the
allocation lock, as before. While the stream is broken the view is stale and reads go to
Docker; once Docker answers again the view is listed afresh, and what changed meanwhile is
told to the event stream's clients as if Docker had said it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from deepdockd import labels
from deepdockd.background import cancel_and_wait
from deepdockd.docker import ContainerEvent, ContainerSummary, Docker
from deepdockd.errors import ApiError

log = logging.getLogger(__name__)

# Docker's actions that change what a container shows, and the change each is to clients.
# (exec_*, attach, resize, top, archive and the like change nothing shown.)
CHANGES = {
    "create": "created",
    "start": "started",
    "restart": "restarted",
    "die": "died",
    "kill": "killed",
    "stop": "stopped",
    "pause": "paused",
    "unpause": "unpaused",
    "rename": "renamed",
    "update": "updated",
    "oom": "oom",
    "destroy": "removed",
}
HEALTH_PREFIX = "health_status"
# How often the view is listed afresh, against an event that never came.
RESYNC_S = 300.0
# How long to wait before listening again after the stream broke (Docker restarting).
RETRY_S = 0.2
# Changes kept for clients that come back with Last-Event-ID.
HISTORY = 1000
# How long a stream has to end when the daemon stops, before its connection is cut.
END_GRACE_S = 1.0
# Changes a client may leave unread before it is dropped.
CLIENT_BACKLOG = 256


@dataclass(frozen=True)
class Change:
    id: int  # increasing; the SSE event id
    type: str  # "created", "started", ..., "removed"
    container: ContainerSummary  # as it is after the change (before it, for "removed")
    time: str  # RFC 3339, UTC

    @property
    def owner(self) -> str:
        return self.container.labels.get(labels.OWNER, "")


@dataclass(eq=False)
class Subscription:
    """One client of the change stream: what it may see, and the changes it has not read;
    None in the queue means it was let go (it read too slowly, or the daemon stops)."""

    visible: Callable[[Change], bool]
    changes: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)
    # Called when it is let go: it breaks the client's connection, so that a write that
    # waits for a client who does not read ends too.
    on_drop: Callable[[], None] = lambda: None

    def drop(self) -> None:
        self.changes.put_nowait(None)
        self.on_drop()


class ContainerView:
    def __init__(self, docker: Docker, namespace: str, *, resync_s: float = RESYNC_S) -> None:
        self._docker = docker
        self._namespace = namespace
        self._resync_s = resync_s
        self._containers: dict[str, ContainerSummary] = {}
        self._fresh = False
        self._listed = False  # once listed, a later list tells clients what changed
        # Reads of Docker are numbered as they begin; each container's entry (or its absence,
        # once removed) remembers the read it came from, so an older read never overwrites it.
        self._reads = itertools.count()
        self._seen: dict[str, int] = {}
        self._history: deque[Change] = deque(maxlen=HISTORY)
        # Event ids go on increasing across daemon restarts: they start at the time in µs.
        self._ids = itertools.count(time.time_ns() // 1000)
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None

    # --- reading ---

    @property
    def fresh(self) -> bool:
        return self._fresh

    async def summaries(self) -> list[ContainerSummary]:
        """The namespace's containers: from the view while it is fresh, else from Docker."""
        if self._fresh:
            return list(self._containers.values())
        return await self._docker.list_containers(filters=self._filters())

    async def refresh(self, container_id: str) -> None:
        """Read one container again from Docker (after a change made through the API), so
        that the caller's next read sees it; tells no client (Docker's event will). If Docker
        does not answer, the view is stale (reads go to Docker) until it is listed again."""
        read = next(self._reads)
        try:
            found = await self._docker.container_summary(container_id)
        except ApiError as exc:
            log.warning("container view stale until listed again: %s", exc.message)
            self._fresh = False
            return
        self._put_and_tell_removal(container_id, found, read)

    def forget(self, container_id: str) -> None:
        """A container removed through the API."""
        self._put_and_tell_removal(container_id, None, next(self._reads))

    def _put_and_tell_removal(
        self, container_id: str, container: ContainerSummary | None, read: int
    ) -> None:
        """A write's read: when it finds the container gone, clients are told now (Docker's
        destroy event, coming later, finds nothing left to tell)."""
        before = self._containers.get(container_id)
        self._put(container_id, container, read)
        if before is not None and container_id not in self._containers:
            self._tell("removed", before, time.time_ns())

    # --- the change stream ---

    def subscribe(
        self, visible: Callable[[Change], bool], *, after: int | None = None
    ) -> tuple[Subscription, list[Change]]:
        """A new client, and the changes after ``after`` it may see that the view still
        holds (for Last-Event-ID)."""
        subscription = Subscription(visible)
        self._subscriptions.add(subscription)
        missed = [c for c in self._history if after is not None and c.id > after and visible(c)]
        return subscription, missed

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    # --- following Docker ---

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="container-view")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.end_streams()

    def end_streams(self) -> None:
        """End every client's stream (the daemon stops: they would never end by themselves)."""
        loop = asyncio.get_running_loop()
        for subscription in self._subscriptions:
            subscription.changes.put_nowait(None)
            # One whose client does not read would hold up the stop: its connection is cut.
            loop.call_later(END_GRACE_S, subscription.on_drop)
        self._subscriptions.clear()

    async def _follow(self) -> None:
        """Forever: watch Docker; after a break, wait a moment and watch again."""
        while True:
            try:
                await self._watch()
            except Exception as exc:  # Docker went away, or said something unreadable
                if self._fresh:
                    why = exc.message if isinstance(exc, ApiError) else repr(exc)
                    log.warning("container view stale (reads go to Docker): %s", why)
                self._fresh = False
                await asyncio.sleep(RETRY_S)

    async def _watch(self) -> None:
        """Open the event stream, list, then apply each event as it comes; list afresh every
        resync interval, or within a second once a refresh found Docker away."""
        events: asyncio.Queue[ContainerEvent | Exception] = asyncio.Queue()
        async with self._docker.container_events(filters=self._filters()) as stream:
            # The stream is open before the list: an event that comes during the list is
            # applied after it, and nothing falls between the two.
            reader = asyncio.create_task(_read(stream, events), name="container-events")
            try:
                next_resync = 0.0
                while True:
                    if not self._fresh or time.monotonic() >= next_resync:
                        await self._resync()
                        next_resync = time.monotonic() + self._resync_s
                    try:
                        async with asyncio.timeout(1.0):
                            item = await events.get()
                    except TimeoutError:
                        continue
                    await self._apply(_with_the_rest(item, events))
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _apply(self, batch: list[ContainerEvent | Exception]) -> None:
        """The events that have come, in order: each container they name is read from
        Docker once (what it is now), however many events name it, so that a burst of
        events never puts the view behind; then each event is told to clients."""
        changes = []
        for item in batch:
            if isinstance(item, Exception):
                raise item
            change = _change_of(item.action)
            if change is not None and item.container_id:
                changes.append((change, item))
        wanted = sorted({e.container_id for change, e in changes if change != "removed"})
        read = next(self._reads)
        summaries = await asyncio.gather(*(self._docker.container_summary(i) for i in wanted))
        found = dict(zip(wanted, summaries, strict=True))
        for change, event in changes:
            before = self._containers.get(event.container_id)
            after = None if change == "removed" else found.get(event.container_id)
            self._put(event.container_id, after, read)
            after = self._containers.get(event.container_id)  # a newer read may have won
            shown = after or before
            if shown is not None:
                self._tell(change, shown, event.time_ns)

    async def _resync(self) -> None:
        """List afresh; tell clients what changed since the view last knew (a change missed
        while the stream was down, or an event that never came)."""
        read = next(self._reads)
        listed = await self._docker.list_containers(filters=self._filters())
        now = {c.id: c for c in listed}
        for container_id, newer in self._seen.items():  # read after the list began: kept
            if newer > read:
                now.pop(container_id, None)
                if container_id in self._containers:
                    now[container_id] = self._containers[container_id]
        # The list's entries are as of its read; older absences are forgotten.
        self._seen = {i: r for i, r in self._seen.items() if r > read} | {
            i: read for i in now if self._seen.get(i, -1) <= read
        }
        old, self._containers = self._containers, now
        self._fresh = True
        if not self._listed:  # the first list: nothing to compare it with
            self._listed = True
            return
        stamp = time.time_ns()
        for container_id, container in old.items():
            if container_id not in now:
                self._tell("removed", container, stamp)
        for container_id, container in now.items():
            previous = old.get(container_id)
            if previous is None:
                self._tell("created", container, stamp)
            elif previous.state != container.state or previous.name != container.name:
                self._tell("updated", container, stamp)

    def _put(self, container_id: str, container: ContainerSummary | None, read: int) -> None:
        """What a read of Docker found, unless the view holds a newer read of it (a refresh
        and an event's read may cross)."""
        if read < self._seen.get(container_id, -1):
            return
        self._seen[container_id] = read
        if container is None:
            self._containers.pop(container_id, None)
        else:
            self._containers[container_id] = container

    def _tell(self, change_type: str, container: ContainerSummary, time_ns: int) -> None:
        seconds = datetime.fromtimestamp(time_ns / 1e9, UTC)
        change = Change(next(self._ids), change_type, container, seconds.isoformat())
        self._history.append(change)
        for subscription in list(self._subscriptions):
            if not subscription.visible(change):
                continue
            if subscription.changes.qsize() >= CLIENT_BACKLOG:  # it does not read: let go
                log.info("an event stream client left %d changes unread: dropped", CLIENT_BACKLOG)
                self._subscriptions.discard(subscription)
                subscription.drop()
            else:
                subscription.changes.put_nowait(change)

    def _filters(self) -> dict[str, list[str]]:
        return labels.namespace_filter(self._namespace)


async def _read(
    stream: AsyncIterator[ContainerEvent], events: asyncio.Queue[ContainerEvent | Exception]
) -> None:
    """Docker's events into ``events``; the error that ends the stream last."""
    try:
        async for event in stream:
            events.put_nowait(event)
    except Exception as exc:
        events.put_nowait(exc)


def _with_the_rest(
    first: ContainerEvent | Exception, events: asyncio.Queue[ContainerEvent | Exception]
) -> list[ContainerEvent | Exception]:
    batch = [first]
    while not events.empty():
        batch.append(events.get_nowait())
    return batch


def _change_of(action: str) -> str | None:
    """What a Docker action is to clients; None for one that changes nothing shown."""
    return CHANGES.get(action) or ("health" if action.startswith(HEALTH_PREFIX) else None)

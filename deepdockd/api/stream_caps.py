"""Each user's cap on the streams they hold at once: log follows, ``GET /events`` and pulls
in flight. A stream holds a connection to the client for as long as it lasts and, but for
``/events`` (served from the live view), a connection to Docker; without a cap one user
could hold as many as the host's file limit allows. The quick calls have Docker connections
of their own (docker.py), so a user at the cap slows no one else down."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from deepdockd.errors import TooManyRequests
from deepdockd.tokens import Caller


class TooManyStreams(TooManyRequests):
    code = "too_many_streams"


class StreamCaps:
    """The streams each user holds, against ``max_per_user`` (0: no cap). Admins count
    too: a runaway script of theirs holds Docker's connections like anyone's."""

    def __init__(self, max_per_user: int) -> None:
        self.max_per_user = max_per_user
        self._held: Counter[str] = Counter()

    def held(self, user: str) -> int:
        return self._held[user]

    @contextmanager
    def hold(self, caller: Caller) -> Iterator[None]:
        """One stream of ``caller``'s for the block; at the cap, :class:`TooManyStreams`."""
        cap = self.max_per_user
        if cap and self._held[caller.user] >= cap:
            raise TooManyStreams(
                f"you hold {cap} streams (log follows, /events, pulls in flight), the most "
                f"one user may hold at once (max_streams_per_user = {cap}); close one first",
                details={"max_streams_per_user": cap},
            )
        self._held[caller.user] += 1
        try:
            yield
        finally:
            self._held[caller.user] -= 1
            if not self._held[caller.user]:
                del self._held[caller.user]

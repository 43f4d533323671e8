"""A browser's pass to one container's services: a random cookie that stands for the token
that made it, valid only under that container's proxy path and only for a while.

A browser cannot send a bearer token with a link it follows, and a token in a URL ends up in
the history, in logs and in the Referer of every page the service links to. So the
dashboard trades the token for a cookie: ``HttpOnly`` (no page's script reads it),
``SameSite=Strict`` (no other site's page sends it), ``Path`` the container's proxy path (the
browser sends it nowhere else, and deepdockd takes it nowhere else), and ``Secure`` where the
page came over TLS. Behind the cookie is the token itself, checked again on each request, so
a revoked token ends its sessions at once. Sessions live in memory: a restart ends them, and
the dashboard opens a new one at the next click.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# A session ends after this long without a request, and this long after it began whatever.
IDLE_S = 3600.0
LIFETIME_S = 12 * 3600.0
# Sessions one token may hold at once; the oldest goes first.
PER_TOKEN = 64


@dataclass
class _Session:
    token: str
    container: str
    started: float
    last_used: float


class ProxySessions:
    """Sessions by the digest of their cookie (a lookup by the secret itself would time the
    comparison). ``clock`` is a seam for tests."""

    def __init__(self, namespace: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        # One cookie name per namespace: two daemons on one host share the browser's jar.
        self.cookie_name = f"deepdockd_proxy_{namespace}"
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def open(self, token: str, container: str) -> tuple[str, float]:
        """A new session of ``token``'s for ``container``: its cookie and its lifetime (s)."""
        self._drop_expired()
        mine = [key for key, s in self._sessions.items() if s.token == token]
        for key in mine[: max(0, len(mine) - PER_TOKEN + 1)]:
            del self._sessions[key]
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        self._sessions[_digest(secret)] = _Session(token, container, now, now)
        return secret, LIFETIME_S

    def token_for(self, secret: str, container: str) -> str | None:
        """The token behind a cookie, if it is a live session for ``container``."""
        key = _digest(secret)
        session = self._sessions.get(key)
        now = self._clock()
        if session is None or _expired(session, now):
            self._sessions.pop(key, None)
            return None
        if session.container != container:
            return None
        session.last_used = now
        return session.token

    def __len__(self) -> int:
        return len(self._sessions)

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if _expired(s, now)]:
            del self._sessions[key]


def _expired(session: _Session, now: float) -> bool:
    return now - session.last_used > IDLE_S or now - session.started > LIFETIME_S


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()

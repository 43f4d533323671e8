"""Callers on the local socket: who the kernel says they are (``SO_PEERCRED``), nothing to
hand out, leak or rotate.

A caller's uid names a host account, and the account's name is their user name in the API
(so it must pass the API's rule for user names). Root and the members of ``admin_group`` are
admins; everyone else is a user. A uid with no account is refused, and so is a name the API
cannot carry: the answer says which. The uid is the one the kernel reports in the daemon's
own user namespace: a process in a container's user namespace is mapped back by the kernel,
never by what the process says.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import time

from deepdockd.errors import Forbidden
from deepdockd.tokens import USER_NAME, Caller

# struct ucred: pid, uid, gid (Linux).
_UCRED = struct.Struct("3i")


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket, as the kernel saw it when
    the process connected."""
    raw = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def caller_of_uid(uid: int, admin_group: str) -> Caller:
    """The API caller host uid ``uid`` is; Forbidden when it cannot be one."""
    try:
        account = pwd.getpwuid(uid)
    except KeyError:
        raise Forbidden(
            f"uid {uid} has no account on this host, so it has no user name here; "
            "call as a user with an account, or with a token"
        ) from None
    name = account.pw_name
    if not USER_NAME.fullmatch(name):
        raise Forbidden(
            f"the host account {name!r} (uid {uid}) is not a name the API can carry (lower-"
            "case letters, digits, '_', '.', '-', at most 64): call with a token instead"
        )
    return Caller(user=name, role="admin" if _is_admin(account, admin_group) else "user")


class AdminAccounts:
    """Whether a container owner's host account is an admin's, for the fair-share rules that
    ask about owners (not callers) on the event loop: each name's answer is kept for
    ``ttl_s``, so the host's account lookups (which may go to LDAP) stay off the hot path."""

    def __init__(self, admin_group: str, *, ttl_s: float = 30.0) -> None:
        self.admin_group = admin_group
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, bool]] = {}  # name -> (when asked, answer)

    def is_admin(self, name: str) -> bool:
        now = time.monotonic()
        asked = self._known.get(name)
        if asked is None or now - asked[0] > self.ttl_s:
            asked = (now, account_is_admin(name, self.admin_group))
            self._known[name] = asked
        return asked[1]


def account_is_admin(name: str, admin_group: str) -> bool:
    """Whether host account ``name`` exists and is an admin's (root, or in admin_group)."""
    try:
        return _is_admin(pwd.getpwnam(name), admin_group)
    except KeyError:
        return False


def _is_admin(account: pwd.struct_passwd, admin_group: str) -> bool:
    if account.pw_uid == 0:
        return True
    try:
        group = grp.getgrnam(admin_group)
    except KeyError:
        return False  # no such group on this host: only root is an admin
    return group.gr_gid in os.getgrouplist(account.pw_name, account.pw_gid)

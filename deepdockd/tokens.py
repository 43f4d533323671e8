"""Bearer tokens: who may call the API, as which user and role.

Only SHA-256 hashes of the tokens are kept (``STATE_DIR/tokens.json``, mode 0600); a token is
32 random bytes, so a fast hash is enough, and hashes are compared in constant time. The
daemon re-reads the file when it changes, so ``deepdockd token revoke`` takes effect at once.
A file that cannot be read or parsed while the daemon runs (a hand edit gone wrong) does not
lock everyone out: the daemon keeps the last token set it could read and logs an error until
the file is mended.
At first start an admin token is made and written, once, to ``STATE_DIR/admin.token``
(mode 0600) for the operator to pick up.

Two kinds of token share the file: one per user, made by an admin (``deepdockd token add``,
under ``users``), and any number a host user makes for themself over the local socket
(``POST /tokens``, under ``tokens``: each with an id and a name, such as "laptop"). A token of
the second kind is good only while its user's host account exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import pwd
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepdockd.private_files import write_private

log = logging.getLogger(__name__)

ROLES = ("admin", "user")
ADMIN_USER = "admin"
TOKEN_PREFIX = "ddk_"
# The user names tokens may carry (they become container owner labels and log fields),
# matched whole (fullmatch).
USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")
# A self-made token's name ("laptop", "ci-runner"), matched whole.
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TOKEN_ID_PREFIX = "tok_"


class TokenError(Exception):
    """A token file that cannot be used, or a bad request to the token store."""


@dataclass(frozen=True)
class Caller:
    user: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class TokenEntry:
    user: str
    role: str
    created: str
    token_hash: str


@dataclass(frozen=True)
class HostToken:
    """A token a host user made for themself over the local socket."""

    id: str
    name: str
    user: str
    role: str
    created: str
    token_hash: str


def check_user_name(user: str) -> None:
    if not USER_NAME.fullmatch(user):
        raise TokenError(
            f"{user!r} is not a valid user name (lower-case letters, digits, '_', '.', '-')"
        )


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "tokens.json"
        self.admin_token_path = state_dir / "admin.token"
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) last read
        self._by_hash: dict[str, TokenEntry | HostToken] = {}

    # --- the daemon ---

    def authenticate(self, token: str) -> Caller | None:
        """The caller a token belongs to, or None. Re-reads the file if it changed. It asks
        the host's accounts about a self-made token: on the event loop, use :meth:`find`."""
        found = self.find(token)
        if isinstance(found, HostToken) and not host_account_exists(found.user):
            return None  # its user's host account is gone, and the token with it
        return Caller(found.user, found.role) if found else None

    def find(self, token: str) -> TokenEntry | HostToken | None:
        """The entry a token belongs to, or None, without asking the host's accounts
        (whether a self-made token's account still exists is the caller's question)."""
        self.refresh()
        presented = hash_token(token)
        found: TokenEntry | HostToken | None = None
        for token_hash, entry in self._by_hash.items():
            # Compare with every entry, in constant time each: no early exit to time.
            if hmac.compare_digest(token_hash, presented):
                found = entry
        return found

    def role_of(self, user: str) -> str | None:
        """The role of ``user``'s token; None for a name with no token (revoked, or never
        given one). Re-reads the file if it changed."""
        self.refresh()
        roles = {entry.role for entry in self._by_hash.values() if entry.user == user}
        return "admin" if "admin" in roles else roles.pop() if roles else None

    def refresh(self) -> None:
        """Read the file again if it changed since the last read."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._by_hash = None, {}
            return
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen == self._seen:
            return
        self._seen = seen  # a broken version is reported once, not re-read on every request
        try:
            entries: list[TokenEntry | HostToken] = [*self.entries(), *self.host_tokens()]
        except TokenError as exc:
            log.error(
                "%s; still accepting the %d token(s) read before: mend the file, or remove it "
                "and add the tokens again with `deepdockd token add`",
                exc, len(self._by_hash),
            )  # fmt: skip
            return
        self._by_hash = {e.token_hash: e for e in entries}

    def ensure_admin(self) -> Path | None:
        """At first start: make the admin token and write it to admin.token. The path when
        one was made, else None. Refuses token files others could read."""
        self.check_modes()
        if any(e.role == "admin" for e in self.entries()):
            return None
        token = self.add(ADMIN_USER, "admin")
        write_private(self.admin_token_path, token + "\n")
        return self.admin_token_path

    def check_modes(self) -> None:
        for path in (self.path, self.admin_token_path):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                if mode & 0o044:
                    why = "others could read a token from it"
                elif mode & 0o022:
                    why = "others could change it"
                else:
                    why = "others have access to it"
                raise TokenError(f"{path} has mode {mode:04o}: {why}; run chmod 600 {path}")
            if info.st_uid != os.geteuid():
                raise TokenError(
                    f"{path} belongs to uid {info.st_uid}, not to the daemon's user "
                    f"(uid {os.geteuid()}); run chown {os.geteuid()} {path}"
                )

    # --- the `deepdockd token` command ---

    def _document(self) -> dict[str, Any]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TokenError(f"cannot read {self.path}: {exc}") from None
        if not isinstance(document, dict):
            raise TokenError(f"cannot read {self.path}: not a token file (not an object)")
        return document

    def entries(self) -> list[TokenEntry]:
        """The tokens admins made, one per user."""
        document = self._document()
        try:
            return [
                TokenEntry(user, e["role"], e["created"], e["hash"])
                for user, e in document.get("users", {}).items()
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise TokenError(
                f"cannot read {self.path}: not a token file (expected "
                f'{{"users": {{USER: {{"role", "created", "hash"}}}}}}; missing or wrong: {exc})'
            ) from None

    def host_tokens(self, user: str | None = None) -> list[HostToken]:
        """The tokens host users made for themselves (``user``'s only, where given)."""
        document = self._document()
        try:
            tokens = [
                HostToken(t["id"], t["name"], t["user"], t["role"], t["created"], t["hash"])
                for t in document.get("tokens", [])
            ]
        except (KeyError, TypeError) as exc:
            raise TokenError(
                f"cannot read {self.path}: not a token file (each of tokens needs id, name, "
                f"user, role, created and hash; missing or wrong: {exc})"
            ) from None
        return [t for t in tokens if user is None or t.user == user]

    def mint(self, user: str, role: str, name: str) -> tuple[HostToken, str]:
        """A new token for host user ``user``, named ``name`` (unique among theirs): its
        entry and the token itself, which is never stored."""
        check_user_name(user)
        if not TOKEN_NAME.fullmatch(name):
            raise TokenError(
                f"{name!r} is not a valid token name (letters, digits, '_', '.', '-'; at "
                "most 64, the first a letter or digit)"
            )
        tokens = self.host_tokens()
        if any(t.user == user and t.name == name for t in tokens):
            raise TokenError(f"you have a token named {name!r} already; revoke it first")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        entry = HostToken(
            TOKEN_ID_PREFIX + secrets.token_hex(6), name, user, role, created, hash_token(token)
        )
        self._save(self.entries(), [*tokens, entry])
        return entry, token

    def revoke_host_token(self, token_id: str) -> HostToken | None:
        """Revoke the self-made token with this id; the entry revoked, or None."""
        tokens = self.host_tokens()
        gone = next((t for t in tokens if t.id == token_id), None)
        if gone is not None:
            self._save(self.entries(), [t for t in tokens if t.id != token_id])
        return gone

    def has(self, user: str) -> bool:
        """Whether ``user`` has a token of either kind."""
        return any(e.user == user for e in self.entries()) or bool(self.host_tokens(user))

    def check_new(self, user: str, role: str) -> None:
        """Refuse, as :meth:`add` would, a name or role that is not valid, or a name that has
        a token already (before anything else is asked about the name)."""
        check_user_name(user)
        if role not in ROLES:
            raise TokenError(f"role must be one of {', '.join(ROLES)}")
        if any(e.user == user for e in self.entries()):
            raise TokenError(f"{user!r} has a token already; revoke it first")

    def add(self, user: str, role: str) -> str:
        """Make a token for a new user; the token itself is returned, never stored. Whether
        the name still owns what an earlier holder left is the caller's question (a name is
        given out again only knowingly: ``deepdockd token add --inherit``)."""
        self.check_new(user, role)
        entries = {e.user: e for e in self.entries()}
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        entries[user] = TokenEntry(user, role, created, hash_token(token))
        self._save(entries.values(), self.host_tokens())
        return token

    def revoke(self, user: str) -> None:
        """Revoke every token of ``user``'s: the one an admin made and those they made."""
        entries = {e.user: e for e in self.entries()}
        tokens = self.host_tokens()
        if user not in entries and not any(t.user == user for t in tokens):
            raise TokenError(f"{user!r} has no token")
        entries.pop(user, None)
        self._save(entries.values(), [t for t in tokens if t.user != user])
        if user == ADMIN_USER:
            with contextlib.suppress(FileNotFoundError):
                self.admin_token_path.unlink()

    def _save(self, entries: Iterable[TokenEntry], tokens: Iterable[HostToken]) -> None:
        users = {
            e.user: {"role": e.role, "created": e.created, "hash": e.token_hash} for e in entries
        }
        document: dict[str, Any] = {"users": users}
        host_tokens = [
            {"id": t.id, "name": t.name, "user": t.user, "role": t.role,
             "created": t.created, "hash": t.token_hash}
            for t in tokens
        ]  # fmt: skip
        if host_tokens:
            document["tokens"] = host_tokens
        write_private(self.path, json.dumps(document, indent=2) + "\n")


def host_account_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True

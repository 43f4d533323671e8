"""Bearer tokens: who may call the API, as which user and role.

Only SHA-256 hashes of the tokens are kept (``STATE_DIR/tokens.json``, mode 0600); a token is
32 random bytes, so a fast hash is enough, and hashes are compared in constant time. The
daemon re-reads the file when it changes, so ``deepdockd token revoke`` takes effect at once.
A file that cannot be read or parsed while the daemon runs (a hand edit gone wrong) does not
lock everyone out: the daemon keeps the last token set it could read and logs an error until
the file is mended.
At first start an admin token is made and written, once, to ``STATE_DIR/admin.token``
(mode 0600) for the operator to pick up.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from deepdockd.private_files import write_private

log = logging.getLogger(__name__)

ROLES = ("admin", "user")
ADMIN_USER = "admin"
TOKEN_PREFIX = "ddk_"
# The user names tokens may carry (they become container owner labels and log fields),
# matched whole (fullmatch).
USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")


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
        self._by_hash: dict[str, TokenEntry] = {}

    # --- the daemon ---

    def authenticate(self, token: str) -> Caller | None:
        """The caller a token belongs to, or None. Re-reads the file if it changed."""
        self.refresh()
        presented = hash_token(token)
        found = None
        for token_hash, entry in self._by_hash.items():
            # Compare with every entry, in constant time each: no early exit to time.
            if hmac.compare_digest(token_hash, presented):
                found = entry
        return Caller(found.user, found.role) if found else None

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
            entries = self.entries()
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

    def entries(self) -> list[TokenEntry]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise TokenError(f"cannot read {self.path}: {exc}") from None
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

    def has(self, user: str) -> bool:
        return any(e.user == user for e in self.entries())

    def check_new(self, user: str, role: str) -> None:
        """Refuse, as :meth:`add` would, a name or role that is not valid, or a name that has
        a token already (before anything else is asked about the name)."""
        check_user_name(user)
        if role not in ROLES:
            raise TokenError(f"role must be one of {', '.join(ROLES)}")
        if self.has(user):
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
        self._save(entries.values())
        return token

    def revoke(self, user: str) -> None:
        entries = {e.user: e for e in self.entries()}
        if user not in entries:
            raise TokenError(f"{user!r} has no token")
        del entries[user]
        self._save(entries.values())
        if user == ADMIN_USER:
            with contextlib.suppress(FileNotFoundError):
                self.admin_token_path.unlink()

    def _save(self, entries: Iterable[TokenEntry]) -> None:
        users = {
            e.user: {"role": e.role, "created": e.created, "hash": e.token_hash} for e in entries
        }
        write_private(self.path, json.dumps({"users": users}, indent=2) + "\n")

"""The parts of the local socket that need no daemon: who a uid is, and the tokens host users
make for themselves in tokens.json (tests/test_host_users.py runs the whole with real
accounts)."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from deepdockd.config import ConfigError, load_config
from deepdockd.errors import Forbidden
from deepdockd.host_users import AdminAccounts, caller_of_uid
from deepdockd.tokens import Caller, TokenError, TokenStore

from tests.support.daemon import run_deepdockd
from tests.support.host_users import no_such_uid


def test_root_is_an_admin_and_a_uid_without_an_account_is_refused() -> None:
    assert caller_of_uid(0, "no-such-group") == Caller("root", "admin")
    nobody = pwd.getpwnam("nobody")
    assert caller_of_uid(nobody.pw_uid, "no-such-group") == Caller("nobody", "user")
    uid = no_such_uid()
    with pytest.raises(Forbidden, match=f"uid {uid} has no account on this host"):
        caller_of_uid(uid, "no-such-group")


def test_self_made_tokens_sit_beside_the_admins_and_go_with_their_user(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    admin_made = store.add("root", "user")
    entry, token = store.mint("root", "admin", "laptop")
    assert store.authenticate(token) == Caller("root", "admin")
    assert store.authenticate(admin_made) == Caller("root", "user")
    with pytest.raises(TokenError, match="you have a token named 'laptop' already"):
        store.mint("root", "admin", "laptop")
    with pytest.raises(TokenError, match="not a valid token name"):
        store.mint("root", "admin", "-x")

    document = json.loads(store.path.read_text())
    assert [t["id"] for t in document["tokens"]] == [entry.id]
    assert token not in store.path.read_text()  # only its hash
    assert oct(os.stat(store.path).st_mode & 0o777) == "0o600"

    # Revoking the user takes both kinds.
    store.revoke("root")
    assert (store.authenticate(token), store.authenticate(admin_made)) == (None, None)
    assert store.host_tokens() == []


def test_a_self_made_token_is_refused_once_its_host_account_is_gone(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    _, token = store.mint("no-such-account-here", "user", "ci")
    assert store.authenticate(token) is None


def test_one_revoked_by_id_leaves_the_others(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    first, first_token = store.mint("root", "admin", "one")
    _, second_token = store.mint("root", "admin", "two")
    assert store.revoke_host_token(first.id) == first
    assert store.revoke_host_token(first.id) is None
    assert store.authenticate(first_token) is None
    assert store.authenticate(second_token) == Caller("root", "admin")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("run/api.sock", "must be the absolute path of the socket file"),
        ("/run/" + "x" * 120, "longer than the 107 bytes"),
    ],
)
def test_a_socket_path_that_cannot_be_one_is_refused(raw: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_config({"socket": raw}, {}, default_file=Path("/nonexistent"))


def test_the_socket_settings_default() -> None:
    config = load_config({}, {}, default_file=Path("/nonexistent"))
    assert (config.socket, config.host_users, config.admin_group) == (
        Path("/run/deepdockd/api.sock"), True, "deepdock-admin",
    )  # fmt: skip


def test_deepdockd_token_list_shows_the_self_made_tokens_too(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "state")
    store.add("alice", "user")
    entry, _ = store.mint("root", "admin", "laptop")
    config = tmp_path / "empty.toml"
    config.write_text("")
    listed = run_deepdockd(
        "token", "--config", str(config), "--state-dir", str(tmp_path / "state"), "list"
    )
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [row[0:2] for row in rows] == [["alice", "user"], ["root", "admin"]]
    assert rows[1][3:] == [entry.id, "laptop"]


def test_an_owners_admin_answer_is_asked_once_a_while() -> None:
    accounts = AdminAccounts("no-such-group", ttl_s=3600)
    assert (accounts.is_admin("root"), accounts.is_admin("nobody")) == (True, False)
    assert accounts.is_admin("no-such-account-here") is False
    accounts.admin_group = "root"  # root's group: its members would now be admins
    assert accounts.is_admin("nobody") is False  # the kept answer, until ttl_s has passed
    assert AdminAccounts("root", ttl_s=0).is_admin("nobody") is False  # nobody is not in it

"""The containers' password hashes: the system's libcrypt and libpass make the same SHA-512
crypt hash, so that either may make it; and a hash is never the same twice (its salt)."""

from __future__ import annotations

import pytest
from passlib.hash import sha512_crypt  # type: ignore[import-untyped]

from deepdockd.containers.passwords import (
    SHA512_CRYPT_ROUNDS,
    libcrypt_hash,
    libpass_hash,
    password_hash,
    sha512_crypt_hash,
)

AWKWARD = ["pw1", "ünïcødé pässwörd", 'a"b\\c$d`e f', "x" * 511]


@pytest.mark.parametrize("password", AWKWARD)
def test_libcrypt_and_libpass_make_the_same_hash(password: str) -> None:
    salt = "saltsaltsaltsalt"
    by_libcrypt = libcrypt_hash(password, salt)
    assert by_libcrypt is not None, (
        "libcrypt refused it, or this machine has no libcrypt.so.1 with crypt_rn"
    )
    assert by_libcrypt == libpass_hash(password, salt)
    assert by_libcrypt.startswith(f"$6$rounds={SHA512_CRYPT_ROUNDS}${salt}$")


def test_a_hash_checks_its_password_only_and_is_never_the_same_twice() -> None:
    first, second = sha512_crypt_hash("secret"), sha512_crypt_hash("secret")
    assert first != second  # a salt of its own each
    assert sha512_crypt.verify("secret", first)
    assert sha512_crypt.verify("secret", second)
    assert not sha512_crypt.verify("Secret", first)


async def test_keys_only_is_a_hash_no_password_matches() -> None:
    assert await password_hash(None) == "*"
    assert sha512_crypt.verify("pw", await password_hash("pw"))


def test_a_password_longer_than_libcrypt_takes_is_hashed_by_libpass() -> None:
    """libxcrypt takes at most 511 bytes. The schema allows 100 (what the bundled Dropbear
    checks: tests/test_ssh_anywhere.py); should that ever rise, libpass hashes it."""
    password = "x" * 1024
    assert libcrypt_hash(password, "saltsaltsaltsalt") is None
    assert sha512_crypt.verify(password, sha512_crypt_hash(password))

"""Password hashes for the containers' accounts, made here so that the plain password never
reaches a binary of the image (a trojaned ``chpasswd`` in a shared tag sees only the hash).

SHA-512 crypt (``$6$``) is the one scheme that every SSH server in play checks: glibc's crypt
(Debian's libxcrypt) and musl's both do; musl does not check yescrypt (``$y$``).

The hash comes from the system's libcrypt (libxcrypt's ``crypt_rn``, reentrant) where it
has one: C, about 18 ms for 100,000 rounds, and called through ctypes, which lets go of
Python's lock while it runs, so that a create's other steps go on beside it. Python 3.13 has
no ``crypt`` module; where there is no libcrypt, libpass (the maintained fork of passlib)
makes the same hash in Python: about 36 ms, holding the lock.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import secrets
from typing import Any

from passlib.hash import sha512_crypt  # type: ignore[import-untyped]

# glibc's default is 5,000 rounds; 100,000 makes each guess 20 times dearer for whoever gets
# the hash (a trojaned chpasswd), and costs about 18 ms of one core here and about as much
# per password login.
SHA512_CRYPT_ROUNDS = 100_000
# crypt's salt alphabet, and the longest salt SHA-512 crypt takes.
_SALT_CHARACTERS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SALT_LENGTH = 16
# libxcrypt's struct crypt_data is 32,768 bytes; crypt_rn is told the size it is given.
_CRYPT_DATA_SIZE = 65536


def sha512_crypt_hash(password: str) -> str:
    """The password as a ``$6$rounds=…$salt$hash`` string, with a random salt. CPU-bound:
    call it from a worker thread (:func:`password_hash`)."""
    salt = "".join(secrets.choice(_SALT_CHARACTERS) for _ in range(_SALT_LENGTH))
    return libcrypt_hash(password, salt) or libpass_hash(password, salt)


def libcrypt_hash(password: str, salt: str) -> str | None:
    """The hash by the system's libcrypt; None where it has none (or it refuses)."""
    crypt_rn = _libcrypt_crypt_rn()
    if crypt_rn is None:
        return None
    setting = f"$6$rounds={SHA512_CRYPT_ROUNDS}${salt}".encode()
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    hashed = crypt_rn(password.encode(), setting, data, _CRYPT_DATA_SIZE)
    # On failure libxcrypt answers NULL or a string that starts with "*".
    if hashed is None or not hashed.startswith(setting + b"$"):
        return None
    return str(hashed.decode())


def libpass_hash(password: str, salt: str) -> str:
    """The same hash by libpass, in Python."""
    text: str = sha512_crypt.using(rounds=SHA512_CRYPT_ROUNDS, salt=salt).hash(password)
    return text


@functools.cache
def _libcrypt_crypt_rn() -> Any:
    """libxcrypt's ``crypt_rn``, or None where the system has no libcrypt.so.1 with it."""
    try:
        library = ctypes.CDLL("libcrypt.so.1")
        crypt_rn = library.crypt_rn
    except (OSError, AttributeError):
        return None
    crypt_rn.restype = ctypes.c_char_p
    crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    return crypt_rn


async def password_hash(password: str | None) -> str:
    """The hash for the container's account, made in a worker thread: ``*`` (which no
    password matches) for a create with keys only."""
    if password is None:
        return "*"
    return await asyncio.to_thread(sha512_crypt_hash, password)

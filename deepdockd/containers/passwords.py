"""Password hashes for the containers' accounts, made here so that the plain password never
reaches a binary of the image (a trojaned ``chpasswd`` in a shared tag sees only the hash).

SHA-512 crypt (``$6$``) is the one scheme that every SSH server in play checks: glibc's crypt
(Debian's libxcrypt) and musl's both do; musl does not check yescrypt (``$y$``). Python 3.13
has no ``crypt`` module, so the hash comes from libpass (the maintained fork of passlib),
whose SHA-512 crypt follows Drepper's specification and needs no system library.
"""

from __future__ import annotations

from passlib.hash import sha512_crypt  # type: ignore[import-untyped]

# glibc's default is 5,000 rounds; 100,000 makes each guess 20 times dearer for whoever gets
# the hash (a trojaned chpasswd), and costs about 0.1 s here and about 50 ms per login.
SHA512_CRYPT_ROUNDS = 100_000


def sha512_crypt_hash(password: str) -> str:
    """The password as a ``$6$rounds=…$salt$hash`` string, with a random salt. CPU-bound:
    call it from a worker thread."""
    hashed: str = sha512_crypt.using(rounds=SHA512_CRYPT_ROUNDS).hash(password)
    return hashed

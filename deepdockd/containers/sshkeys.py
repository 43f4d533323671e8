"""SSH host keys: every container gets a fresh Ed25519 key of its own, made here, never the
image's (which every container of that image would share, so that one user's container could
pass for another's). The private key goes into the container once, at create; the public key
is kept in a label and reported with its fingerprint, so that clients can pin it."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class PublicHostKey:
    type: str  # "ssh-ed25519"
    public_key: str  # "ssh-ed25519 AAAA…", as a known_hosts line has it after the host
    fingerprint: str  # "SHA256:…", as `ssh-keygen -lf` prints it

    @classmethod
    def parse(cls, line: str) -> PublicHostKey | None:
        """A public key line ("TYPE BASE64 [comment]"); None if it is not one."""
        parts = line.split()
        if len(parts) < 2:
            return None
        key_type, blob_text = parts[0], parts[1]
        try:
            blob = base64.b64decode(blob_text, validate=True)
        except binascii.Error:
            return None
        # OpenSSH's fingerprint: SHA-256 of the key blob, base64 without its padding.
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return cls(
            type=key_type, public_key=f"{key_type} {blob_text}", fingerprint=f"SHA256:{digest}"
        )


@dataclass(frozen=True)
class HostKey:
    """A new host key: its private half in OpenSSH's format (for sshd's ``-h``), and its
    public half."""

    private_openssh: bytes = field(repr=False)
    public: PublicHostKey

    @classmethod
    def generate(cls) -> HostKey:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        line = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public = PublicHostKey.parse(line.decode())
        assert public is not None  # cryptography writes "ssh-ed25519 BASE64"
        return cls(private_openssh=private, public=public)


# The users' own keys, for ~/.ssh/authorized_keys: the kinds OpenSSH and Dropbear both take.
USER_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048


def check_user_key(line: str) -> str:
    """A user's public key line, checked: "TYPE BASE64 [comment]" with one of USER_KEY_TYPES
    whose key parses (an RSA key of MIN_RSA_BITS or more); ValueError says why not."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError('is not an OpenSSH public key line ("ssh-ed25519 AAAA… comment")')
    key_type = parts[0]
    if key_type not in USER_KEY_TYPES:
        raise ValueError(
            f"has key type {key_type[:40]!r}; the types taken are {', '.join(USER_KEY_TYPES)}"
        )
    try:
        key = serialization.load_ssh_public_key(f"{key_type} {parts[1]}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"is not a valid {key_type} key: its base64 part does not parse") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        bits = key.key_size
        raise ValueError(f"is an RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed")
    return " ".join(parts)

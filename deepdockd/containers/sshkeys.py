"""SSH host keys: every container gets a fresh Ed25519 key of its own, made here, never the
image's (which every container of that image would share, so that one user's container could
pass for another's). The private key goes into the container once, at create; the public key
is kept in a label and reported with its fingerprint, so that clients can pin it."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
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

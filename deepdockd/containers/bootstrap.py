"""The bootstrap tar: what a new container needs for its SSH login, unpacked into it before
its first start. The entrypoint that reads it is ``bootstrap.sh``, beside this module."""

from __future__ import annotations

import asyncio
import functools
import io
import tarfile
from importlib import resources

from deepdockd.containers.homes import HomeVolume
from deepdockd.containers.model import CreateRequest
from deepdockd.containers.passwords import sha512_crypt_hash
from deepdockd.containers.ssh_server import BUNDLE_DIR, SshServerBundle, bundled_server
from deepdockd.errors import ServiceUnavailable

BOOTSTRAP_DIR = "/.deepdockd"


@functools.cache
def _bootstrap_script() -> bytes:
    return resources.files("deepdockd.containers").joinpath("bootstrap.sh").read_bytes()


async def bootstrap_tar(request: CreateRequest, home: HomeVolume | None, ssh_server: str) -> bytes:
    """What the bootstrap needs, to unpack at / before the container's first start, in a
    directory that only root may read:

    - ``bootstrap.sh``, the entrypoint;
    - ``settings``: shell assignments of checked values (the user name, the home volume's
      uid or "", whether password logins are allowed);
    - ``secret``: ``user:HASH``, the password's SHA-512 crypt hash (``*``, which no password
      matches, when the request gave keys only); the password itself never leaves this
      process, so no binary of the image ever sees it;
    - ``authorized_keys``: the request's public keys, added to ~/.ssh/authorized_keys at the
      first start (never in labels, env or a command line);
    - ``env``: the request's env as ``NAME=value`` lines (the schema refuses line breaks),
      for the user's sessions only;
    - ``ssh_host_ed25519_key``: the container's own host key, the only one its sshd presents.

    Unless ``ssh_server`` is "image", the bundled SSH server goes beside it, in BUNDLE_DIR.
    """
    if request.password is None:
        password_hash = "*"
    else:
        password_hash = await asyncio.to_thread(sha512_crypt_hash, request.password)
    settings = {
        "user_name": request.user_name,
        "home_uid": str(home.uid) if home else "",
        "password_login": "no" if request.password is None else "yes",
        "ssh_server": ssh_server,
    }
    bundle = bundled_server() if ssh_server != "image" else None
    if ssh_server == "bundled" and bundle is None:
        raise ServiceUnavailable(
            "ssh_server is bundled, but this deepdockd was installed without its SSH server;"
            " build it with `make ssh-server` (or install a package that carries it)",
            details={"setting": "ssh_server"},
        )
    files = (
        ("bootstrap.sh", _bootstrap_script(), 0o700),
        ("settings", "".join(f"{k}='{v}'\n" for k, v in settings.items()).encode(), 0o600),
        ("secret", f"{request.user_name}:{password_hash}\n".encode(), 0o600),
        ("authorized_keys", "".join(f"{key}\n" for key in request.ssh_keys).encode(), 0o600),
        ("env", "".join(f"{k}={v}\n" for k, v in request.env.items()).encode(), 0o600),
        ("ssh_host_ed25519_key", request.host_key.private_openssh, 0o600),
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo(BOOTSTRAP_DIR.lstrip("/"))
        directory.type, directory.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(directory)
        for name, data, mode in files:
            info = tarfile.TarInfo(f"{BOOTSTRAP_DIR.lstrip('/')}/{name}")
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        if bundle is not None:
            _add_bundle(tar, bundle)
    return buffer.getvalue()


def _add_bundle(tar: tarfile.TarFile, bundle: SshServerBundle) -> None:
    """The bundled server at BUNDLE_DIR: root's, readable and runnable by every user (their
    sessions run its scp and sftp-server), writable by none."""
    folder = BUNDLE_DIR.lstrip("/")
    directory = tarfile.TarInfo(folder)
    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(directory)
    for name, data in bundle.files:
        info = tarfile.TarInfo(f"{folder}/{name}")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    for name, target in bundle.links:
        link = tarfile.TarInfo(f"{folder}/{name}")
        link.type, link.linkname, link.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(link)

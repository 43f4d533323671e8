"""The bootstrap's files: what a new container needs for its SSH login, given to it before its
first start (a read-only mount of this host, or a tar copied in). The entrypoint that reads
them is ``bootstrap.sh``, beside this module."""

from __future__ import annotations

import functools
import io
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from deepdockd.containers.homes import HomeVolume
from deepdockd.containers.model import CreateRequest
from deepdockd.containers.ssh_server import BUNDLE_DIR, SshServerBundle, bundled_server
from deepdockd.errors import ServiceUnavailable

# The bootstrap's own directory in the container, root's alone: what it was given, copied at
# each start, and the files it writes.
BOOTSTRAP_DIR = "/.deepdockd"
# What deepdockd gives it: a read-only mount of a directory on this host
# (containers/bootstrap_inputs.py), or, where it cannot be mounted, the same files copied in.
INPUT_DIR = "/.deepdockd-in"
# Where root in the container finds programs: the system's own directories, never /usr/local
# (images often give it to their user) and never the image's PATH.
ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# What `docker run` gives a command when the image names no PATH (Docker's default).
DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# One NAME=value line: what the bootstrap's image-env may hold.
_ENV_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[^\n\0]*")


def root_environment(image_env: Sequence[str]) -> tuple[str, ...]:
    """The container's Env: what Docker gives the bootstrap's first process and every
    ``docker exec`` (an admin's shell, the reaper's warnings), all of them root. PATH is
    ROOT_PATH; every other variable the image's Env sets is set empty (Docker adds the
    image's value for any name the container's Env leaves out, and has no way to unset one),
    so that no LD_PRELOAD, LD_LIBRARY_PATH, PYTHONPATH, BASH_ENV ... of the image, which may
    point into a directory the user can write, reaches a root process. Only NVIDIA_* stay:
    the host's GPU hook reads them to choose the devices and driver libraries. The image's
    values reach the image's command and the user's sessions through the bootstrap tar's
    ``image-env`` (:func:`bootstrap_tar`)."""
    names = dict.fromkeys(entry.partition("=")[0] for entry in image_env)
    emptied = [f"{name}=" for name in names if name and name != "PATH"]
    return (f"PATH={ROOT_PATH}", *(e for e in emptied if not e.startswith("NVIDIA_")))


def _image_env_lines(image_env: Sequence[str]) -> bytes:
    """The image's Env as ``NAME=value`` lines, with Docker's default PATH when it names
    none; an entry that is not one line of a variable name and a value is left out."""
    entries = [e for e in image_env if _ENV_ENTRY.fullmatch(e)]
    if not any(e.startswith("PATH=") for e in entries):
        entries.insert(0, f"PATH={DOCKER_DEFAULT_PATH}")
    return "".join(f"{e}\n" for e in entries).encode()


@functools.cache
def _bootstrap_script() -> bytes:
    return resources.files("deepdockd.containers").joinpath("bootstrap.sh").read_bytes()


@dataclass(frozen=True)
class BootstrapFile:
    name: str  # in INPUT_DIR
    data: bytes
    mode: int


def bootstrap_files(
    request: CreateRequest,
    home: HomeVolume | None,
    ssh_server: str,
    *,
    password_hash: str,
    image_env: Sequence[str] = (),
) -> tuple[BootstrapFile, ...]:
    """What the bootstrap needs at INPUT_DIR before the container's first start, in a
    directory that only root may read (it copies them into BOOTSTRAP_DIR at each start):

    - ``bootstrap.sh``, the entrypoint;
    - ``settings``: shell assignments of checked values (the user name, the home volume's
      uid or "", whether password logins are allowed);
    - ``secret``: ``user:HASH``, ``password_hash`` (containers/passwords.py: the password's
      SHA-512 crypt hash, or ``*`` when the request gave keys only); the password itself
      never leaves this process, so no binary of the image ever sees it;
    - ``authorized_keys``: the request's public keys, added to ~/.ssh/authorized_keys at the
      first start (never in labels, env or a command line);
    - ``env``: the request's env as ``NAME=value`` lines (the schema refuses line breaks),
      for the user's sessions only;
    - ``image-env``: the image's Env (``image_env``), for the image's command (run as the
      image's user) and the user's sessions, never for root (see :func:`root_environment`);
    - ``ssh_host_ed25519_key``: the container's own host key, the only one its sshd presents.

    The secret and the keys are used once: deepdockd deletes them from INPUT_DIR once the
    container's SSH server answers (or the bootstrap does, where they were copied in)."""
    settings = {
        "user_name": request.user_name,
        "home_uid": str(home.uid) if home else "",
        "password_login": "no" if request.password is None else "yes",
        "ssh_server": ssh_server,
    }
    return (
        BootstrapFile("bootstrap.sh", _bootstrap_script(), 0o700),
        BootstrapFile(
            "settings", "".join(f"{k}='{v}'\n" for k, v in settings.items()).encode(), 0o600
        ),
        BootstrapFile("secret", f"{request.user_name}:{password_hash}\n".encode(), 0o600),
        BootstrapFile(
            "authorized_keys", "".join(f"{key}\n" for key in request.ssh_keys).encode(), 0o600
        ),
        BootstrapFile("env", "".join(f"{k}={v}\n" for k, v in request.env.items()).encode(), 0o600),
        BootstrapFile("image-env", _image_env_lines(image_env), 0o600),
        BootstrapFile("ssh_host_ed25519_key", request.host_key.private_openssh, 0o600),
    )


def bundle_for(ssh_server: str) -> SshServerBundle | None:
    """The bundled SSH server the containers get by ``ssh_server`` (none for "image"); a
    503 for "bundled" where this deepdockd was installed without it."""
    bundle = bundled_server() if ssh_server != "image" else None
    if ssh_server == "bundled" and bundle is None:
        raise ServiceUnavailable(
            "ssh_server is bundled, but this deepdockd was installed without its SSH server;"
            " build it with `make ssh-server` (or install a package that carries it)",
            details={"setting": "ssh_server"},
        )
    return bundle


def bootstrap_tar(files: Sequence[BootstrapFile], bundle: SshServerBundle | None) -> bytes:
    """``files`` at INPUT_DIR, and ``bundle`` (when given) at BUNDLE_DIR, as a tar to unpack
    at / before the first start: for a container that cannot mount them from this host."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo(INPUT_DIR.lstrip("/"))
        directory.type, directory.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(directory)
        for file in files:
            info = tarfile.TarInfo(f"{INPUT_DIR.lstrip('/')}/{file.name}")
            info.size, info.mode = len(file.data), file.mode
            tar.addfile(info, io.BytesIO(file.data))
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

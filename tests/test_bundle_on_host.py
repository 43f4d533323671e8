"""The bundled SSH server's directory on the host (containers/ssh_server.py): written once per
bundle, named by its digest, whole or not at all, root's and writable by none; an older
bundle's directory stays for the containers that mount it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from deepdockd.containers.ssh_server import SESSION_ENV, SshServerBundle, install_on_host


def bundle(contents: bytes = b"\x7fELF dropbear") -> SshServerBundle:
    return SshServerBundle(
        version="Dropbear test",
        files=(("dropbearmulti", contents), ("sftp-server", b"\x7fELF sftp")),
        links=(("dropbear", "dropbearmulti"), ("session-env", SESSION_ENV)),
    )


def test_the_bundle_is_written_once_whole_and_read_only(tmp_path: Path) -> None:
    made = install_on_host(bundle(), tmp_path)
    assert made == tmp_path / "ssh-server" / bundle().digest[:32]
    assert sorted(p.name for p in made.iterdir()) == [
        "dropbear", "dropbearmulti", "session-env", "sftp-server",
    ]  # fmt: skip
    assert (made / "dropbearmulti").read_bytes() == b"\x7fELF dropbear"
    for path in (made, made / "dropbearmulti", made / "sftp-server"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o555, path
    assert os.readlink(made / "dropbear") == "dropbearmulti"
    # The sessions' environment is each container's own file, outside the shared directory.
    assert os.readlink(made / "session-env") == SESSION_ENV == "/.deepdockd-session-env"
    # Nothing half-written is left beside it.
    assert [p.name for p in made.parent.iterdir()] == [made.name]

    written = (made / "dropbearmulti").stat().st_mtime_ns
    assert install_on_host(bundle(), tmp_path) == made
    assert (made / "dropbearmulti").stat().st_mtime_ns == written


def test_a_new_bundle_gets_a_directory_of_its_own_and_the_old_one_stays(tmp_path: Path) -> None:
    old = install_on_host(bundle(b"old"), tmp_path)
    new = install_on_host(bundle(b"new"), tmp_path)
    assert old != new
    assert (old / "dropbearmulti").read_bytes() == b"old"
    assert (new / "dropbearmulti").read_bytes() == b"new"

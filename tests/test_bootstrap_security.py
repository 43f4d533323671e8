"""Issue 19, the bootstrap's part: a container's user cannot become root through deepdockd's
bootstrap, a shared image never sees a user's password, and no container can pass for another
with the image's host keys. Written as the attacker acts (over SSH as the container's user,
with a crafted image), asserting what the victim would see; real containers on the rig, real
OpenSSH logins."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.containers.bootstrap import root_environment

from tests.support.api import Client, ClientFactory, body, created
from tests.support.images import derived_image
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig
from tests.support.ssh import ssh

IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the bootstrap runs (or ran) as root, by name: each one a user may shadow in ~/bin.
SHADOWED = (
    "id", "chpasswd", "useradd", "adduser", "getent", "cut", "grep", "sed", "cat", "mkdir",
    "chown", "chmod", "rm", "env", "ssh-keygen", "sshd", "apt-get",
)  # fmt: skip
# Run as root, a shadow leaves a setuid root shell and a mark where only root may write;
# either way it then runs the real tool, so that nothing looks amiss.
SHADOW = """#!/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$(id -u)" = 0 ]; then
    cp /bin/sh /rootshell && chmod 4755 /rootshell
    : > "/pwned-by-${0##*/}"
fi
exec "$(command -v "${0##*/}")" "$@"
"""
# A trojaned tool, as a shared tag could carry: it copies its arguments, its input and the
# bootstrap's files to where its author can fetch them, then does its job.
TROJAN = """#!/bin/sh
echo "$0 $*" >> /var/tmp/loot
cat /.deepdockd/secret /.deepdockd/env >> /var/tmp/loot 2>/dev/null
tee -a /var/tmp/loot | "$0.real" "$@"
"""
TROJANED = ("/usr/sbin/chpasswd", "/usr/sbin/usermod", "/usr/bin/passwd")

# An image laid out as docker-stacks' are (issue 29, item 5): its PATH leads first to
# directories its user can write (/opt/conda/bin belongs to the image's user there; here
# /usr/local too), its LD_PRELOAD names a library in one of them, and its command runs as the
# image's USER. The container's user plants programs and a library there; whatever runs them
# writes its uid to MARKS.
WRITABLE = ("/opt/conda/bin", "/opt/conda/lib", "/usr/local/sbin", "/usr/local/bin")
CONDA_PATH = "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PRELOAD = "/opt/conda/lib/libjemalloc.so"
MARKS = "/opt/marks/log"
# Everything a bootstrap might run as root by name, planted in each writable directory.
PLANTED = (
    "id", "awk", "grep", "sed", "cat", "cut", "env", "setpriv", "chroot", "mkdir", "chmod",
    "chown", "rm", "mv", "tail", "tr", "wc", "install", "getent", "useradd", "adduser",
    "chpasswd", "sshd", "ls", "cp", "head", "sleep", "kill", "tee", "sort", "dropbear",
)  # fmt: skip
PLANT = f"""#!/bin/sh
echo "$(/usr/bin/id -u) ${{0##*/}}" >> {MARKS}
for dir in /usr/sbin /usr/bin /sbin /bin; do
    [ -x "$dir/${{0##*/}}" ] && exec "$dir/${{0##*/}}" "$@"
done
exit 127
"""
PLANTED_LIBRARY = f"""#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {{
    char line[64];
    int size = snprintf(line, sizeof line, "%d preload\\n", (int)geteuid());
    int fd = open("{MARKS}", O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (fd >= 0) {{ write(fd, line, size); close(fd); }}
}}
"""


@pytest.fixture
def test_config(config: Config, ssh_ports: tuple[int, int]) -> Config:
    """The test's namespace and a block of SSH ports of its own."""
    return Config(**{**config.__dict__, "ssh_port_range": ssh_ports, "ssh_ready_timeout": 180.0})


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory, test_config: Config, rig: Rig
) -> AsyncIterator[Client]:
    """The API (auth off, this test's namespace and ports); the test's containers are removed
    when it ends."""
    yield await aiohttp_client(create_app(test_config))
    names = rig.docker(
        "ps", "--all", "--filter", f"label=deepdockd.namespace={test_config.namespace}",
        "--format", "{{.Names}}",
    ).split()  # fmt: skip
    if names:
        rig.docker("rm", "--force", *names)


@pytest.fixture(scope="module")
def trojan_image(rig: Rig) -> Iterator[str]:
    """The Debian image with sshd, whose chpasswd, usermod and passwd are trojaned (TROJAN)."""
    tag = f"deepdockd-test/trojaned-{uuid.uuid4().hex[:8]}:latest"
    builder = f"trojan-builder-{uuid.uuid4().hex[:8]}"
    install = (
        "cat > /usr/local/lib/trojan && chmod 755 /usr/local/lib/trojan && "
        f"for tool in {' '.join(TROJANED)}; do "
        'mv "$tool" "$tool.real" && ln -s /usr/local/lib/trojan "$tool" || exit 1; done'
    )
    rig.docker("run", "-i", "--name", builder, DEBIAN_SSH_IMAGE, "sh", "-c", install,
               input=TROJAN.encode())  # fmt: skip
    try:
        # The image's command stays the Debian image's (not the install, which the
        # container would otherwise run again at each start).
        rig.docker("commit", "--change", 'CMD ["/bin/bash"]', builder, tag)
    finally:
        rig.docker("rm", "--force", builder)
    yield tag
    rig.docker("rmi", "--force", tag)


@pytest.fixture(scope="module")
def conda_image(rig: Rig) -> Iterator[str]:
    """DEBIAN_SSH_IMAGE with CONDA_PATH, PRELOAD and a command run as nobody (uid 65534) that
    runs ``id`` by the image's PATH, as a notebook server's start script would."""
    tag = f"deepdockd-test/conda-{uuid.uuid4().hex[:8]}:latest"
    builder = f"conda-builder-{uuid.uuid4().hex[:8]}"
    script = (
        f"mkdir -p {' '.join(WRITABLE)} /opt/marks && touch {MARKS} && "
        f"chmod 0777 {' '.join(WRITABLE)} /opt/marks && chmod 0666 {MARKS}"
    )
    rig.docker("run", "--name", builder, DEBIAN_SSH_IMAGE, "sh", "-c", script)
    try:
        rig.docker(
            "commit", f"--change=ENV PATH={CONDA_PATH}", f"--change=ENV LD_PRELOAD={PRELOAD}",
            "--change=USER nobody",
            '--change=CMD ["sh", "-c", "id -u > /opt/marks/command; exec sleep infinity"]',
            builder, tag,
        )  # fmt: skip
    finally:
        rig.docker("rm", "--force", builder)
    yield tag
    rig.docker("rmi", "--force", tag)


@pytest.fixture(scope="module")
def planted_library(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """PLANTED_LIBRARY, built here (the rig's images are Debian 12, as this host)."""
    folder = tmp_path_factory.mktemp("plant")
    (folder / "plant.c").write_text(PLANTED_LIBRARY)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(folder / "libplant.so"), str(folder / "plant.c")],
        check=True,
    )  # fmt: skip
    return (folder / "libplant.so").read_bytes()


def as_root(rig: Rig, name: str, *command: str) -> str:
    """What a command run as root in the container prints (what an admin would see)."""
    return rig.docker("exec", name, *command)


def docker(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    """The docker client on the rig, with its stderr and whatever its exit status."""
    return subprocess.run(
        ["docker", "--host", rig.docker_host, *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def restart(api: Client, name: str) -> None:
    response = await api.post(f"/containers/{name}/restart")
    assert response.status == 200, await response.text()


async def host_keys(api: Client, name: str) -> list[dict[str, Any]]:
    response = await api.get(f"/containers/{name}")
    assert response.status == 200
    keys: list[dict[str, Any]] = (await response.json())["ssh_host_keys"]
    return keys


def presented_keys(port: int) -> set[str]:
    """Every host key the SSH server on the port presents, of any type, as "TYPE BASE64"."""
    scan = subprocess.run(
        ["ssh-keyscan", "-p", str(port), "-t", "rsa,ecdsa,ed25519", "127.0.0.1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return {" ".join(line.split()[1:3]) for line in scan.stdout.splitlines() if line.strip()}


def fingerprint_of(public_key: str) -> str:
    """The key's fingerprint as OpenSSH's ssh-keygen prints it."""
    printed = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=public_key, capture_output=True, text=True, check=True
    )
    return printed.stdout.split()[1]


def environ_of(host_pid: int) -> bytes:
    """A process's environment, read on the host (the rig's containers run here)."""
    return Path(f"/proc/{host_pid}/environ").read_bytes()


def banner_of(port: int, password: str) -> subprocess.CompletedProcess[str]:
    """A login that shows the server's banner (LogLevel INFO), on stderr."""
    return subprocess.run(
        [
            "sshpass", "-e", "ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=INFO",
            "-o", "PreferredAuthentications=password", "alice@127.0.0.1", "true",
        ],
        env={"SSHPASS": password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def pinned_ssh(
    port: int, password: str, public_key: str, known_hosts: Path
) -> subprocess.CompletedProcess[str]:
    """A login that trusts only ``public_key`` for the host (StrictHostKeyChecking=yes)."""
    known_hosts.write_text(f"[127.0.0.1]:{port} {public_key}\n")
    return subprocess.run(
        [
            "sshpass", "-e", "ssh", "-p", str(port),
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
            "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
            "-o", "ConnectTimeout=10", "alice@127.0.0.1", "id -un",
        ],
        env={"SSHPASS": password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# --- root through the bootstrap ---


async def test_a_path_in_env_runs_nothing_of_the_users_as_root_on_restart(
    api: Client, rig: Rig
) -> None:
    path = f"/home/alice/bin:{IMAGE_PATH}"
    port = (await created(api, **body("pathenv", env={"PATH": path})))["ssh-port"]
    plant = (
        f"mkdir -p ~/bin && cat > ~/bin/shadow <<'EOF'\n{SHADOW}EOF\n"
        f"for tool in {' '.join(SHADOWED)}; do "
        'install -m 755 ~/bin/shadow ~/bin/"$tool" || exit 1; done'
    )
    planted = ssh(port, "alice", "pw-pathenv", plant)
    assert planted.returncode == 0, planted.stderr
    # The trap is live: the user's own sessions run the shadows.
    assert ssh(port, "alice", "pw-pathenv", "command -v id; id -un").stdout.split() == [
        "/home/alice/bin/id", "alice",
    ]  # fmt: skip

    await restart(api, "pathenv")

    marks = [
        entry
        for entry in as_root(rig, "pathenv", "ls", "-A", "/").split()
        if entry.startswith("pwned-by-") or entry == "rootshell"
    ]
    assert marks == []
    after = ssh(port, "alice", "pw-pathenv", 'echo "$PATH"; command -v id')
    assert after.stdout.splitlines() == [path, "/home/alice/bin/id"], after.stderr


async def test_an_image_path_the_user_can_write_runs_nothing_as_root_on_restart(
    api: Client, rig: Rig, conda_image: str, planted_library: bytes
) -> None:
    port = (await created(api, **body("conda", image=conda_image)))["ssh-port"]
    plant = (
        f"cat > /tmp/plant <<'EOF'\n{PLANT}EOF\n"
        f"for dir in {' '.join(WRITABLE[:1] + WRITABLE[2:])}; do "
        f"for tool in {' '.join(PLANTED)}; do "
        'install -m 755 /tmp/plant "$dir/$tool" || exit 1; done; done; '
        f"echo {base64.b64encode(planted_library).decode()} | /usr/bin/base64 -d > {PRELOAD}"
    )
    planted = ssh(port, "alice", "pw-conda", plant)
    assert planted.returncode == 0, planted.stderr
    # The trap is live: the user's own sessions run the plants and load the library.
    live = ssh(port, "alice", "pw-conda", f"command -v id; id -un; echo $LD_PRELOAD; cat {MARKS}")
    alice = as_root(rig, "conda", "/usr/bin/id", "-u", "alice").strip()
    assert live.stdout.splitlines()[:3] == ["/opt/conda/bin/id", "alice", PRELOAD], live
    assert {f"{alice} id", f"{alice} preload"} <= set(live.stdout.splitlines()[3:]), live
    assert ssh(port, "alice", "pw-conda", f": > {MARKS}; rm /opt/marks/command").returncode == 0

    await restart(api, "conda")

    # The image's command ran again, as the image's user, by the image's PATH and preload.
    deadline = time.monotonic() + 30
    while ssh(port, "alice", "pw-conda", "cat /opt/marks/command").stdout != "65534\n":
        assert time.monotonic() < deadline, "the image's command did not run again"
        await asyncio.sleep(0.2)
    marks = ssh(port, "alice", "pw-conda", f"cat {MARKS}").stdout.splitlines()
    assert {"65534 id", "65534 preload", f"{alice} preload"} <= set(marks), marks
    assert [mark for mark in marks if mark.split()[0] == "0"] == []
    after = ssh(port, "alice", "pw-conda", 'id -un; echo "$PATH|$LD_PRELOAD"')
    assert after.stdout.splitlines() == ["alice", f"{CONDA_PATH}|{PRELOAD}"], after
    # An admin's docker exec as root (and the reaper's warnings) runs clean too.
    exec_env = as_root(rig, "conda", "sh", "-c", 'id -u; echo "$PATH|$LD_PRELOAD"')
    assert exec_env.splitlines() == ["0", "/usr/sbin:/usr/bin:/sbin:/bin|"]
    marks = ssh(port, "alice", "pw-conda", f"cat {MARKS}").stdout.splitlines()
    assert [mark for mark in marks if mark.split()[0] == "0"] == []


async def test_ld_preload_in_env_reaches_the_users_sessions_and_no_root_process(
    api: Client, rig: Rig
) -> None:
    preload = "/home/alice/evil.so"
    port = (await created(api, **body("preload", env={"LD_PRELOAD": preload})))["ssh-port"]
    # Not a library: the loader complains in every process that would load it.
    assert ssh(port, "alice", "pw-preload", f"echo not-a-library > {preload}").returncode == 0

    await restart(api, "preload")

    session = ssh(port, "alice", "pw-preload", 'echo "$LD_PRELOAD"')
    assert session.stdout == f"{preload}\n"
    assert "LD_PRELOAD" in session.stderr  # the user's own processes do load it
    logs = docker(rig, "logs", "preload")
    assert "LD_PRELOAD" not in logs.stdout + logs.stderr
    assert "evil.so" not in logs.stdout + logs.stderr
    # Every process of the container now (init, sshd): none has it in its environment.
    pids = rig.docker("top", "preload", "-eo", "pid").split()[1:]
    assert pids
    for pid in pids:
        assert b"LD_PRELOAD" not in environ_of(int(pid)), pid
    assert "LD_PRELOAD" not in as_root(rig, "preload", "cat", "/proc/1/environ")


async def test_links_in_the_users_home_make_root_write_nowhere_else(api: Client, rig: Rig) -> None:
    env = {"FOO": "bar baz"}
    port = (await created(api, **body("links", env=env)))["ssh-port"]

    def etc() -> tuple[str, str, str]:
        return (
            as_root(rig, "links", "cat", "/etc/shadow"),
            as_root(rig, "links", "stat", "-c", "%n %a %U:%G %s", "/etc", "/etc/shadow"),
            as_root(rig, "links", "ls", "-A", "/etc"),
        )

    before = etc()
    linked = ssh(
        port, "alice", "pw-links", "mkdir -p ~/.ssh && ln -sf /etc/shadow ~/.ssh/environment"
    )
    assert linked.returncode == 0, linked.stderr

    await restart(api, "links")

    assert etc() == before
    # The environment comes from sshd's own configuration: root left the link alone.
    after = ssh(port, "alice", "pw-links", 'echo "$FOO"; test -L ~/.ssh/environment && echo link')
    assert after.stdout.splitlines() == ["bar baz", "link"], after.stderr

    linked = ssh(port, "alice", "pw-links", "rm -rf ~/.ssh && ln -s /etc ~/.ssh")
    assert linked.returncode == 0, linked.stderr

    await restart(api, "links")

    assert etc() == before
    after = ssh(port, "alice", "pw-links", 'echo "$FOO"; test -L ~/.ssh && readlink ~/.ssh')
    assert after.stdout.splitlines() == ["bar baz", "/etc"], after.stderr


# --- the password ---


async def test_an_image_with_a_trojaned_chpasswd_never_sees_the_password(
    api: Client, rig: Rig, trojan_image: str
) -> None:
    password = f"secret-{uuid.uuid4().hex}"

    answer = await created(api, **body("trojaned", image=trojan_image, password=password))

    loot = as_root(rig, "trojaned", "cat", "/var/tmp/loot")
    assert "/usr/sbin/chpasswd -e" in loot  # the trojan ran, and saw a hash
    assert "alice:$6$rounds=" in loot
    assert password not in loot
    found = docker(
        rig, "exec", "trojaned", "grep", "-rlsF", "--exclude-dir=proc", "--exclude-dir=sys",
        "--exclude-dir=dev", "--", password, "/",
    )  # fmt: skip
    assert (found.returncode, found.stdout) == (1, "")  # nowhere in the container's files
    assert ssh(answer["ssh-port"], "alice", password, "id -un").stdout == "alice\n"
    assert ssh(answer["ssh-port"], "alice", "wrong", "id -un").returncode == 5


# --- host keys ---


async def test_each_container_presents_its_own_host_key_and_keeps_it(
    api: Client, rig: Rig, tmp_path: Path
) -> None:
    ports = {name: (await created(api, **body(name)))["ssh-port"] for name in ("keys1", "keys2")}
    reported = {name: await host_keys(api, name) for name in ports}
    listed = (await (await api.get("/containers")).json())["containers"]

    assert {c["name"]: c["ssh_host_keys"] for c in listed} == reported
    for name, keys in reported.items():
        [key] = keys
        assert key["type"] == "ssh-ed25519"
        assert key["public_key"].startswith("ssh-ed25519 AAAA")
        assert key["fingerprint"] == fingerprint_of(key["public_key"])
        # The server on its port presents that key and no other (none of the image's).
        assert presented_keys(ports[name]) == {key["public_key"]}
    one, two = (reported[name][0]["public_key"] for name in ("keys1", "keys2"))
    assert one != two
    image_keys = as_root(rig, "keys1", "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub; true")
    assert one.split()[1] not in image_keys

    # Pinned, the login works; the other container's key for this port is an impostor's.
    pinned = pinned_ssh(ports["keys1"], "pw-keys1", one, tmp_path / "known_hosts")
    assert (pinned.returncode, pinned.stdout) == (0, "alice\n"), pinned.stderr
    impostor = pinned_ssh(ports["keys1"], "pw-keys1", two, tmp_path / "known_hosts")
    assert impostor.returncode == 255
    assert "Host key verification failed" in impostor.stderr
    assert impostor.stdout == ""

    await restart(api, "keys1")

    assert await host_keys(api, "keys1") == reported["keys1"]
    assert presented_keys(ports["keys1"]) == {one}
    pinned = pinned_ssh(ports["keys1"], "pw-keys1", one, tmp_path / "known_hosts")
    assert (pinned.returncode, pinned.stdout) == (0, "alice\n"), pinned.stderr


async def test_host_keys_from_the_images_includes_are_never_presented(
    api: Client, rig: Rig, tmp_path: Path
) -> None:
    """Debian's sshd_config includes /etc/ssh/sshd_config.d/*.conf: an image that names host
    keys of its own there (baked into the image, so every container of it shares them) still
    presents only the container's key; what else the includes say still holds."""
    script = (
        "ssh-keygen -q -t rsa -b 2048 -N '' -f /etc/ssh/baked_rsa_key && "
        "mkdir -p /etc/ssh/sshd_config.d /etc/ssh/nested && "
        "printf 'HostKey /etc/ssh/baked_rsa_key\\nInclude nested/*.conf\\n"
        "Banner /etc/ssh/banner\\n' > /etc/ssh/sshd_config.d/10-baked.conf && "
        "printf '  hostkey=/etc/ssh/ssh_host_ecdsa_key\\nHostCertificate /nowhere\\n' "
        "> /etc/ssh/nested/keys.conf && "
        "echo 'the image says hello' > /etc/ssh/banner && "
        "grep -q '^Include /etc/ssh/sshd_config.d/\\*.conf' /etc/ssh/sshd_config"
    )
    image = derived_image(rig, DEBIAN_SSH_IMAGE, script, "/bin/bash")
    try:
        answer = await created(api, **body("baked", image=image))
        [key] = await host_keys(api, "baked")
        port = answer["ssh-port"]

        assert presented_keys(port) == {key["public_key"]}
        baked = as_root(rig, "baked", "cat", "/etc/ssh/baked_rsa_key.pub")
        pinned = pinned_ssh(port, "pw-baked", key["public_key"], tmp_path / "known_hosts")
        assert (pinned.returncode, pinned.stdout) == (0, "alice\n"), pinned.stderr
        # The includes' other settings still hold: their banner greets the login.
        greeted = banner_of(port, "pw-baked")
        assert "the image says hello" in greeted.stderr, greeted

        await restart(api, "baked")

        assert presented_keys(port) == {key["public_key"]}
        assert baked.split()[1] not in str(presented_keys(port))
    finally:
        docker(rig, "rm", "--force", "baked")
        rig.docker("rmi", "--force", image)


def test_the_containers_environment_is_roots_not_the_images() -> None:
    """What Docker gives the bootstrap and every docker exec: the system's PATH, each of the
    image's variables empty but NVIDIA_* (the host's GPU hook reads them); the image's values
    go to the bootstrap's image-env."""
    image_env = (
        f"PATH={CONDA_PATH}", f"LD_PRELOAD={PRELOAD}", "LD_LIBRARY_PATH=/opt/conda/lib",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility", "CUDA_HOME=/usr/local/cuda",
    )  # fmt: skip
    assert root_environment(image_env) == (
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LD_PRELOAD=", "LD_LIBRARY_PATH=", "CUDA_HOME=",
    )  # fmt: skip
    assert root_environment(()) == ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",)

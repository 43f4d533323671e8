"""The test rig: a private Docker engine, a registry and the test images.

Everything lives under one directory (``$DEEPDOCKD_TEST_RIG_DIR``, default
``/var/tmp/deepdockd-rig``) that is kept between runs as a cache: the test images stay in the
private engine's data root, and the root file systems they were made from stay as tarballs.
The engine has its own data root, exec root, socket, pidfile, containerd namespace and bridge,
and reads no ``/etc/docker/daemon.json``, so it never meets a Docker engine the machine already
runs. A stand-in ``nvidia-container-runtime-hook`` on its PATH (and only there) makes dockerd
register its ``nvidia`` device driver, so containers that ask for GPUs start.

``python -m tests.support.rig start|stop`` (``make rig-start``, ``make rig-stop``) runs the rig
by hand; the tests use :class:`Rig` through a session fixture that stops it when the run ends,
pass or fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.support import engine as engines
from tests.support import lanes, matrix_images
from tests.support.engine import Engine

DEFAULT_ROOT = Path("/var/tmp/deepdockd-rig")

BUSYBOX_IMAGE = "deepdockd-test/busybox:latest"
DEBIAN_SSH_IMAGE = "deepdockd-test/debian-ssh:bookworm"
DEBIAN_NOSSH_IMAGE = "deepdockd-test/debian-nossh:bookworm"
# The SSH image with a service of its own: busybox's httpd on port 8080, as the image's USER
# (nobody), serving /srv/www: index.html says "deepdockd service", /cgi-bin/id runs `id -un`.
DEBIAN_SERVICE_IMAGE = "deepdockd-test/debian-service:bookworm"
# The SSH image with a web service for the proxy's tests (tests/support/web_app.py: a page,
# a WebSocket echo, the request's headers, downloads) on port 8080, run by the host's own
# Python 3.11 copied in (the image is bookworm, as the host is): no package mirror needed.
# Tagged by the app's digest, so an edited app is built anew.
DEBIAN_WEBAPP_IMAGE = (
    "deepdockd-test/debian-webapp:"
    + hashlib.sha256((Path(__file__).with_name("web_app.py")).read_bytes()).hexdigest()[:12]
)
WEBAPP_PORT = 8080

TEST_IMAGES = (
    BUSYBOX_IMAGE,
    DEBIAN_SSH_IMAGE,
    DEBIAN_NOSSH_IMAGE,
    DEBIAN_SERVICE_IMAGE,
    DEBIAN_WEBAPP_IMAGE,
    *matrix_images.BUILT_IMAGES,
)

REGISTRY_ADDR = "127.0.0.1:5000"
# A second registry that wants a user name and password (htpasswd), for private pulls.
PRIVATE_REGISTRY_ADDR = "127.0.0.1:5001"
PRIVATE_REGISTRY_USER = "tester"
REGISTRIES = {"registry": REGISTRY_ADDR, "private-registry": PRIVATE_REGISTRY_ADDR}
# The rig's registries listen on loopback, where pulls go only to registries the admin listed:
# every daemon of the tests lists them, as an admin of a lab's own registry would.
RIG_REGISTRIES = tuple(REGISTRIES.values())

# A bridge of the rig's own, so the private engine never shares docker0 with another engine.
BRIDGE = "ddrig0"
BRIDGE_CIDR = "172.30.249.1/24"

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HOOK = """#!/bin/sh
# Stand-in for NVIDIA's OCI prestart hook: dockerd registers its "nvidia" device driver when
# an executable of this name is on its PATH. runc hands the hook the container state on stdin.
cat >/dev/null
exit 0
"""

_SERVICE_CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
id -un
"""
_SERVICE_DOCKERFILE = """FROM {base}
COPY busybox /usr/local/bin/busybox
COPY www /srv/www
ENV GREETING="hello from the image"
USER nobody
WORKDIR /srv/www
CMD ["/usr/local/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/srv/www"]
"""

_WEBAPP_DOCKERFILE = """FROM {base}
COPY python3.11 /usr/bin/python3.11
COPY libexpat.so.1 /usr/lib/x86_64-linux-gnu/libexpat.so.1
COPY lib /usr/lib/python3.11
COPY web_app.py /opt/web_app.py
USER nobody
CMD ["/usr/bin/python3.11", "/opt/web_app.py", "{port}"]
"""


class RigError(RuntimeError):
    """The rig could not be brought up; the message says which part and where its log is."""


def _docker_cli() -> str:
    # Debian's docker.io client matches the engine it ships with.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RigError("no docker client found; install Debian's docker.io package")


def _wait_for(condition: object, what: str, timeout_s: float, log: Path | None = None) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    hint = f"; see {log}" if log else ""
    raise RigError(f"{what} not ready after {timeout_s:g} s{hint}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM, wait, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _read_pid(pidfile: Path, must_mention: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is ours (its command line names
    ``must_mention``), so a recycled pid is never killed."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if must_mention in cmdline else None


def unix_http_get(socket_path: Path, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """A plain HTTP GET over a Unix socket, for readiness checks."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout_s)
            self.sock.connect(str(socket_path))

    conn = Connection("localhost", timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _port_open(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


@dataclass
class Rig:
    root: Path = DEFAULT_ROOT
    # Which Docker Engine runs the private dockerd ($DEEPDOCKD_TEST_ENGINE, engine.py).
    engine: Engine = field(default_factory=engines.from_env)
    # The processes this rig started, kept so that they are reaped when stopped.
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _lock_file: IO[str] | None = None
    _locked: bool = False

    @classmethod
    def from_env(cls) -> Rig:
        return cls(Path(os.environ.get("DEEPDOCKD_TEST_RIG_DIR", DEFAULT_ROOT)))

    # --- paths ---

    @property
    def docker_socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_socket}"

    @property
    def docker_log(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def data_root(self) -> Path:
        """The private dockerd's --data-root: one per Engine, so their images never meet."""
        return self.engine.data_root(self.root)

    @property
    def private_registry_password(self) -> str:
        """Made anew at each start, so that a test can look for it in logs."""
        return (self.root / "private-registry.password").read_text()

    # --- whole rig ---

    def start(self) -> None:
        lanes.require("rig", "starts the test rig (a private dockerd)")
        if os.geteuid() != 0:
            raise RigError("the test rig must run as root: it starts a private dockerd")
        for sub in ("bin", "cache", "client", *REGISTRIES):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for engine_root in (self.data_root, self.engine.exec_root(self.root)):
            engine_root.mkdir(parents=True, exist_ok=True)
        self._lock()
        self.stop()  # whatever a killed run left behind, whichever Engine it ran
        self.engine.prepare(self.root)
        self._write_files()
        self._setup_bridge()
        self.start_docker()
        self._remove_leftovers()
        self.start_registries()
        self.build_images()
        self.docker_login(PRIVATE_REGISTRY_ADDR)

    def stop(self) -> None:
        self.stop_registries()
        if self.docker_running():
            # Its owner networks' bridges would outlive dockerd, and the other Engine, which
            # knows nothing of them, would give the same /24 to a network of its own: two
            # bridges with one subnet, and the published ports lead nowhere.
            self._remove_leftovers()
        self.stop_docker()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)

    def _lock(self) -> None:
        """One test run at a time: the bridge and the registries' ports are the machine's.
        A second run waits for the first (the lock goes with the process that holds it)."""
        if self._lock_file is not None:
            return
        self._lock_file = (self.root / "rig.lock").open("w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another test run holds the rig at {self.root}; waiting for it", file=sys.stderr)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        self._locked = True

    @property
    def held(self) -> bool:
        """Whether this run holds the rig (a run still waiting for the lock does not)."""
        return self._locked

    def release(self) -> None:
        """Let the next test run have the rig."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
            self._locked = False

    # --- the private dockerd ---

    def start_docker(self) -> None:
        if self.docker_running():
            return
        self.docker_socket.unlink(missing_ok=True)
        dockerd_args = [
            f"--data-root={self.data_root}",
            f"--exec-root={self.engine.exec_root(self.root)}",
            f"--host={self.docker_host}",
            f"--pidfile={self.root / 'docker.pid'}",
            f"--config-file={self.root / 'daemon.json'}",
            f"--bridge={BRIDGE}",
            "--containerd-namespace=deepdockd-rig",
            "--containerd-plugins-namespace=deepdockd-rig-plugins",
        ]
        command = self.engine.command(self.root, dockerd_args)
        env = {**os.environ, "PATH": f"{self.root / 'bin'}:{_PATH}"}
        with self.docker_log.open("ab") as log:
            self._children["dockerd"] = subprocess.Popen(
                command, stdout=log, stderr=log, env=env, start_new_session=True, close_fds=True
            )
        _wait_for(self.docker_running, "private dockerd", 60, self.docker_log)

    def docker_running(self) -> bool:
        try:
            status, body = unix_http_get(self.docker_socket, "/_ping")
        except OSError:
            return False
        return status == 200 and body == b"OK"

    def stop_docker(self) -> None:
        pid = _read_pid(self.root / "docker.pid", str(self.root))
        if pid is not None:
            # dockerd stops its containers (10 s each, in parallel) before it exits.
            _stop_pid(pid, timeout_s=40)
        self._reap("dockerd")
        self.docker_socket.unlink(missing_ok=True)

    @contextlib.contextmanager
    def docker_stopped(self) -> Iterator[None]:
        """The private dockerd is down inside the block and up again after it, whatever
        happens inside."""
        self.stop_docker()
        try:
            yield
        finally:
            self.start_docker()

    def docker(self, *args: str, input: bytes | None = None) -> str:
        """Run the docker client against the private engine; its stdout, or RigError."""
        # A client config of the rig's own: logins never touch ~/.docker.
        client = [_docker_cli(), "--config", str(self.root / "client"), "--host", self.docker_host]
        result = subprocess.run(
            [*client, *args],
            input=input,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RigError(f"docker {' '.join(args)}: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    def docker_login(self, addr: str) -> None:
        password = self.private_registry_password.encode()
        self.docker(
            "login", "--username", PRIVATE_REGISTRY_USER, "--password-stdin", addr, input=password
        )

    def _remove_leftovers(self) -> None:
        """Containers, owner networks, home volumes and images that an earlier run left (the
        test images stay). Tests remove their containers with ``docker rm``, behind deepdockd's
        back, so the owner networks and home volumes deepdockd made for them are cleared
        here."""
        ids = self.docker("ps", "--all", "--quiet").split()
        if ids:
            self.docker("rm", "--force", "--volumes", *ids)
        networks = self.docker(
            "network", "ls", "--quiet", "--filter", "label=deepdockd.namespace"
        ).split()
        if networks:
            self.docker("network", "rm", *networks)
        volumes = self.docker(
            "volume", "ls", "--quiet", "--filter", "label=deepdockd.namespace"
        ).split()
        if volumes:
            self.docker("volume", "rm", "--force", *volumes)
        listing = self.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
        for line in listing.splitlines():
            reference, image_id = line.split()
            if reference not in TEST_IMAGES:
                self.docker("rmi", "--force", image_id if "<none>" in reference else reference)

    # --- the registries ---

    def start_registries(self) -> None:
        for name, addr in REGISTRIES.items():
            self._start_registry(name, addr)

    def stop_registries(self) -> None:
        for name in REGISTRIES:
            pid = _read_pid(self.root / f"{name}.pid", str(self.root))
            if pid is not None:
                _stop_pid(pid, timeout_s=10)
            self._reap(name)
            (self.root / f"{name}.pid").unlink(missing_ok=True)

    def _start_registry(self, name: str, addr: str) -> None:
        if _read_pid(self.root / f"{name}.pid", str(self.root)) is not None:
            return
        if _port_open(addr):
            raise RigError(f"{addr} is taken by another process; the rig's {name} needs it")
        log_path = self.root / f"{name}.log"
        with log_path.open("ab") as log:
            process = self._children[name] = subprocess.Popen(
                ["docker-registry", "serve", str(self.root / f"{name}.yml")],
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        (self.root / f"{name}.pid").write_text(str(process.pid))
        _wait_for(lambda: _port_open(addr), name, 30, log_path)

    def _reap(self, name: str) -> None:
        child = self._children.pop(name, None)
        if child is not None:
            child.wait(timeout=10)

    # --- files ---

    def _write_files(self) -> None:
        hook = self.root / "bin" / "nvidia-container-runtime-hook"
        hook.write_text(_HOOK)
        hook.chmod(0o755)
        # An empty config of our own, so the host's /etc/docker/daemon.json is never read.
        (self.root / "daemon.json").write_text("{}\n")
        password = secrets.token_urlsafe(16)
        (self.root / "private-registry.password").write_text(password)
        htpasswd = subprocess.run(
            ["htpasswd", "-Bbn", PRIVATE_REGISTRY_USER, password],
            capture_output=True,
            text=True,
            check=True,
        )
        (self.root / "htpasswd").write_text(htpasswd.stdout)
        for name, addr in REGISTRIES.items():
            config: dict[str, Any] = {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.root / name)},
                    "delete": {"enabled": True},
                },
                "http": {"addr": addr, "secret": secrets.token_hex(16)},
            }
            if addr == PRIVATE_REGISTRY_ADDR:
                config["auth"] = {
                    "htpasswd": {"realm": "deepdockd-test", "path": str(self.root / "htpasswd")}
                }
            # JSON is YAML, and the registry reads YAML.
            (self.root / f"{name}.yml").write_text(json.dumps(config, indent=2))

    def _setup_bridge(self) -> None:
        ip = ["ip", "link", "show", BRIDGE]
        if subprocess.run(ip, capture_output=True, check=False).returncode != 0:
            subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "replace", BRIDGE_CIDR, "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)

    # --- images ---

    def build_images(self) -> None:
        """Import the test images the engine lacks, from cached root file systems when there
        are some; the two Debian ones come from debootstrap (about 30 s each, run together).
        The service image is built on the Debian SSH one (a second)."""
        wanted = {
            BUSYBOX_IMAGE: self._busybox_rootfs,
            DEBIAN_SSH_IMAGE: lambda tar: self.debootstrap(tar, "openssh-server,passwd"),
            DEBIAN_NOSSH_IMAGE: lambda tar: self.debootstrap(tar, "passwd"),
            **matrix_images.root_file_systems(self),
        }
        missing = [name for name in wanted if not self.image_exists(name)]
        tarballs = {
            name: self.root / "cache" / (name.replace("/", "_") + ".tar") for name in missing
        }
        builds = [wanted[name](tarballs[name]) for name in missing if not tarballs[name].exists()]
        for build in builds:
            if build is not None:
                build.wait()
        for name in missing:
            self._import(name, tarballs[name])
        if not self.image_exists(DEBIAN_SERVICE_IMAGE):
            self._build_service_image()
        if not self.image_exists(DEBIAN_WEBAPP_IMAGE):
            self._build_webapp_image()
        matrix_images.build_derived(self)

    def image_exists(self, name: str) -> bool:
        try:
            self.docker("image", "inspect", name)
        except RigError:
            return False
        return True

    def _import(self, name: str, tarball: Path) -> None:
        if not tarball.exists():
            raise RigError(f"building {name} failed; see {tarball}.log")
        shell = "/bin/sh" if "busybox" in name else "/bin/bash"
        self.docker(
            "import",
            "--change",
            f"ENV PATH={_PATH}",
            "--change",
            f'CMD ["{shell}"]',
            str(tarball),
            name,
        )

    def _build_service_image(self) -> None:
        """``docker build`` of DEBIAN_SERVICE_IMAGE: files copied in, no RUN step (a build
        reaches no network)."""
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RigError("no busybox found; install Debian's busybox-static package")
        with tempfile.TemporaryDirectory(dir=self.root / "cache") as tmp:
            context = Path(tmp)
            shutil.copy(busybox, context / "busybox")
            (context / "busybox").chmod(0o755)
            www = context / "www"
            (www / "cgi-bin").mkdir(parents=True)
            (www / "index.html").write_text("deepdockd service\n")
            (www / "cgi-bin" / "id").write_text(_SERVICE_CGI)
            # Readable (and the script runnable) by nobody, whatever this process's umask.
            for path in (www, www / "cgi-bin", www / "cgi-bin" / "id"):
                path.chmod(0o755)
            (www / "index.html").chmod(0o644)
            (context / "Dockerfile").write_text(_SERVICE_DOCKERFILE.format(base=DEBIAN_SSH_IMAGE))
            self.docker("build", "--quiet", "--tag", DEBIAN_SERVICE_IMAGE, str(context))

    def _build_webapp_image(self) -> None:
        """``docker build`` of DEBIAN_WEBAPP_IMAGE from the host's Python (Debian 12's, as
        the image's libc is) and the test's web app: files copied in, no RUN step."""
        python = Path("/usr/bin/python3.11")
        expat = Path("/usr/lib/x86_64-linux-gnu/libexpat.so.1")
        if not python.exists() or not expat.exists():
            raise RigError("the web app's image needs the host's /usr/bin/python3.11 (Debian 12)")
        with tempfile.TemporaryDirectory(dir=self.root / "cache") as tmp:
            context = Path(tmp)
            shutil.copy(python, context / "python3.11")
            shutil.copy(expat.resolve(), context / "libexpat.so.1")
            shutil.copytree(
                "/usr/lib/python3.11",
                context / "lib",
                symlinks=True,
                ignore=shutil.ignore_patterns(
                    "test", "__pycache__", "idlelib", "tkinter", "turtledemo", "ensurepip"
                ),
            )
            shutil.copy(Path(__file__).with_name("web_app.py"), context / "web_app.py")
            dockerfile = _WEBAPP_DOCKERFILE.format(base=DEBIAN_SSH_IMAGE, port=WEBAPP_PORT)
            (context / "Dockerfile").write_text(dockerfile)
            self.docker("build", "--quiet", "--tag", DEBIAN_WEBAPP_IMAGE, str(context))

    def _busybox_rootfs(self, tarball: Path) -> None:
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RigError("no busybox found; install Debian's busybox-static package")
        with tempfile.TemporaryDirectory(dir=self.root / "cache") as tmp:
            rootfs = Path(tmp)
            for sub in ("bin", "tmp", "etc", "root"):
                (rootfs / sub).mkdir()
            shutil.copy(busybox, rootfs / "bin" / "busybox")
            applets = subprocess.run(
                [busybox, "--list"], capture_output=True, text=True, check=True
            )
            for applet in applets.stdout.split():
                if applet != "busybox":
                    (rootfs / "bin" / applet).symlink_to("busybox")
            (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
            (rootfs / "etc" / "group").write_text("root:x:0:\n")
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
            partial.rename(tarball)

    def debootstrap(
        self, tarball: Path, include: str, suite: str = "bookworm"
    ) -> subprocess.Popen[bytes]:
        """Start debootstrap and tar in the background; the tarball appears only when both
        succeed, so a failed build is retried by the next run."""
        target = self.root / "cache" / (tarball.stem + ".rootfs")
        partial = tarball.with_suffix(".partial")
        script = (
            f"set -e; rm -rf {target}; "
            f"debootstrap --variant=minbase --include={include} {suite} {target}; "
            f"tar -C {target} -cf {partial} .; mv {partial} {tarball}; rm -rf {target}"
        )
        with tarball.with_suffix(".tar.log").open("wb") as log:
            return subprocess.Popen(["sh", "-c", script], stdout=log, stderr=log)


def main(argv: list[str]) -> int:
    rig = Rig.from_env()
    if argv[1:] == ["start"]:
        rig.start()
        registries = ", ".join(REGISTRIES.values())
        print(f"rig up: DOCKER_HOST={rig.docker_host}, registries on {registries}")
    elif argv[1:] == ["stop"]:
        rig.stop()
    else:
        print("usage: python -m tests.support.rig start|stop", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

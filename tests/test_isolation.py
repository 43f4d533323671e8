"""Users cannot reach, spoof or impersonate each other (issue 19), tried as an attacker would:
root in one's own container (``docker exec`` gives a root shell, as sudo in an image would),
against another owner's container on the rig's real dockerd with iptables on. And what the
defences cost no one: SSH logins, keys, scp, sftp, forwarding and sudo under the capability
set; a network per owner made and given back; Docker's address pools never exhausted; logs
capped."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config, ConfigError, load_config
from deepdockd.containers.networks import NetworkPoolExhausted, OwnerNetworks, network_name
from deepdockd.containers.spec import CONTAINER_CAPABILITIES
from deepdockd.docker import Docker
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory
from tests.support.docker_state import inspect
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig, RigError

POOL = ipaddress.IPv4Network(Config().network_pool)
# The kernel's numbers of the capabilities a root shell may hold (linux/capability.h).
CAPABILITY_BITS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12,
    "NET_RAW": 13, "SYS_CHROOT": 18, "SYS_ADMIN": 21, "MKNOD": 27, "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}  # fmt: skip
# The forged-ARP step of the attack, in the Perl every Debian image has: one ARP reply,
# broadcast from eth0, saying that the address given is at this container's MAC. A host that
# believes it sends that address's traffic here.
FORGED_ARP_REPLY = r"""
my ($ip) = @ARGV;
sub slurp { open(my $f, "<", "/sys/class/net/eth0/$_[0]") or die "$_[0]: $!\n"; chomp(my $v = <$f>); $v }
my $mac = pack("H12", slurp("address") =~ s/://gr);
my $address = pack("C4", split(/\./, $ip));
my $everyone = "\xff" x 6;
my $arp = pack("n n C C n", 1, 0x0800, 6, 4, 2) . $mac . $address . $everyone . $address;
my $frame = $everyone . $mac . pack("n", 0x0806) . $arp;
socket(my $raw, 17, 3, 0) or die "socket(AF_PACKET, SOCK_RAW): $!\n";
my $to = pack("S n i S C C a8", 17, 0x0806, slurp("ifindex"), 1, 0, 6, $everyone);
defined(send($raw, $frame, 0, $to)) or die "send: $!\n";
print "sent ", length($frame), " bytes\n";
"""
# How long a probe waits for a TCP connection: Docker's isolation drops the packets, so a
# connection that is not allowed never answers.
PROBE_TIMEOUT_S = 3


@dataclass
class Owners:
    """A daemon with auth on and two users, alice and bob, each creating as themselves."""

    client: Client
    tokens: dict[str, str]
    namespace: str

    async def create(self, who: str, name: str, **extra: Any) -> tuple[int, dict[str, Any]]:
        body = {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": who, "password": f"pw-{name}"}
        response = await self.client.post(
            "/containers/create", json=body | extra, headers=self._auth(who)
        )
        return response.status, await response.json()

    async def created(self, who: str, name: str, **extra: Any) -> dict[str, Any]:
        status, answer = await self.create(who, name, **extra)
        assert status == 201, answer
        return answer

    async def call(self, who: str, method: str, path: str) -> None:
        """A call that must succeed."""
        response = await self.client.request(method, path, headers=self._auth(who))
        assert response.status == 200, await response.text()

    def _auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def network_isolation() -> bool:
    """On, as by default; a test parametrizes it to try both."""
    return True


@pytest.fixture
def isolated_config(config: Config, ssh_ports: tuple[int, int], network_isolation: bool) -> Config:
    """The defaults of a real daemon (its pool, its log caps), with auth on, the rig's Docker,
    this test's namespace and SSH ports."""
    return Config(
        **{**config.__dict__, "auth": True, "ssh_port_range": ssh_ports,
           "ssh_ready_timeout": 180.0, "network_isolation": network_isolation}
    )  # fmt: skip


@pytest.fixture
async def owners(aiohttp_client: ClientFactory, isolated_config: Config, cleanup: None) -> Owners:
    store = TokenStore(isolated_config.state_dir)
    store.ensure_admin()
    tokens = {"alice": store.add("alice", "user"), "bob": store.add("bob", "user")}
    client = await aiohttp_client(create_app(isolated_config))
    return Owners(client, tokens, isolated_config.namespace)


@pytest.fixture
async def docker(rig: Rig) -> AsyncIterator[Docker]:
    client = Docker(rig.docker_host)
    await client.open()
    yield client
    await client.close()


# --- what the tests look at ---


def namespace_networks(rig: Rig, namespace: str, owner: str | None = None) -> list[dict[str, Any]]:
    """The Docker networks labelled with the namespace (and owner), as `network inspect`."""
    filters = ["--filter", f"label=deepdockd.namespace={namespace}"]
    if owner is not None:
        filters += ["--filter", f"label=deepdockd.owner={owner}"]
    ids = rig.docker("network", "ls", "-q", *filters).split()
    return list(json.loads(rig.docker("network", "inspect", *ids))) if ids else []


def address_of(rig: Rig, container: str) -> tuple[str, str, str]:
    """The container's only network: its name, the container's IP and MAC on it."""
    [(network, settings)] = inspect(rig, container)["NetworkSettings"]["Networks"].items()
    return network, settings["IPAddress"], settings["MacAddress"]


def reaches(rig: Rig, container: str, ip: str, port: int) -> bool:
    """Whether root in ``container`` can open a TCP connection to ip:port (bash's /dev/tcp:
    the Debian image has no nc)."""
    try:
        rig.docker(
            "exec", container, "timeout", str(PROBE_TIMEOUT_S),
            "bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}",
        )  # fmt: skip
    except RigError:
        return False
    return True


def listen(rig: Rig, container: str, port: int) -> None:
    """A TCP service in the container (busybox's httpd, copied in: busybox is static), up
    once the host can connect to it."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is part of the rig"
    rig.docker("cp", busybox, f"{container}:/tmp/busybox")
    rig.docker("exec", container, "/tmp/busybox", "httpd", "-p", str(port), "-h", "/tmp")
    ip = address_of(rig, container)[1]
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {container}:{port}"
            time.sleep(0.1)


def capabilities(rig: Rig, container: str) -> set[str]:
    """The capabilities a root shell in the container holds (its effective set)."""
    status = rig.docker("exec", container, "cat", "/proc/self/status")
    [mask] = [line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")]
    held = {name for name, bit in CAPABILITY_BITS.items() if int(mask, 16) >> bit & 1}
    unnamed = int(mask, 16) & ~sum(1 << bit for bit in CAPABILITY_BITS.values())
    assert unnamed == 0, f"capabilities beyond the table: {unnamed:#x}"
    return held


# --- reach ---


async def test_root_in_another_owners_container_reaches_no_port_of_mine(
    owners: Owners, rig: Rig
) -> None:
    await owners.created("alice", "victim")
    await owners.created("bob", "attacker")
    await owners.created("bob", "attacker2")
    for container in ("victim", "attacker"):
        listen(rig, container, 8080)
    _, victim_ip, _ = address_of(rig, "victim")
    _, attacker_ip, _ = address_of(rig, "attacker")

    # Bob, root in his container, tries alice's SSH and her own service directly.
    stolen = {port: reaches(rig, "attacker", victim_ip, port) for port in (22, 8080)}
    # The same probes between bob's own two containers: his multi-container work.
    own = {port: reaches(rig, "attacker2", attacker_ip, port) for port in (22, 8080)}

    assert stolen == {22: False, 8080: False}
    assert own == {22: True, 8080: True}


# Without networks of their own the two containers share one bridge, as in the issue: the
# missing capability alone must stop the attack.
@pytest.mark.parametrize("network_isolation", [True, False], ids=["own-networks", "one-bridge"])
async def test_a_forged_arp_reply_is_not_permitted_and_the_host_keeps_sending_to_the_owner(
    owners: Owners, rig: Rig
) -> None:
    victim = Login((await owners.created("alice", "victim"))["ssh-port"], "alice", "pw-victim")
    await owners.created("bob", "attacker")
    _, victim_ip, victim_mac = address_of(rig, "victim")
    _, _, attacker_mac = address_of(rig, "attacker")
    # Alice logs in: the host (Docker's proxy for the published port) now talks to her IP.
    assert victim.run("id -un").stdout == "alice\n"

    with pytest.raises(RigError) as refused:
        rig.docker("exec", "attacker", "perl", "-e", FORGED_ARP_REPLY, victim_ip)

    assert str(refused.value).endswith("socket(AF_PACKET, SOCK_RAW): Operation not permitted")
    # The host still sends alice's traffic to alice's container, never to bob's.
    neighbours = host_neighbours(victim_ip)
    assert victim_mac in neighbours
    assert attacker_mac not in neighbours
    assert victim.run("hostname").stdout == "victim\n"
    # The same program with Docker's default capabilities sends its frame (announcing its
    # own address, harmless): the refusal above is the missing NET_RAW, not a broken tool.
    announce_self = 'exec perl -e "$1" "$(hostname -i)"'
    sent = rig.docker(
        "run", "--rm", DEBIAN_SSH_IMAGE, "sh", "-c", announce_self, "sh", FORGED_ARP_REPLY
    )
    assert sent == "sent 42 bytes\n"


async def test_root_in_a_container_holds_only_the_listed_capabilities(
    owners: Owners, rig: Rig
) -> None:
    await owners.created("bob", "box")

    container = inspect(rig, "box")["HostConfig"]

    assert container["CapDrop"] == ["ALL"]
    assert {c.removeprefix("CAP_") for c in container["CapAdd"]} == set(CONTAINER_CAPABILITIES)
    assert container["Privileged"] is False
    held = capabilities(rig, "box")
    assert held == set(CONTAINER_CAPABILITIES)
    dropped = {"NET_RAW", "NET_ADMIN", "SYS_ADMIN", "MKNOD", "SETFCAP", "SETPCAP"}
    assert not held & dropped


async def test_a_user_cannot_ask_for_capabilities(owners: Owners, rig: Rig) -> None:
    for field in ("cap_add", "CapAdd", "privileged"):
        status, error = await owners.create("bob", "caps", **{field: ["NET_RAW"]})
        assert status == 422
        assert error["error"]["message"] == f"{field}: Unknown field."
    assert namespace_networks(rig, owners.namespace) == []


async def test_logins_keys_copies_forwarding_and_sudo_work_under_the_capabilities(
    owners: Owners, rig: Rig, sudo_image: str, tmp_path: Path
) -> None:
    login = Login(
        (await owners.created("alice", "work", image=sudo_image))["ssh-port"], "alice", "pw-work"
    )
    rig.docker("exec", "work", "usermod", "-aG", "sudo", "alice")  # as the image's admin would
    key = new_key(tmp_path / "id")
    payload, back = tmp_path / "payload", tmp_path / "back"
    payload.write_text("weights\n")
    listen(rig, "work", 8080)

    # A session with a terminal, as `ssh host` opens one (sshd writes its audit record).
    interactive = login.client("ssh", "-tt", login.target, "tty")
    installed = login.run("mkdir -p ~/.ssh && cat >> ~/.ssh/authorized_keys", stdin=key.read_text())
    by_key = login.run_with_key(tmp_path / "id", "id -un")
    copied = login.client("scp", str(payload), f"{login.target}:copy")
    batch = f"put {payload} via-sftp\nget copy {back}\n"
    transferred = login.client("sftp", "-o", "BatchMode=no", "-b", "-", login.target, stdin=batch)
    sudo = "echo pw-work | sudo -S -p ''"
    # Root's own work: a file given away, and a process of alice's ended (KILL).
    as_root = login.run(
        f'sleep 300 >/dev/null 2>&1 & {sudo} sh -c "id -u; chown root copy; stat -c %U copy; kill $!"'
    )
    as_nobody = login.run(f"{sudo} -u nobody id -un")
    forwarded = login.forwarded_get(8080)

    assert interactive.returncode == 0, interactive.stdout + interactive.stderr
    assert interactive.stdout.startswith("/dev/pts/"), interactive.stdout
    assert installed.returncode == 0, installed.stderr
    assert by_key.stdout == "alice\n", by_key.stderr
    assert copied.returncode == 0, copied.stderr
    assert transferred.returncode == 0, transferred.stderr
    assert back.read_text() == "weights\n"
    assert login.run("cat via-sftp").stdout == "weights\n"
    assert as_root.stdout.split() == ["0", "root"], as_root.stdout + as_root.stderr
    assert as_root.returncode == 0, as_root.stderr
    assert as_nobody.stdout == "nobody\n", as_nobody.stderr
    assert forwarded.startswith(b"HTTP/1."), forwarded


@dataclass(frozen=True)
class Login:
    """A user's SSH login to a container, with real OpenSSH clients."""

    port: int
    user: str
    password: str

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1"

    def run(self, command: str, *, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return self.client("ssh", self.target, command, stdin=stdin)

    def client(self, program: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """ssh, scp or sftp, with the password typed by sshpass."""
        port_flag = "-p" if program == "ssh" else "-P"
        return subprocess.run(
            ["sshpass", "-e", program, port_flag, str(self.port), *SSH_OPTIONS,
             "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no", *args],
            env={"SSHPASS": self.password, "PATH": "/usr/bin:/bin"}, input=stdin,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def run_with_key(self, key: Path, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-p", str(self.port), *SSH_OPTIONS, "-i", str(key),
             "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes", self.target, command],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def forwarded_get(self, remote_port: int) -> bytes:
        """An HTTP GET through ``ssh -L`` to 127.0.0.1:remote_port inside the container: the
        first bytes of the answer."""
        local = free_port()
        forward = subprocess.Popen(
            ["sshpass", "-e", "ssh", "-p", str(self.port), *SSH_OPTIONS, "-N",
             "-o", "PreferredAuthentications=password", "-o", "ExitOnForwardFailure=yes",
             "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}", self.target],
            env={"SSHPASS": self.password, "PATH": "/usr/bin:/bin"}, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            return http_get_with_deadline(local, deadline_s=30)
        finally:
            forward.terminate()
            forward.wait(timeout=10)


SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
)  # fmt: skip


def new_key(path: Path) -> Path:
    """A new ed25519 key pair at ``path``; the public key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def host_neighbours(ip: str) -> str:
    """The host's ARP entries for ip: whom the host sends that address's traffic to."""
    return subprocess.run(
        ["ip", "neigh", "show", "to", ip], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def sudo_image(rig: Rig) -> Iterator[str]:
    """The Debian SSH image with sudo installed (from Debian's mirror, as a user would)."""
    image = f"deepdockd-test/debian-sudo:{uuid.uuid4().hex[:8]}"
    builder = f"build-{uuid.uuid4().hex[:8]}"
    install = (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y -q --no-install-recommends sudo"
    )
    rig.docker("run", "--name", builder, DEBIAN_SSH_IMAGE, "sh", "-c", install)
    rig.docker("commit", "--change", 'CMD ["/bin/bash"]', builder, image)  # not the install
    rig.docker("rm", builder)
    yield image
    rig.docker("rmi", "--force", image)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get_with_deadline(port: int, *, deadline_s: float) -> bytes:
    """The first bytes of the answer to a GET on 127.0.0.1:port, once something answers."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = connection.recv(64)
                if reply:
                    return reply
        except OSError:
            pass
        assert time.monotonic() < deadline, f"nothing answered on 127.0.0.1:{port}"
        time.sleep(0.1)


# --- logs ---


async def test_logs_are_capped_as_configured(
    aiohttp_client: ClientFactory, isolated_config: Config, rig: Rig, cleanup: None
) -> None:
    anyone = Config(**{**isolated_config.__dict__, "auth": False})
    small = Config(**{**anyone.__dict__, "log_max_size": "1m", "log_max_file": 2})
    by_default = await aiohttp_client(create_app(anyone))
    configured = await aiohttp_client(create_app(small))
    body = {"image": DEBIAN_SSH_IMAGE, "user_name": "carol", "password": "pw"}

    first = await by_default.post("/containers/create", json=body | {"name": "logs-default"})
    second = await configured.post("/containers/create", json=body | {"name": "logs-small"})

    assert (first.status, second.status) == (201, 201)
    assert inspect(rig, "logs-default")["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "50m", "max-file": "3"},
    }
    small_box = inspect(rig, "logs-small")
    assert small_box["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "2"},
    }
    # Root in the container writes 8 MB to its log, as a runaway job would.
    line = "$(head -c 999 /dev/zero | tr '\\0' x)"
    flood = f'yes "{line}" | head -n 8400 > /proc/1/fd/1; echo END > /proc/1/fd/1'
    rig.docker("exec", "logs-small", "sh", "-c", flood)
    wait_for_last_log_line(rig, "logs-small", "END")
    log_path = Path(small_box["LogPath"])
    on_disk = sum(f.stat().st_size for f in log_path.parent.glob(f"{log_path.name}*"))
    assert 1024 * 1024 < on_disk <= 2 * (1024 * 1024 + 2048)  # two files of 1 MiB, a line over


def wait_for_last_log_line(rig: Rig, container: str, line: str) -> None:
    deadline = time.monotonic() + 30
    while rig.docker("logs", "--tail", "1", container).strip() != line:
        assert time.monotonic() < deadline, f"the log of {container} never ended with {line}"
        time.sleep(0.1)


# --- a network per owner ---


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("DEEPDOCKD_NETWORK_POOL", "10.213.0.0/25", "must be an IPv4 network of /24 or larger"),
        ("DEEPDOCKD_NETWORK_POOL", "10.213.0.1/16", "must be an IPv4 network of /24 or larger"),
        ("DEEPDOCKD_NETWORK_POOL", "fd00::/64", "must be an IPv4 network of /24 or larger"),
        ("DEEPDOCKD_NETWORK_ISOLATION", "maybe", "must be true or false"),
        ("DEEPDOCKD_LOG_MAX_SIZE", "50", "must be a size such as 50m"),
        ("DEEPDOCKD_LOG_MAX_SIZE", "-1m", "must be a size such as 50m"),
        ("DEEPDOCKD_LOG_MAX_FILE", "0", "must be a number of files from 1 to 100"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    tmp_path: Path, variable: str, value: str, why: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({}, {variable: value}, default_file=tmp_path / "absent.toml")

    key = variable.removeprefix("DEEPDOCKD_").lower()
    assert str(refused.value).startswith(f"{key}: {value!r} {why}")
    assert str(refused.value).endswith(f"(from {variable})")


def test_the_settings_reach_the_config() -> None:
    environ = {
        "DEEPDOCKD_NETWORK_ISOLATION": "false", "DEEPDOCKD_NETWORK_POOL": "10.50.0.0/20",
        "DEEPDOCKD_LOG_MAX_SIZE": "10M", "DEEPDOCKD_LOG_MAX_FILE": "5",
    }  # fmt: skip
    config = load_config({}, environ, default_file=Path("/nonexistent"))

    assert config.network_isolation is False
    assert config.network_pool == ipaddress.IPv4Network("10.50.0.0/20")
    assert (config.log_max_size, config.log_max_file) == ("10m", 5)


async def test_an_owners_network_comes_with_the_first_container_and_goes_with_the_last(
    owners: Owners, rig: Rig
) -> None:
    namespace = owners.namespace
    assert namespace_networks(rig, namespace) == []

    await owners.created("alice", "a1")
    [network] = namespace_networks(rig, namespace, "alice")
    await owners.created("alice", "a2")
    await owners.created("bob", "b1")

    assert network["Name"] == network_name(namespace, "alice")
    assert network["Labels"] == {"deepdockd.namespace": namespace, "deepdockd.owner": "alice"}
    [ipam] = network["IPAM"]["Config"]
    subnet = ipaddress.IPv4Network(ipam["Subnet"])
    assert subnet.prefixlen == 24
    assert subnet.subnet_of(POOL)
    for name in ("a1", "a2"):
        attached, ip, _ = address_of(rig, name)
        assert attached == network["Name"]
        assert ipaddress.IPv4Address(ip) in subnet
    [bobs] = namespace_networks(rig, namespace, "bob")
    assert address_of(rig, "b1")[0] == bobs["Name"]
    assert not ipaddress.IPv4Network(bobs["IPAM"]["Config"][0]["Subnet"]).overlaps(subnet)

    # A stopped container still holds its owner's network: it starts again on it.
    await owners.call("alice", "POST", "/containers/a2/stop")
    await owners.call("alice", "DELETE", "/containers/a1?force=true")
    assert [n["Id"] for n in namespace_networks(rig, namespace, "alice")] == [network["Id"]]
    await owners.call("alice", "DELETE", "/containers/a2")
    assert namespace_networks(rig, namespace, "alice") == []
    assert [n["Id"] for n in namespace_networks(rig, namespace, "bob")] == [bobs["Id"]]


async def test_a_failed_create_leaves_no_network_behind(
    owners: Owners, rig: Rig, shell_less_image: str
) -> None:
    await owners.created("bob", "b1")

    # An image without a shell: the create fails once its network and container were made.
    alices = await owners.create("alice", "nossh-a", image=shell_less_image)
    bobs = await owners.create("bob", "nossh-b", image=shell_less_image)

    assert (alices[0], bobs[0]) == (422, 422)
    assert alices[1]["error"]["code"] == "ssh_unavailable"
    assert namespace_networks(rig, owners.namespace, "alice") == []
    # Bob's other container keeps his network, and his container on it.
    [bobs_network] = namespace_networks(rig, owners.namespace, "bob")
    assert address_of(rig, "b1")[0] == bobs_network["Name"]


async def test_a_network_whose_containers_went_behind_deepdockds_back_goes_at_the_next_removal(
    owners: Owners, rig: Rig
) -> None:
    await owners.created("alice", "a1")
    await owners.created("bob", "b1")
    await owners.created("bob", "b2")
    rig.docker("rm", "--force", "a1")  # an admin at the host, not through deepdockd
    assert len(namespace_networks(rig, owners.namespace, "alice")) == 1

    await owners.call("bob", "DELETE", "/containers/b1?force=true")

    assert namespace_networks(rig, owners.namespace, "alice") == []
    assert len(namespace_networks(rig, owners.namespace, "bob")) == 1  # b2 is on it


async def test_concurrent_first_creates_of_one_owner_share_one_network(
    owners: Owners, rig: Rig
) -> None:
    answers = await asyncio.gather(*(owners.create("alice", f"c{i}") for i in range(4)))

    assert [status for status, _ in answers] == [201] * 4
    [network] = namespace_networks(rig, owners.namespace, "alice")
    assert {address_of(rig, f"c{i}")[0] for i in range(4)} == {network["Name"]}


async def test_forty_owners_get_forty_distinct_subnets_and_give_them_back(
    docker: Docker, config: Config, rig: Rig, cleanup: None
) -> None:
    # Docker's default pools give out about thirty networks: more owners than that.
    networks = OwnerNetworks(docker, config)
    owners = [f"user{i:02d}" for i in range(40)]

    names = await asyncio.gather(*(networks.ensure(owner) for owner in owners))
    again = await networks.ensure(owners[0])  # an owner's second create makes nothing new

    made = namespace_networks(rig, config.namespace)
    assert again == names[0]
    assert sorted(n["Name"] for n in made) == sorted(
        network_name(config.namespace, o) for o in owners
    )
    assert names == [network_name(config.namespace, o) for o in owners]
    subnets = [ipaddress.IPv4Network(n["IPAM"]["Config"][0]["Subnet"]) for n in made]
    assert len(subnets) == 40
    assert all(s.prefixlen == 24 and s.subnet_of(POOL) for s in subnets)
    others = [
        ipaddress.ip_network(c["Subnet"])
        for n in json.loads(rig.docker("network", "inspect", *rig.docker("network", "ls", "-q").split()))
        if (n["Labels"] or {}).get("deepdockd.namespace") != config.namespace
        for c in n["IPAM"]["Config"] or []
    ]  # fmt: skip
    for subnet in subnets:
        assert not any(subnet.overlaps(o) for o in subnets if o != subnet)
        assert not any(subnet.overlaps(o) for o in others)
    await asyncio.gather(*(networks.release(owner) for owner in owners))
    assert namespace_networks(rig, config.namespace) == []


async def test_the_pool_skips_subnets_docker_uses_and_an_exhausted_pool_is_503(
    docker: Docker,
    config: Config,
    rig: Rig,
    aiohttp_client: ClientFactory,
    cleanup: None,
) -> None:
    # 172.30.249.0/24 is the rig's own bridge: a pool around it has one /24 left.
    pool = ipaddress.IPv4Network("172.30.248.0/23")
    networks = OwnerNetworks(docker, Config(**{**config.__dict__, "network_pool": pool}))

    await networks.ensure("first")
    with pytest.raises(NetworkPoolExhausted) as exhausted:
        await networks.ensure("second")
    [first] = namespace_networks(rig, config.namespace, "first")
    assert first["IPAM"]["Config"][0]["Subnet"] == "172.30.248.0/24"
    assert exhausted.value.message == (
        "no free /24 in network_pool 172.30.248.0/23: all 2 are used by Docker networks; "
        "remove containers of owners who are done, or widen network_pool"
    )
    # Through the API: a 503 that says so, and nothing left behind.
    full = Config(**{**config.__dict__, "network_pool": ipaddress.IPv4Network("172.30.249.0/24")})
    client = await aiohttp_client(create_app(full))
    body = {"name": "nowhere", "image": DEBIAN_SSH_IMAGE, "user_name": "dave", "password": "pw"}
    response = await client.post("/containers/create", json=body)
    error = await response.json()
    assert response.status == 503
    assert error["error"]["code"] == "network_pool_exhausted"
    assert (
        rig.docker("ps", "-aq", "--filter", f"label=deepdockd.namespace={config.namespace}") == ""
    )


async def test_without_isolation_containers_join_dockers_default_bridge(
    aiohttp_client: ClientFactory, isolated_config: Config, rig: Rig, cleanup: None
) -> None:
    shared = Config(**{**isolated_config.__dict__, "auth": False, "network_isolation": False})
    client = await aiohttp_client(create_app(shared))
    body = {"name": "shared", "image": DEBIAN_SSH_IMAGE, "user_name": "erin", "password": "pw"}

    response = await client.post("/containers/create", json=body)

    assert response.status == 201, await response.text()
    assert address_of(rig, "shared")[0] == "bridge"
    assert namespace_networks(rig, shared.namespace) == []

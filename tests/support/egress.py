"""What the egress tests use: two owners' daemon, connects from inside a container, a host of
the test's own in a network namespace, and the host's firewall as iptables prints it."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.api import Client
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig, RigError


@dataclass
class Owners:
    """A daemon with auth on and users who each create as themselves (their token)."""

    client: Client
    tokens: dict[str, str]

    async def created(self, who: str, name: str, **extra: Any) -> dict[str, Any]:
        body = {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": who, "password": f"pw-{name}"}
        response = await self.client.post(
            "/containers/create",
            json=body | extra,
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
        )
        answer: dict[str, Any] = await response.json()
        assert response.status == 201, answer
        return answer


def address_of(rig: Rig, container: str) -> tuple[str, str]:
    """The container's only network and its IPv4 address on it."""
    [data] = json.loads(rig.docker("inspect", container))
    [(network, settings)] = data["NetworkSettings"]["Networks"].items()
    return network, settings["IPAddress"]


def gateway_of(rig: Rig, container: str) -> str:
    """The host's address on the container's network (its default route)."""
    [data] = json.loads(rig.docker("inspect", container))
    [settings] = data["NetworkSettings"]["Networks"].values()
    gateway: str = settings["Gateway"]
    return gateway


@dataclass(frozen=True)
class Probe:
    """One TCP connect from inside a container: whether it connected, and how long it took
    to know."""

    connected: bool
    seconds: float


def connect_from(rig: Rig, container: str, ip: str, port: int, *, timeout_s: float = 3) -> Probe:
    """A TCP connect by root in ``container`` to ip:port (bash's /dev/tcp: the Debian image
    has no nc), given up after ``timeout_s``. The time is measured inside the container, so
    the docker exec around it does not count."""
    script = (
        f"s=$(date +%s%N); timeout {timeout_s} bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; "
        'r=$?; echo "$r $(( ($(date +%s%N) - s) / 1000000 ))"'
    )
    status, millis = rig.docker("exec", container, "bash", "-c", script).split()
    return Probe(connected=status == "0", seconds=int(millis) / 1000)


def listen(rig: Rig, container: str, port: int) -> None:
    """A TCP service in the container (busybox's httpd, copied in), up once the host can
    connect to it."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is part of the rig"
    rig.docker("cp", busybox, f"{container}:/tmp/busybox")
    rig.docker("exec", container, "/tmp/busybox", "httpd", "-p", str(port), "-h", "/tmp")
    _, ip = address_of(rig, container)
    wait_for_port(ip, port)


def wait_for_port(ip: str, port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {ip}:{port}"
            time.sleep(0.1)


def run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@dataclass
class FarHost:
    """A machine of the test's own: a network namespace behind a veth pair, with listeners
    on the addresses it was given (the host routes to each of them through the pair)."""

    netns: str
    addresses: tuple[str, ...]
    ports: tuple[int, ...]


@contextlib.contextmanager
def far_host(networks: dict[str, str], ports: tuple[int, ...]) -> Iterator[FarHost]:
    """A namespace answering TCP on each of ``ports`` at each address; ``networks`` maps the
    host's address on each /24 to the namespace's (``{"10.199.77.1": "10.199.77.2"}``)."""
    netns = f"ddegress-{uuid.uuid4().hex[:6]}"
    outside, inside = f"{netns[:8]}o{netns[-6:]}", f"{netns[:8]}i{netns[-6:]}"
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is part of the rig"
    run("ip", "netns", "add", netns)
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", netns)
        for host_side, far_side in networks.items():
            run("ip", "addr", "add", f"{host_side}/24", "dev", outside)
            run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{far_side}/24", "dev", inside)
        run("ip", "link", "set", outside, "up")
        run("ip", "netns", "exec", netns, "ip", "link", "set", inside, "up")
        run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        for port in ports:
            listeners.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        netns,
                        busybox,
                        "httpd",
                        "-f",
                        "-p",
                        str(port),
                        "-h",
                        "/",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for far_side in networks.values():
            for port in ports:
                wait_for_port(far_side, port)
        yield FarHost(netns, tuple(networks.values()), ports)
    finally:
        for listener in listeners:
            listener.terminate()
            listener.wait(timeout=10)
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def ruleset() -> str:
    """The filter table as ``iptables -S`` prints it."""
    return run("iptables", "-w", "-S")


def lines_naming(namespace: str, chains: tuple[str, ...]) -> list[str]:
    """The rules and chains of the filter table that belong to the namespace's policy."""
    return [
        line
        for line in ruleset().splitlines()
        if namespace in line or any(chain in line.split() for chain in chains)
    ]


def probe_ipv6(rig: Rig, container: str) -> str:
    """The container's IPv6 state: disable_ipv6 for all and eth0, and its v6 addresses."""
    script = (
        "cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/eth0/disable_ipv6;"
        " cat /proc/net/if_inet6"
    )
    try:
        return rig.docker("exec", container, "sh", "-c", script)
    except RigError as exc:
        return str(exc)

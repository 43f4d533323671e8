"""What a container may reach outside its own network (issue 31, docs/security.md#egress), tried
from inside real containers on the rig's dockerd against real iptables: the internet yes;
link-local (a cloud's metadata service), the private ranges and the host's own addresses (other
owners' published ports among them) no, refused at once; egress_allow opens what a lab needs;
the rules come back after dockerd restarts or an admin flushes them; `deepdockd firewall
remove` leaves nothing behind.

The "rest of the network" is a host of the test's own: a network namespace behind a veth pair,
with a listener on a link-local address (169.254.77.2), a private one (10.199.77.2) and one
that stands for the internet, 198.51.100.2 (TEST-NET-2: an address of no private or special
range the policy knows, routed like any public address; this host's own uplink and package
mirror are documentation addresses too). Every test turns the policy on for a network_pool
and namespace of its own and removes its rules when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random
import shlex
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deepdockd.api import app as app_module
from deepdockd.api.app import create_app
from deepdockd.config import Config, ConfigError, load_config
from deepdockd.firewall.keeper import EgressFirewall, resolvers
from deepdockd.firewall.rules import chain_names, removals
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory
from tests.support.daemon import run_deepdockd
from tests.support.egress import (
    FarHost,
    Owners,
    Probe,
    address_of,
    connect_from,
    far_host,
    gateway_of,
    lines_naming,
    listen,
    probe_ipv6,
    run,
)
from tests.support.rig import BRIDGE_CIDR, DEBIAN_SERVICE_IMAGE, Rig

FAR_PORT = 8081
OTHER_FAR_PORT = 8082
# A refused connect fails at once; one dropped would take the whole timeout.
REFUSED_WITHIN_S = 1.0
# CHECK_INTERVAL_S (5 s) and an iptables call or two.
RESTORED_WITHIN_S = 20.0


def refused(probe: Probe) -> bool:
    return not probe.connected and probe.seconds < REFUSED_WITHIN_S


# --- fixtures ---


@pytest.fixture
async def egress_rules(monkeypatch: pytest.MonkeyPatch, namespace: str) -> AsyncIterator[None]:
    """The real keeper in this test's apps (conftest.py keeps the firewall out of the others),
    and whatever the namespace put in the host's firewall removed at the end, by the command
    an admin runs: nothing of it may stay on the host. The keepers stop first, since the apps
    themselves may close only after this fixture's end (and would put the rules back)."""
    keepers: list[EgressFirewall] = []

    class Kept(EgressFirewall):
        async def start(self) -> None:
            keepers.append(self)
            await super().start()

    monkeypatch.setattr(app_module, "EgressFirewall", Kept)
    yield
    for keeper in keepers:
        await keeper.stop()
    removed = run_deepdockd("firewall", "remove", "--namespace", namespace)
    assert removed.returncode == 0, removed.stderr
    assert lines_naming(namespace, tuple(chain_names(namespace))) == []


@pytest.fixture
def pool() -> ipaddress.IPv4Network:
    """A network_pool of the test's own (two owners' /24s), so that the rules it makes match
    its own containers only."""
    return ipaddress.IPv4Network(f"10.214.{2 * random.randrange(128)}.0/23")


@pytest.fixture
def policy_config(
    config: Config,
    ssh_ports: tuple[int, int],
    service_ports: tuple[int, int],
    pool: ipaddress.IPv4Network,
) -> Config:
    """A real daemon's defaults with auth on, the egress policy on and this test's pool and
    ports. Services are published on every address (an admin's LAN exposure): the policy must
    keep containers off them all the same."""
    return dataclasses.replace(
        config, auth=True, egress_policy=True, network_pool=pool, ssh_port_range=ssh_ports,
        service_port_range=service_ports, service_bind_address="0.0.0.0",
        ssh_ready_timeout=180.0,
    )  # fmt: skip


@pytest.fixture
def tokens(policy_config: Config) -> dict[str, str]:
    store = TokenStore(policy_config.state_dir)
    store.ensure_admin()
    return {"alice": store.add("alice", "user"), "bob": store.add("bob", "user")}


@pytest.fixture
def far() -> Iterator[FarHost]:
    octet = random.randrange(1, 255)
    networks = {
        f"169.254.{octet}.1": f"169.254.{octet}.2",
        f"10.199.{octet}.1": f"10.199.{octet}.2",
        "198.51.100.1": "198.51.100.2",
    }
    with far_host(networks, (FAR_PORT, OTHER_FAR_PORT)) as host:
        yield host


@pytest.fixture
async def owners(
    aiohttp_client: ClientFactory,
    policy_config: Config,
    tokens: dict[str, str],
    egress_rules: None,
    cleanup: None,
) -> Owners:
    return Owners(await aiohttp_client(create_app(policy_config)), tokens)


def link_local(far: FarHost) -> str:
    return far.addresses[0]


def private(far: FarHost) -> str:
    return far.addresses[1]


def internet(far: FarHost) -> str:
    return far.addresses[2]


def host_primary_ipv4() -> str:
    """The host's address on its default route."""
    words = run("ip", "-4", "route", "get", "1.1.1.1").split()
    return words[words.index("src") + 1]


# --- what a container reaches ---


async def test_a_container_reaches_the_internet_but_not_link_local_or_private_addresses(
    owners: Owners, rig: Rig, far: FarHost
) -> None:
    await owners.created("bob", "box")

    probes = {ip: connect_from(rig, "box", ip, FAR_PORT) for ip in far.addresses}
    # Names resolve: Docker's embedded DNS asks the host's resolver (a private address here).
    resolved = rig.docker("exec", "box", "getent", "hosts", "deb.debian.org")

    assert probes[internet(far)].connected
    assert refused(probes[link_local(far)]), probes
    assert refused(probes[private(far)]), probes
    assert resolved.split()[1:] == ["deb.debian.org"]


async def test_another_owners_published_ports_are_refused_on_every_host_address(
    owners: Owners, rig: Rig
) -> None:
    victim = await owners.created("alice", "victim", image=DEBIAN_SERVICE_IMAGE, ports=[8080])
    await owners.created("bob", "attacker")
    await owners.created("bob", "attacker2")
    listen(rig, "attacker", 8080)
    host_addresses = {
        "bob's gateway": gateway_of(rig, "attacker"),
        "alice's gateway": gateway_of(rig, "victim"),
        "the host's primary address": host_primary_ipv4(),
        "docker's bridge": str(ipaddress.IPv4Interface(BRIDGE_CIDR).ip),
    }
    ports = {"ssh": victim["ssh-port"], "service": victim["ports"]["8080"]}

    stolen = {
        (where, what): connect_from(rig, "attacker", ip, port)
        for where, ip in host_addresses.items()
        for what, port in ports.items()
    }
    # Bob's own two containers still talk to each other.
    own = connect_from(rig, "attacker2", address_of(rig, "attacker")[1], 8080)

    assert all(refused(probe) for probe in stolen.values()), stolen
    assert own.connected
    # The host still reaches alice's ports (the creates' SSH probe passed too).
    for port in ports.values():
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_ipv6_is_off_in_an_owners_network(owners: Owners, rig: Rig) -> None:
    await owners.created("bob", "box")

    state = probe_ipv6(rig, "box").splitlines()

    # disable_ipv6 for all interfaces and eth0, and no IPv6 address at all (not even
    # link-local): nothing for ip6tables to keep.
    assert state == ["1", "1"], state


async def test_egress_allow_opens_a_network_and_a_port(
    aiohttp_client: ClientFactory,
    policy_config: Config,
    tokens: dict[str, str],
    egress_rules: None,
    cleanup: None,
    rig: Rig,
    far: FarHost,
) -> None:
    first = await aiohttp_client(create_app(policy_config))
    await Owners(first, tokens).created("bob", "box")
    before = connect_from(rig, "box", private(far), FAR_PORT)
    await first.close()

    # The daemon started again with egress_allow, as an admin would after editing the file.
    environ = {"DEEPDOCKD_EGRESS_ALLOW": f"{private(far)}/32:{FAR_PORT},{link_local(far)}"}
    allow = load_config({}, environ, default_file=Path("/nonexistent")).egress_allow
    await aiohttp_client(create_app(dataclasses.replace(policy_config, egress_allow=allow)))

    assert refused(before), before
    assert connect_from(rig, "box", private(far), FAR_PORT).connected
    assert refused(connect_from(rig, "box", private(far), OTHER_FAR_PORT))
    assert connect_from(rig, "box", link_local(far), FAR_PORT).connected
    assert connect_from(rig, "box", link_local(far), OTHER_FAR_PORT).connected


async def test_with_network_isolation_off_the_policy_covers_dockers_default_bridge(
    aiohttp_client: ClientFactory,
    policy_config: Config,
    tokens: dict[str, str],
    egress_rules: None,
    cleanup: None,
    rig: Rig,
    far: FarHost,
) -> None:
    shared = dataclasses.replace(policy_config, network_isolation=False)
    owners = Owners(await aiohttp_client(create_app(shared)), tokens)
    await owners.created("bob", "box")

    assert address_of(rig, "box")[0] == "bridge"
    assert refused(connect_from(rig, "box", private(far), FAR_PORT))
    assert connect_from(rig, "box", internet(far), FAR_PORT).connected


# --- kept in place, and removed ---


@pytest.fixture
async def kept(aiohttp_client: ClientFactory, policy_config: Config, egress_rules: None) -> Client:
    return await aiohttp_client(create_app(policy_config))


async def test_the_rules_come_back_after_a_flush_a_lost_jump_and_a_dockerd_restart(
    kept: Client, namespace: str, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="deepdockd.firewall.keeper")
    chains = chain_names(namespace)
    in_place = lines_naming(namespace, tuple(chains))
    [input_jump] = [line for line in in_place if line.startswith("-A INPUT ")]

    run("iptables", "-w", "-F", chains.forward)
    await _restored(namespace, in_place)
    run("iptables", "-w", "-D", *shlex.split(input_jump)[1:])
    await _restored(namespace, in_place)
    with rig.docker_stopped():
        pass
    await _restored(namespace, in_place)

    assert max(len(chain) for chain in chains) <= 28
    assert sum(1 for line in in_place if line.startswith(("-A DOCKER-USER", "-A INPUT"))) == 2
    put_back = [r for r in caplog.records if "put them back" in r.getMessage()]
    assert len(put_back) >= 2


async def _restored(namespace: str, expected: list[str]) -> None:
    deadline = time.monotonic() + RESTORED_WITHIN_S
    while sorted(lines_naming(namespace, tuple(chain_names(namespace)))) != sorted(expected):
        assert time.monotonic() < deadline, "the egress rules were not put back"
        await asyncio.sleep(0.2)


async def test_firewall_remove_leaves_no_rule_or_chain_of_the_namespace(
    aiohttp_client: ClientFactory, policy_config: Config, namespace: str, egress_rules: None
) -> None:
    client = await aiohttp_client(create_app(policy_config))
    await client.close()  # the daemon stopped: its rules stay
    chains = tuple(chain_names(namespace))
    left_by_the_daemon = lines_naming(namespace, chains)

    removed = run_deepdockd("firewall", "remove", "--namespace", namespace)
    again = run_deepdockd("firewall", "remove", "--namespace", namespace)

    assert len(left_by_the_daemon) > 4
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines()[-1] == f"iptables -X {chains[1]}"
    assert lines_naming(namespace, chains) == []
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"no egress rules of namespace {namespace!r} were in place\n"


def test_without_iptables_the_daemon_refuses_to_start_naming_the_setting(
    tmp_path: Path, free_port: int
) -> None:
    started = run_deepdockd(
        "--port", str(free_port), "--docker-host", f"unix://{tmp_path / 'no-docker.sock'}",
        "--state-dir", str(tmp_path / "state"),
        env={"DEEPDOCKD_EGRESS_POLICY": "true", "DEEPDOCKD_AUTH": "false", "PATH": "/nonexistent"},
    )  # fmt: skip

    assert started.returncode == 2, started.stdout + started.stderr
    [line] = [line for line in started.stderr.splitlines() if "egress_policy" in line]
    assert "iptables-restore is not installed" in line or "iptables is not installed" in line
    assert line.endswith(
        "or set egress_policy = false (DEEPDOCKD_EGRESS_POLICY=false) to run without them"
    )


# --- the settings ---


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("maybe", "must be true or false"),
    ],
)
def test_a_bad_egress_policy_is_refused_naming_it(tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(ConfigError) as refusal:
        load_config({}, {"DEEPDOCKD_EGRESS_POLICY": value}, default_file=tmp_path / "absent.toml")

    assert str(refusal.value) == f"egress_policy: {value!r} {why} (from DEEPDOCKD_EGRESS_POLICY)"


@pytest.mark.parametrize(
    "value", ["10.1.2.1/24", "10.1.2.0/24:", "10.1.2.0/24:70000", "fd00::/64", "host.lab:443", ","]
)
def test_a_bad_egress_allow_is_refused_naming_it(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as refusal:
        load_config({}, {"DEEPDOCKD_EGRESS_ALLOW": value}, default_file=tmp_path / "absent.toml")

    assert str(refusal.value).startswith(
        f'egress_allow: {value!r} must be IPv4 networks or addresses with an optional port, "CIDR[:PORT]"'
    )
    assert str(refusal.value).endswith("(from DEEPDOCKD_EGRESS_ALLOW)")


def test_egress_allow_is_a_list_in_the_file_and_comma_separated_in_the_environment(
    tmp_path: Path,
) -> None:
    file = tmp_path / "deepdockd.toml"
    file.write_text('egress_allow = ["10.1.2.0/24:443", "192.168.5.7"]\negress_policy = false\n')

    from_file = load_config({"config": str(file)}, {})
    from_environment = load_config(
        {}, {"DEEPDOCKD_EGRESS_ALLOW": "10.1.2.0/24:443, 192.168.5.7"}, default_file=tmp_path / "x"
    )

    expected = (
        (ipaddress.IPv4Network("10.1.2.0/24"), 443),
        (ipaddress.IPv4Network("192.168.5.7/32"), None),
    )
    assert from_file.egress_allow == expected == from_environment.egress_allow
    assert from_file.egress_policy is False
    assert (Config().egress_policy, Config().egress_allow) == (True, ())


# --- the parts that need no firewall ---


def test_the_resolvers_are_the_hosts_ipv4_name_servers_but_loopback(tmp_path: Path) -> None:
    first, second = tmp_path / "resolv.conf", tmp_path / "resolved.conf"
    first.write_text("# stub\nnameserver 127.0.0.53\nnameserver 10.255.255.53\noptions edns0\n")
    second.write_text("nameserver 10.255.255.53\nnameserver fd00::53\nnameserver 192.0.2.53\n")

    found = resolvers([first, second, tmp_path / "absent"])

    assert found == (ipaddress.IPv4Address("10.255.255.53"), ipaddress.IPv4Address("192.0.2.53"))


def test_removal_takes_every_jump_and_chain_of_the_namespace_and_nothing_else() -> None:
    mine, theirs = chain_names("lab"), chain_names("lab-2")
    listing = "\n".join([
        "-P INPUT ACCEPT", "-N DOCKER-USER", f"-N {mine.forward}", f"-N {mine.input}",
        f"-N {theirs.forward}",
        f'-A INPUT -m comment --comment "deepdockd-egress:lab" -j {mine.input}',
        f'-A DOCKER-USER -m comment --comment "deepdockd-egress:lab-2" -j {theirs.forward}',
        f'-A DOCKER-USER -m comment --comment "deepdockd-egress:lab" -j {mine.forward}',
        f"-A DOCKER-USER -s 10.0.0.0/8 -j {mine.forward}",  # an admin's own jump to ours
        f"-A {mine.forward} -s 10.213.0.0/16 -j RETURN",
        f"-A {theirs.forward} -s 10.213.0.0/16 -j RETURN",
    ])  # fmt: skip

    assert removals(listing, "lab") == [
        ("-D", "INPUT", "-m", "comment", "--comment", "deepdockd-egress:lab", "-j", mine.input),
        ("-D", "DOCKER-USER", "-m", "comment", "--comment", "deepdockd-egress:lab", "-j", mine.forward),
        ("-D", "DOCKER-USER", "-s", "10.0.0.0/8", "-j", mine.forward),
        ("-F", mine.forward), ("-F", mine.input), ("-X", mine.forward), ("-X", mine.input),
    ]  # fmt: skip

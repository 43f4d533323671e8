"""A bridge network per owner, so that one owner's containers cannot reach another's.

Each owner's containers join a user-defined bridge network of that owner's own: Docker's
iptables rules drop traffic between two such networks (on every port, whatever a user does as
root inside a container without NET_ADMIN), while the containers of one network reach each
other. The network is made on the owner's first create and removed when the owner has no
container left in this namespace. Published ports work as on Docker's default bridge.

Docker's default address pools hand each new network a /16, and refuse the next after about
thirty networks. So each owner network takes an explicit /24 of the configured
``network_pool``: the lowest one that no Docker network uses (any network of this engine, ours
or not, read from their IPAM config), given back when the network goes.

Like containers, networks are found by their labels (namespace and owner), never by a table
of our own, so a restart of deepdockd loses nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable

from deepdockd import labels
from deepdockd.config import Config
from deepdockd.docker import Docker, DockerConflict, DockerNotFound, NetworkSummary, SubnetTaken
from deepdockd.errors import ApiError, Conflict, ServiceUnavailable

log = logging.getLogger(__name__)

# One owner's network: 254 addresses, more containers than one person runs on one host.
OWNER_SUBNET_PREFIX = 24


class NetworkPoolExhausted(ServiceUnavailable):
    code = "network_pool_exhausted"


def network_name(namespace: str, owner: str) -> str:
    """``<namespace>-<owner>-<8 hex>``. Both namespaces and owner names may hold '-' (and
    every other character Docker allows in a name but capitals), so "lab-a" + "b" and
    "lab" + "a-b" would meet as "lab-a-b": the digest of the pair keeps them apart."""
    digest = hashlib.sha256(f"{namespace}\0{owner}".encode()).hexdigest()[:8]
    return f"{namespace}-{owner}-{digest}"


def choose_subnet(
    pool: ipaddress.IPv4Network,
    taken: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> ipaddress.IPv4Network | None:
    """The lowest /24 of ``pool`` that overlaps none of ``taken``, or None."""
    taken_v4 = [t for t in taken if isinstance(t, ipaddress.IPv4Network) and t.overlaps(pool)]
    for subnet in pool.subnets(new_prefix=OWNER_SUBNET_PREFIX):
        if not any(subnet.overlaps(t) for t in taken_v4):
            return subnet
    return None


class OwnerNetworks:
    """The owners' networks of one namespace. ``ensure`` and ``release`` hold a lock of their
    own, so the choice of a subnet and the network's creation are one step, and a network is
    never removed between a create's ``ensure`` and the moment its container exists.

    ``in_flight`` names the owners whose creates have chosen but whose containers Docker does
    not show yet: their networks are never released."""

    def __init__(
        self,
        docker: Docker,
        config: Config,
        *,
        in_flight: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self._docker = docker
        self._namespace = config.namespace
        self._pool = config.network_pool
        self.enabled = config.network_isolation
        self._in_flight = in_flight
        self._lock = asyncio.Lock()

    def name(self, owner: str) -> str | None:
        """The owner's network, as a container's NetworkMode; None when isolation is off
        (Docker's default bridge)."""
        return network_name(self._namespace, owner) if self.enabled else None

    async def ensure(self, owner: str) -> str | None:
        """The owner's network, made now if it does not exist; its name (None when isolation
        is off)."""
        name = self.name(owner)
        if name is None:
            return None
        async with self._lock:
            if any(n.name == name for n in await self._owner_networks(owner)):
                return name
            await self._create(name, owner)
        return name

    async def release(self, owner: str, *, quiet: bool = False) -> bool:
        """Remove the owner's network if the owner has no container left in this namespace
        (in any state: a stopped one starts again on it) and no create in flight; and so any
        other network of this namespace whose owner has none (its containers removed with
        ``docker rm``, its create killed). Whether that was done (``quiet``: a failure is
        not logged, for a caller that tries again). Never raises, even when cancelled: a
        network left behind is reused by its owner's next create, or removed by the next
        release."""
        if not self.enabled:
            return True
        try:
            await asyncio.shield(self._release())
        except (ApiError, asyncio.CancelledError) as exc:
            if not quiet:
                log.error("could not remove the network of %s: %s", owner, exc)
            return False
        return True

    async def _release(self) -> None:
        async with self._lock:
            networks = await self._docker.list_networks(filters={"label": [self._namespace_label]})
            if not networks:
                return
            # In this order: a create that is no longer in flight has its container already.
            keep = set(self._in_flight())
            containers = await self._docker.list_containers(
                filters={"label": [self._namespace_label]}
            )
            keep.update(c.labels.get(labels.OWNER, "") for c in containers)
            for network in networks:
                owner = network.labels.get(labels.OWNER, "")
                if owner in keep:
                    continue
                try:
                    await self._docker.remove_network(network.id)
                except DockerNotFound:
                    continue  # gone already is what we wanted
                log.info("removed the network %s of %s (%s)", network.name, owner, network.subnets)

    async def _create(self, name: str, owner: str) -> None:
        """Make the network on the lowest free /24. Another engine client (a second daemon on
        this Docker, a person) may take a subnet between our look and our create: Docker then
        refuses it, and the next free one is tried."""
        refused: list[ipaddress.IPv4Network] = []
        while True:
            taken = [*_subnets(await self._docker.list_networks()), *refused]
            subnet = choose_subnet(self._pool, taken)
            if subnet is None:
                count = 2 ** (OWNER_SUBNET_PREFIX - self._pool.prefixlen)
                raise NetworkPoolExhausted(
                    f"no free /{OWNER_SUBNET_PREFIX} in network_pool {self._pool}: all {count} "
                    "are used by Docker networks; remove containers of owners who are done, or "
                    "widen network_pool",
                    details={"network_pool": str(self._pool)},
                )
            try:
                await self._docker.create_network(
                    name,
                    subnet=str(subnet),
                    labels={labels.NAMESPACE: self._namespace, labels.OWNER: owner},
                )
            except SubnetTaken:
                refused.append(subnet)
                continue
            except DockerConflict:
                raise Conflict(
                    f"a Docker network named {name!r} exists that is not this owner's "
                    "network; remove or rename it",
                    details={"network": name},
                ) from None
            log.info("made the network %s (%s) for %s", name, subnet, owner)
            return

    async def _owner_networks(self, owner: str) -> list[NetworkSummary]:
        owners = f"{labels.OWNER}={owner}"
        return await self._docker.list_networks(filters={"label": [self._namespace_label, owners]})

    @property
    def _namespace_label(self) -> str:
        return f"{labels.NAMESPACE}={self._namespace}"


def _subnets(
    networks: Iterable[NetworkSummary],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    found = []
    for network in networks:
        for subnet in network.subnets:
            try:
                found.append(ipaddress.ip_network(subnet, strict=False))
            except ValueError:  # not an address Docker would give; nothing of ours to avoid
                continue
    return found

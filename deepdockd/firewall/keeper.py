"""Keeps the egress policy in the host's firewall while deepdockd runs.

At start the rules go in before the first request is served; a host where they cannot (no
iptables, not root) refuses to start with a line naming ``egress_policy``, since a daemon that
runs on silently without its boundary is worse than one that does not run. Every few seconds
one ``iptables -S`` shows whether our chains and jumps are still as we left them: an admin's
``iptables -F``, a firewall service's reload or a deleted rule removes them (dockerd 20.10's
restart keeps them), and they are put back, with a line in the log. The rules stay when
deepdockd stops (a daemon that is down must not open the boundary); ``deepdockd firewall
remove`` takes them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from deepdockd.background import cancel_and_wait
from deepdockd.config import Config
from deepdockd.errors import ApiError
from deepdockd.firewall.iptables import Iptables, IptablesError
from deepdockd.firewall.rules import DOCKER_USER, Policy, jumps, ours, removals, restore_text

log = logging.getLogger(__name__)

# How often the rules are looked at: a gap of at most this long after dockerd's restart or an
# admin's flush. One `iptables -S` costs a few milliseconds.
CHECK_INTERVAL_S = 5.0
# Where the host's resolvers are written: Docker's embedded DNS forwards each container's
# queries to them (systemd-resolved's own file when the first names only its 127.0.0.53 stub,
# as Docker reads it then).
RESOLV_CONFS = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))

DefaultBridge = Callable[[], Awaitable[Sequence[str]]]


class FirewallUnavailable(Exception):
    """The policy is on and cannot be put in place; ``str()`` is one line naming the setting."""


def resolvers(paths: Iterable[Path] = RESOLV_CONFS) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 name servers of the files (loopback ones, which no container reaches, left
    out), in order, once each."""
    found: dict[ipaddress.IPv4Address, None] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] != ["nameserver"] or len(words) < 2:
                    continue
                with contextlib.suppress(ValueError):
                    address = ipaddress.ip_address(words[1])
                    if isinstance(address, ipaddress.IPv4Address) and not address.is_loopback:
                        found[address] = None
    return tuple(found)


class EgressFirewall:
    """The namespace's egress policy. ``default_bridge`` gives the subnets of Docker's default
    bridge, where containers sit when network isolation is off; ``iptables`` and
    ``resolv_confs`` are seams for tests."""

    def __init__(
        self,
        config: Config,
        *,
        default_bridge: DefaultBridge | None = None,
        iptables: Iptables | None = None,
        resolv_confs: Sequence[Path] = RESOLV_CONFS,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._config = config
        self._default_bridge = default_bridge if not config.network_isolation else None
        self._iptables = iptables or Iptables()
        self._resolv_confs = resolv_confs
        self._interval_s = interval_s
        self._bridge: tuple[ipaddress.IPv4Network, ...] = ()
        self._applied: tuple[str, tuple[str, ...]] | None = None  # restore text, our lines
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._config.egress_policy

    async def start(self) -> None:
        """Put the rules in place and start keeping them; FirewallUnavailable if they cannot
        be."""
        if not self.enabled:
            return
        policy = await self.policy()
        try:
            await self.apply(policy)
        except IptablesError as exc:
            raise FirewallUnavailable(
                f"egress_policy: cannot put the containers' egress rules in place ({exc}); "
                "run deepdockd as root on a host with iptables, or set egress_policy = false "
                "(DEEPDOCKD_EGRESS_POLICY=false) to run without them"
            ) from None
        log.info(
            "egress policy in place for %s (allowed: %s)",
            ", ".join(str(s) for s in policy.sources),
            ", ".join(_allowance(a) for a in self._config.egress_allow) or "nothing private",
        )
        self._task = asyncio.create_task(self._keep(), name="egress-firewall")

    async def stop(self) -> None:
        """Stop keeping the rules; they stay in place."""
        await cancel_and_wait(self._task)
        self._task = None

    async def policy(self) -> Policy:
        config = self._config
        if self._default_bridge is not None:
            with contextlib.suppress(ApiError):  # Docker down: the last subnets known
                self._bridge = _networks(await self._default_bridge()) or self._bridge
        return Policy(
            namespace=config.namespace,
            sources=(config.network_pool, *self._bridge),
            resolvers=resolvers(self._resolv_confs),
            allow=config.egress_allow,
        )

    async def apply(self, policy: Policy) -> None:
        """Our chains filled anew in one transaction, then the jumps to them put first in
        DOCKER-USER (made here when dockerd has not yet) and INPUT where they are missing."""
        iptables = self._iptables
        if not await iptables.has_chain(DOCKER_USER):
            with contextlib.suppress(IptablesError):  # made meanwhile by dockerd: as good
                await iptables.new_chain(DOCKER_USER)
        text = restore_text(policy)
        await iptables.restore(text)
        for hook, rule in jumps(policy.namespace):
            if not await iptables.has_rule(hook, rule):
                await iptables.insert_first(hook, rule)
        self._applied = (text, ours(await iptables.listing(), policy.namespace))

    async def check(self) -> bool:
        """Put the rules back if they are not as we left them (or the policy changed: a new
        resolver, Docker's bridge found); whether anything was done."""
        policy = await self.policy()
        text = restore_text(policy)
        in_place = ours(await self._iptables.listing(), policy.namespace)
        if self._applied == (text, in_place):
            return False
        await self.apply(policy)
        return True

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                if await self.check():
                    log.warning(
                        "the egress policy's rules were missing or out of date (the "
                        "firewall was flushed, reloaded or edited): put them back"
                    )
            except IptablesError as exc:
                log.error("cannot check or restore the egress policy's rules: %s", exc)


async def remove(namespace: str, *, iptables: Iptables | None = None) -> list[str]:
    """Take the namespace's jumps and chains out of the firewall; the changes made, as
    iptables arguments."""
    iptables = iptables or Iptables()
    done = []
    for arguments in removals(await iptables.listing(), namespace):
        await iptables.change(arguments)
        done.append(" ".join(arguments))
    return done


def _networks(subnets: Iterable[str]) -> tuple[ipaddress.IPv4Network, ...]:
    found = []
    for subnet in subnets:
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(subnet, strict=False)
            if isinstance(network, ipaddress.IPv4Network):
                found.append(network)
    return tuple(found)


def _allowance(allowance: tuple[ipaddress.IPv4Network, int | None]) -> str:
    network, port = allowance
    return f"{network}:{port}" if port is not None else str(network)

"""The egress policy as iptables rules: pure data and text, no I/O.

Two chains of our own per namespace, in the filter table, named from a digest of the namespace
(iptables allows 28 characters; a namespace may have 63):

- ``DEEPDOCKD-FWD-<digest>``, jumped to from Docker's ``DOCKER-USER`` chain (FORWARD: what a
  container sends through the host to elsewhere);
- ``DEEPDOCKD-IN-<digest>``, jumped to from ``INPUT`` (what a container sends to the host's
  own addresses: with Docker's userland proxy a container that connects to
  ``<host address>:<published port>`` is answered by docker-proxy on the host, never DNAT'd,
  so ``DOCKER-USER`` never sees it).

Both match only packets whose source is one of the containers' networks and either RETURN
(the packet goes on to Docker's own rules, which keep owners apart) or REJECT it, so a
connect fails at once instead of hanging. The jumps carry a comment naming the namespace, which
is how ``deepdockd firewall remove`` finds them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
from dataclasses import dataclass
from typing import NamedTuple

DOCKER_USER = "DOCKER-USER"
INPUT = "INPUT"
# Replies to connections the host or anyone else opened (deepdockd's SSH probe, the proxy, a
# user's SSH login) always pass.
REPLIES = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED")
# What a container may not reach unless egress_allow names it: link-local (169.254.169.254
# hands out a cloud VM's credentials), the private ranges of RFC 1918, shared address space
# (RFC 6598, carrier-grade NAT and many clouds' internal networks), IETF protocol assignments
# (RFC 6890) and the benchmarking range (RFC 2544, used inside some sites). The host's own
# addresses are refused whatever they are, by the INPUT chain.
BLOCKED = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "169.254.0.0/16",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "198.18.0.0/15",
    )
)
DNS_PORT = 53

Allowance = tuple[ipaddress.IPv4Network, int | None]


class Chains(NamedTuple):
    forward: str
    input: str


@dataclass(frozen=True)
class Policy:
    """What the rules are made from. ``sources``: the containers' networks (network_pool, and
    Docker's default bridge where containers sit on it); traffic between two of them is left
    to Docker. ``resolvers``: the host's DNS servers, which Docker's embedded DNS asks from
    inside each container's network namespace. ``allow``: egress_allow's networks and
    ports."""

    namespace: str
    sources: tuple[ipaddress.IPv4Network, ...]
    resolvers: tuple[ipaddress.IPv4Address, ...] = ()
    allow: tuple[Allowance, ...] = ()


def chain_names(namespace: str) -> Chains:
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:10]
    return Chains(forward=f"DEEPDOCKD-FWD-{digest}", input=f"DEEPDOCKD-IN-{digest}")


def jump_comment(namespace: str) -> str:
    # A namespace is [a-z0-9][a-z0-9_.-]*: no quoting needed, and at most 80 characters of
    # the 256 a comment may have.
    return f"deepdockd-egress:{namespace}"


def jumps(namespace: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(hook chain, rule arguments) of the two jumps into our chains."""
    chains = chain_names(namespace)
    comment = ("-m", "comment", "--comment", jump_comment(namespace))
    return (
        (DOCKER_USER, (*comment, "-j", chains.forward)),
        (INPUT, (*comment, "-j", chains.input)),
    )


def restore_text(policy: Policy) -> str:
    """Input for ``iptables-restore --noflush``: our two chains made if absent, emptied and
    filled in one transaction, so no packet ever sees them half-written."""
    chains = chain_names(policy.namespace)
    lines = ["*filter", f":{chains.forward} - [0:0]", f":{chains.input} - [0:0]"]
    lines += [f"-F {chains.forward}", f"-F {chains.input}"]
    for source in policy.sources:
        lines += [_rule(chains.forward, source, rule) for rule in _forward_rules(policy)]
        lines += [_rule(chains.input, source, rule) for rule in _input_rules(policy)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _rule(chain: str, source: ipaddress.IPv4Network, rule: tuple[str, ...]) -> str:
    return shlex.join(("-A", chain, "-s", str(source), *rule))


def _forward_rules(policy: Policy) -> list[tuple[str, ...]]:
    rules: list[tuple[str, ...]] = [(*REPLIES, "-j", "RETURN")]
    # A published port reached through a host address and DNAT'd (Docker without its
    # userland proxy, where hairpin NAT replaces docker-proxy): another container's port
    # through the host's addresses, which Docker's isolation would not always catch.
    rules += _reject(("-m", "conntrack", "--ctstate", "DNAT"))
    # Between the containers' networks: Docker's isolation rules decide (same network passes,
    # two owners' networks are dropped).
    rules += [("-d", str(network), "-j", "RETURN") for network in policy.sources]
    rules += _opened(policy)
    for network in BLOCKED:
        rules += _reject(("-d", str(network)))
    return rules


def _input_rules(policy: Policy) -> list[tuple[str, ...]]:
    # To the host itself: nothing but replies, DNS and what egress_allow opens.
    return [(*REPLIES, "-j", "RETURN"), *_opened(policy), *_reject(())]


def _opened(policy: Policy) -> list[tuple[str, ...]]:
    rules: list[tuple[str, ...]] = []
    for resolver in policy.resolvers:
        for protocol in ("udp", "tcp"):
            rules.append(
                ("-d", f"{resolver}/32", "-p", protocol, "--dport", str(DNS_PORT), "-j", "RETURN")
            )
    for network, port in policy.allow:
        if port is None:
            rules.append(("-d", str(network), "-j", "RETURN"))
            continue
        for protocol in ("tcp", "udp"):
            rules.append(("-d", str(network), "-p", protocol, "--dport", str(port), "-j", "RETURN"))
    return rules


def _reject(match: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Refused at once: a reset for TCP, port-unreachable for the rest."""
    return [
        (*match, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"),
        (*match, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"),
    ]


def ours(listing: str, namespace: str) -> tuple[str, ...]:
    """The lines of ``iptables -S`` (the filter table) that make up the namespace's policy:
    our chains, their rules and the jumps to them. Two listings with the same lines are the
    same policy in place."""
    chains = set(chain_names(namespace))
    return tuple(line for line in listing.splitlines() if chains & set(_words(line)))


def removals(listing: str, namespace: str) -> list[tuple[str, ...]]:
    """The iptables arguments that take the namespace's policy out of a host whose filter
    table ``iptables -S`` printed as ``listing``: every jump to our chains (wherever it is),
    then the chains themselves, emptied and deleted."""
    chains = list(chain_names(namespace))
    commands: list[tuple[str, ...]] = []
    present = []
    for line in listing.splitlines():
        words = _words(line)
        if words[:1] == ["-N"] and words[1:2] and words[1] in chains:
            present.append(words[1])
        elif words[:1] == ["-A"] and words[1] not in chains and _target(words) in chains:
            commands.append(("-D", *words[1:]))
    for chain in present:
        commands.append(("-F", chain))
    for chain in present:
        commands.append(("-X", chain))
    return commands


def _target(words: list[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in words[:-1]:
            return words[words.index(flag) + 1]
    return None


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # a comment of someone else's with an odd quote: not ours
        return line.split()

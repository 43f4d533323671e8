"""Which registries a pull may reach.

The Docker engine pulls from the host, so a reference's registry is a place on the host's own
network: without a rule, ``127.0.0.1:22000/x:1`` makes Docker knock on a port of the host and
report what answered, and pulls become a port scanner of the host and its private networks. A
registry is allowed when it is public (Docker Hub, an address on the internet, a name whose
every address is one), or when the admin listed it in ``allowed_registries``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

from deepdockd.errors import InvalidInput
from deepdockd.references import ImageReference

log = logging.getLogger(__name__)

# What a reference without a registry host pulls from.
DOCKER_HUB = "docker.io"
RULE = "pulls from private, loopback and link-local registries need it listed in allowed_registries"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# A host name -> the addresses it resolves to; OSError when it resolves to none.
Resolve = Callable[[str], Awaitable[list[str]]]


class RegistryNotAllowed(InvalidInput):
    code = "registry_not_allowed"


def registry_host(reference: ImageReference) -> str:
    """The registry a pull of ``reference`` asks, as people name it."""
    return reference.domain or DOCKER_HUB


def split_host_port(registry: str) -> tuple[str, str | None]:
    """``("::1", "5000")`` of ``[::1]:5000``, ``("registry.lab", None)`` of ``registry.lab``."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        return host, rest.removeprefix(":") or None
    host, colon, port = registry.partition(":")
    return host, port if colon else None


def registry_key(registry: str) -> str:
    """``registry`` in one spelling, to compare: lower case, an IP address in its canonical
    form. The port stays as written: Docker names ``host`` and ``host:443`` apart too."""
    host, port = split_host_port(registry.lower())
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        host = f"[{address}]" if address.version == 6 else str(address)
    return host if port is None else f"{host}:{port}"


def address_kind(address: Address) -> str | None:
    """Why a pull must not go to ``address`` without the admin's word ("a loopback address"),
    or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 to the kernel
    if address.is_unspecified:  # 0.0.0.0 and :: reach this host
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:  # 169.254.169.254: a cloud's metadata service
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:  # 100.64.0.0/10, shared address space
        return "an address that is not public"
    return None


async def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to, as the host's resolver says (in the loop's
    executor: getaddrinfo blocks)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class RegistryReach:
    """The rule for every pull: a public registry, or one listed in ``allowed``."""

    def __init__(self, allowed: Iterable[str] = (), *, resolve: Resolve = resolve_host) -> None:
        self._allowed = frozenset(registry_key(registry) for registry in allowed)
        self._resolve = resolve

    async def check(self, reference: ImageReference, *, field: str) -> None:
        """Raise :class:`RegistryNotAllowed` unless a pull of ``reference`` may go to its
        registry. A name is resolved now, for this pull; one that does not resolve is left to
        Docker, which will say the registry cannot be reached."""
        registry = reference.domain
        if registry is None or registry_key(registry) in self._allowed:
            return
        why = await self._why_not_public(split_host_port(registry.lower())[0])
        if why is not None:
            log.info("refused a pull of %s: its registry %s", reference, why)
            raise RegistryNotAllowed(
                f"registry {registry} {why}; {RULE}",
                details={"field": field, "registry": registry},
            )

    async def _why_not_public(self, host: str) -> str | None:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            kind = address_kind(literal)
            return None if kind is None else f"is {kind}"
        if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
            return "is a loopback address"
        try:
            addresses = await self._resolve(host)
        except (OSError, UnicodeError):  # no such host (or a name the resolver cannot encode)
            return None
        for text in addresses:
            try:
                kind = address_kind(ipaddress.ip_address(text))
            except ValueError:
                kind = "an address that is not public"
            if kind is not None:
                return f"resolves to {text}, {kind}"
        return None

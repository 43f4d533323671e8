"""Docker image references, parsed by the grammar of Docker's own ``distribution/reference``
package, so that what Docker would refuse is refused here first, with a clear message.

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# From github.com/distribution/reference (regexp.go).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_IMAGE_ID_RE = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}")

# Docker's limit on the length of a repository name.
NAME_MAX_LENGTH = 255
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class ImageReference:
    domain: str | None  # None: Docker Hub
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        """The reference as Docker pulls it: with ``:latest`` when neither a tag nor a digest
        was given (a pull without a tag never means every tag)."""
        text = self.repository
        if self.tag or not self.digest:
            text += ":" + (self.tag or DEFAULT_TAG)
        if self.digest:
            text += "@" + self.digest
        return text


def parse_reference(text: str) -> ImageReference:
    """Parse ``text`` or raise ValueError saying what in it Docker would not accept."""
    if not text:
        raise ValueError("is empty")
    if any(c.isspace() for c in text):
        raise ValueError("must not contain white space")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"has a malformed digest {digest!r} (expected ALGORITHM:HEX)")
    name, tag = rest, None
    last_colon = rest.rfind(":")
    if last_colon > rest.rfind("/"):  # a colon after the last slash starts a tag
        name, tag = rest[:last_colon], rest[last_colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(
                f"has an invalid tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)"
            )
    domain, path = _split_domain(name)
    if domain is not None and not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"has an invalid registry host {domain!r}")
    if not _PATH_RE.fullmatch(path):
        raise ValueError(
            f"has an invalid repository name {path!r} (lower-case letters, digits and "
            "separators '.', '_', '-', in components joined by '/')"
        )
    if len(name) > NAME_MAX_LENGTH:
        raise ValueError(f"has a repository name longer than {NAME_MAX_LENGTH} characters")
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest or None)


def _split_domain(name: str) -> tuple[str | None, str]:
    # Docker's rule: the first component is a registry host when it has a '.' or a ':', is
    # "localhost", or has an upper-case letter.
    first, slash, rest = name.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost" or first != first.lower()):
        return first, rest
    return None, name


def is_registry_host(text: str) -> bool:
    """Whether ``text`` is a registry host as a reference names it: ``host`` or ``host:port``,
    the host a name, an IPv4 address or a bracketed IPv6 address."""
    return bool(_DOMAIN_RE.fullmatch(text))


def looks_like_image_id(text: str) -> bool:
    """A short (12+) or full hex image id, with or without ``sha256:``."""
    return bool(_IMAGE_ID_RE.fullmatch(text))

"""The dashboard's files, read from the installed package once and kept in memory (a few
tens of KiB), each with its type and an ETag."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# The page may load and call this daemon only: no CDN, no other host, no inline script (a
# name or a command line that got into the page as markup could not run), and no string
# may become HTML or script at all (Trusted Types with no policy: the page never needs one).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none';"
        " require-trusted-types-for 'script'; trusted-types 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (the ETag answers 304), so an upgrade shows at once.
    "Cache-Control": "no-cache",
}

PAGE = "index.html"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def asset(name: str) -> Asset | None:
    """The file of that name in static/, or None for any other name (looked up among the
    files listed, so no name reaches the file system). Blocking on the first call."""
    return _load(name) if name in _files() else None


@functools.cache
def _files() -> frozenset[str]:
    return frozenset(
        entry.name
        for entry in _STATIC.iterdir()
        if entry.is_file() and _suffix(entry.name) in TYPES
    )


@functools.cache
def _load(name: str) -> Asset:
    body = _STATIC.joinpath(name).read_bytes()
    etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
    return Asset(body, TYPES[_suffix(name)], etag)


def _suffix(name: str) -> str:
    return name[name.rfind(".") :] if "." in name else ""


_STATIC = resources.files("deepdockd.dashboard").joinpath("static")

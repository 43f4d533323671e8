"""The ``key=value`` form (logfmt) of the daemon's field lines: the audit line and the access
line. A value that holds a space, a quote, a backslash, an ``=`` or a character that is not
printable is written in double quotes, with ``"`` and ``\\`` escaped and every unprintable
character written as Python writes it (``\\n``, ``\\x1b``, ``\\u2028``): so no value can end
its field and start another, and no line can end early. Log tools read it as it is (Loki's
``| logfmt``, lnav, hl; go-logfmt's grammar)."""

from __future__ import annotations

from collections.abc import Mapping

_SPECIAL = frozenset(' ="\\')


def logfmt(fields: Mapping[str, object]) -> str:
    """``key=value`` for each field, in order; the keys are the caller's own words."""
    return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())


def logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in _SPECIAL or not c.isprintable() for c in text):
        return text
    return '"' + "".join(_escaped(c) for c in text) + '"'


def _escaped(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if c == " " or c.isprintable():
        return c
    return ascii(c)[1:-1]  # "\n", "\x1b", "\u2028"

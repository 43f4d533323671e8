"""What people type for sizes and durations: ``32g``, ``512m``, ``24h``, ``90m``, ``2d``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_MIB_PER = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_HOURS_PER = {"s": 1 / 3600, "m": 1 / 60, "": 1, "h": 1, "d": 24, "w": 168}


def mebibytes(text: str) -> int:
    """``32g`` -> 32768; a bare number is MiB."""
    found = _SIZE.fullmatch(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a size: write it as 512m, 32g or 1t (MiB when bare)")
    return max(1, round(float(found[1]) * _MIB_PER[found[2].lower()]))


def hours(text: str) -> float:
    """``24h`` -> 24, ``90m`` -> 1.5, ``2d`` -> 48; a bare number is hours."""
    found = _DURATION.fullmatch(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a duration: write it as 90m, 24h, 2d or 1w")
    return float(found[1]) * _HOURS_PER[found[2].lower()]

"""What the config's ``[quotas]`` table says each user may hold, parsed; fairshare/quotas.py
counts use against it."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from deepdockd.tokens import USER_NAME


@dataclass(frozen=True)
class QuotaLimits:
    """One user's limits; 0: none."""

    max_gpus: int = 0  # GPUs held by their running containers, all together
    max_containers: int = 0  # containers they have, running or not
    max_memory_mb: int = 0  # memory limits of their running containers, summed
    max_cpus: float = 0.0  # CPU limits of their running containers, summed
    max_service_ports: int = 0  # host ports of their containers' "ports", running or not
    # GiB of disk: their containers' writable layers and their home volumes, as last measured
    max_disk_gb: float = 0.0

    def as_answer(self) -> dict[str, float | int | None]:
        """Each limit, None where there is none."""
        return {f.name: getattr(self, f.name) or None for f in fields(self)}


UNLIMITED = QuotaLimits()
# Every user's caps when the config has no [quotas] table, or one that names neither key: one
# user cannot take all of the SSH and service port ranges (1,000 each) from the others. An
# admin lifts either with 0 (docs/fair-share.md#sharing-safely).
DEFAULT_LIMITS = QuotaLimits(max_containers=20, max_service_ports=20)


@dataclass(frozen=True)
class Quotas:
    defaults: QuotaLimits = DEFAULT_LIMITS
    # (user, the keys their table names) sorted by user; a tuple keeps Config hashable.
    users: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    def limits_for(self, user: str, *, is_admin: bool) -> QuotaLimits:
        own = dict(self.users).get(user)
        if own is None:
            return UNLIMITED if is_admin else self.defaults
        base = UNLIMITED if is_admin else self.defaults
        changes: dict[str, Any] = dict(own)
        return replace(base, **changes)


# No [quotas] table: every user (not an admin) has the DEFAULT_LIMITS caps.
NO_QUOTAS = Quotas()


_WHOLE = {"max_gpus", "max_containers", "max_memory_mb", "max_service_ports"}
_KEYS = [f.name for f in fields(QuotaLimits)]


def parse_quotas(raw: object) -> Quotas:
    """The ``[quotas]`` table (a dict from the file; from the environment, a TOML inline
    table such as ``{max_gpus = 2, users = {alice = {max_gpus = 4}}}``)."""
    if isinstance(raw, str):
        try:
            raw = tomllib.loads(f"quotas = {raw}")["quotas"]
        except tomllib.TOMLDecodeError:
            raw = None
    if not isinstance(raw, dict):
        raise ValueError(
            "must be a table: [quotas] in the config file, or an inline table such as "
            "{max_gpus = 2, users = {alice = {max_gpus = 4}}} in the environment"
        )
    table = dict(raw)
    users = table.pop("users", {})
    defaults = replace(DEFAULT_LIMITS, **_limits(table, "quotas"))
    if not isinstance(users, dict):
        raise ValueError("sets quotas.users to a value: it must be a table of tables, one per user")
    per_user = []
    for user, own in sorted(users.items()):
        if not USER_NAME.fullmatch(user):
            raise ValueError(f"names quotas.users.{user!r}, which is not a user name")
        if not isinstance(own, dict):
            raise ValueError(f"sets quotas.users.{user} to a value: it must be a table")
        per_user.append((user, tuple(sorted(_limits(own, f"quotas.users.{user}").items()))))
    return Quotas(defaults, tuple(per_user))


def _limits(table: Mapping[str, object], where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ValueError(f"names an unknown key {where}.{unknown[0]} (known: {', '.join(_KEYS)})")
    limits: dict[str, Any] = {}
    for key, value in table.items():
        whole = key in _WHOLE
        if (
            isinstance(value, bool)
            or not isinstance(value, int if whole else int | float)
            or not 0 <= value <= 16 * 1024 * 1024
        ):
            kind = "a whole number" if whole else "a number"
            raise ValueError(
                f"sets {where}.{key} to {value!r}: it must be {kind} from 0 (no limit) up"
            )
        limits[key] = value if whole else float(value)
    return limits

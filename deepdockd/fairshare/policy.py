"""The fair-share settings in force: read from the config at start, replaced whole when the
config is reloaded (SIGHUP), so that a limit an admin raises applies to the next request."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from deepdockd.config import Config
from deepdockd.quota_settings import NO_QUOTAS, Quotas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    quotas: Quotas = NO_QUOTAS
    default_lease_hours: float = 0.0  # 0: no lease unless asked
    max_lease_hours: float = 0.0  # 0: no ceiling
    idle_gpu_minutes: float = 0.0  # 0: no idle reclaim
    idle_gpu_utilization: float = 5.0  # percent
    stop_warning_minutes: float = 10.0

    @classmethod
    def of(cls, config: Config) -> Policy:
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


class PolicyHolder:
    def __init__(self, config: Config) -> None:
        self.current = Policy.of(config)

    def replace(self, config: Config) -> list[str]:
        """Take the fair-share settings of ``config``; the names of those that changed."""
        new = Policy.of(config)
        changed = [
            f.name
            for f in dataclasses.fields(Policy)
            if getattr(new, f.name) != getattr(self.current, f.name)
        ]
        self.current = new
        return changed

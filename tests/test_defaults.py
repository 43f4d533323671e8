"""Defaults that share (issue 30), without Docker: the limits a create gets from a config that
says nothing (a memory limit, /dev/shm inside it, pids), and the per-user caps on containers
and service ports that hold with no [quotas] table; an admin lifts each with a 0. The rig's
tests of the same (Docker's view, a write into /dev/shm, a refused create) are in
test_workspaces.py and test_fair_share.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from deepdockd import labels
from deepdockd.config import Config, ConfigError, load_config
from deepdockd.containers.resources import (
    MAX_DEFAULT_SHM_MB,
    default_memory_mb,
    resources_for,
)
from deepdockd.docker import ContainerSummary
from deepdockd.errors import InvalidInput
from deepdockd.fairshare.quotas import Ask, QuotaExceeded, check_quota, usage_of
from deepdockd.host import ram_total_mib
from deepdockd.quota_settings import DEFAULT_LIMITS, QuotaLimits, parse_quotas

ABSENT = Path("/nonexistent/deepdockd.toml")


def shipped(**settings: object) -> Config:
    """The config a fresh install runs with (nothing in the file), changed by ``settings``
    as a config file would give them."""
    environ = {f"DEEPDOCKD_{key.upper()}": str(value) for key, value in settings.items()}
    return load_config({}, environ, default_file=ABSENT)


# --- memory, /dev/shm, processes ---


def test_a_create_that_asks_nothing_gets_a_quarter_of_the_ram_and_shm_inside_it() -> None:
    got = resources_for(shipped(), shm_size_mb=None, memory_mb=None, cpus=None)

    assert got.memory_mb == default_memory_mb() == ram_total_mib() // 4
    assert got.shm_size_mb == got.memory_mb // 2
    assert got.pids_limit == 16384


def test_shm_is_never_more_than_the_memory_limit() -> None:
    config = shipped()
    with pytest.raises(InvalidInput, match="shm_size_mb: 1024 is above this container's memory"):
        resources_for(config, shm_size_mb=1024, memory_mb=512, cpus=None)
    assert resources_for(config, shm_size_mb=512, memory_mb=512, cpus=None).shm_size_mb == 512
    # An admin's default /dev/shm larger than a small container's memory is cut to fit.
    big_shm = shipped(default_shm_size_mb=4096)
    assert resources_for(big_shm, shm_size_mb=None, memory_mb=256, cpus=None).shm_size_mb == 256


def test_an_admin_lifts_the_memory_limit_with_0() -> None:
    config = shipped(default_memory_mb=0)
    got = resources_for(config, shm_size_mb=None, memory_mb=None, cpus=None)

    assert got.memory_mb is None
    assert got.shm_size_mb == min(ram_total_mib() // 2, MAX_DEFAULT_SHM_MB)


def test_the_default_memory_stays_under_the_ceiling() -> None:
    config = shipped(max_memory_mb=1024)
    assert resources_for(config, shm_size_mb=None, memory_mb=None, cpus=None).memory_mb == 1024
    with pytest.raises(ConfigError, match="default_memory_mb: 2048 MiB is above max_memory_mb"):
        shipped(max_memory_mb=1024, default_memory_mb=2048)
    assert shipped(default_memory_mb="auto") == Config()
    with pytest.raises(ConfigError, match="default_memory_mb"):
        shipped(default_memory_mb="half")


# --- per-user caps with no [quotas] table ---


def holder(name: str, owner: str, ports: dict[int, int]) -> ContainerSummary:
    return ContainerSummary(
        id=name, name=name, image="", image_id="", state="exited", published={},
        labels={labels.OWNER: owner, labels.PORTS: labels.format_ports(ports)},
    )  # fmt: skip


def test_without_quotas_a_user_has_caps_on_containers_and_service_ports() -> None:
    limits = Config().quotas.limits_for("alice", is_admin=False)
    assert limits == DEFAULT_LIMITS
    assert (limits.max_containers, limits.max_service_ports) == (20, 20)
    # An admin is not capped; a [quotas] table that names other keys keeps the caps.
    assert Config().quotas.limits_for("admin", is_admin=True) == QuotaLimits()
    assert parse_quotas({"max_gpus": 2}).limits_for("bob", is_admin=False) == replace(
        DEFAULT_LIMITS, max_gpus=2
    )


def test_service_ports_are_counted_and_the_cap_names_itself() -> None:
    held = [
        holder("a1", "alice", {8888 + i: 23000 + i for i in range(16)}),
        holder("b1", "bob", {1: 2}),
    ]
    use = usage_of("alice", held)
    assert use.service_ports == 16
    check_quota("alice", DEFAULT_LIMITS, use, Ask(0, 1, 512, None, service_ports=4))
    with pytest.raises(QuotaExceeded, match="alice's max_service_ports is 20; alice holds 16"):
        check_quota("alice", DEFAULT_LIMITS, use, Ask(0, 1, 512, None, service_ports=5))
    lifted = parse_quotas({"max_service_ports": 0, "max_containers": 0})
    check_quota("alice", lifted.limits_for("alice", is_admin=False), use, Ask(0, 1, 512, None, 16))

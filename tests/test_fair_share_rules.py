"""Fair share's rules on their own (no Docker): the [quotas] table, who is limited by what,
use counted from labels and reservations, the idle clock's runs of samples, lease ceilings,
and a records file that cannot be read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from deepdockd import labels
from deepdockd.config import Config, ConfigError, load_config
from deepdockd.containers.allocation import Gpu, Reservation
from deepdockd.docker import ContainerSummary
from deepdockd.errors import InvalidInput
from deepdockd.fairshare.idle import IdleClock
from deepdockd.fairshare.leases import lease_hours_for
from deepdockd.fairshare.policy import Policy, PolicyHolder
from deepdockd.fairshare.quotas import Ask, QuotaExceeded, check_quota, usage_of
from deepdockd.fairshare.records import ContainerRecords, Lease, RecordsUnreadable
from deepdockd.gpu.nvml import GpuInfo, GpuProcess, GpuReading, MigSlice
from deepdockd.gpu.sampler import GpuStatus, ProcessSnapshot
from deepdockd.quota_settings import QuotaLimits, parse_quotas

ABSENT = Path("/nonexistent/deepdockd.toml")


def from_file(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "deepdockd.toml"
    path.write_text(text)
    return load_config({"config": str(path)}, {}, default_file=ABSENT)


# --- the [quotas] table ---


def test_a_users_table_changes_only_the_keys_it_names(tmp_path: Path) -> None:
    config = from_file(
        tmp_path,
        "[quotas]\nmax_gpus = 2\nmax_containers = 4\n"
        "[quotas.users.alice]\nmax_gpus = 4\n[quotas.users.root]\nmax_cpus = 8\n",
    )
    quotas = config.quotas

    # max_service_ports, left out, keeps its default cap (issue 30).
    assert quotas.limits_for("alice", is_admin=False) == QuotaLimits(4, 4, 0, 0, 20)
    assert quotas.limits_for("bob", is_admin=False) == QuotaLimits(2, 4, 0, 0, 20)
    # Admins: unlimited, unless a table of their own names limits (then only those).
    assert quotas.limits_for("admin", is_admin=True) == QuotaLimits()
    assert quotas.limits_for("root", is_admin=True) == QuotaLimits(max_cpus=8.0)


def test_the_environment_takes_an_inline_table() -> None:
    config = load_config(
        {}, {"DEEPDOCKD_QUOTAS": "{max_gpus = 1, users = {alice = {max_gpus = 3}}}"},
        default_file=ABSENT,
    )  # fmt: skip
    assert config.quotas.limits_for("alice", is_admin=False).max_gpus == 3


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[quotas]\nmax_gpu = 2\n", "names an unknown key quotas.max_gpu (known: max_gpus,"),
        ("[quotas]\nmax_gpus = -1\n", "sets quotas.max_gpus to -1: it must be a whole number"),
        ("[quotas]\nmax_gpus = 1.5\n", "sets quotas.max_gpus to 1.5: it must be a whole number"),
        ("[quotas.users.Alice]\nmax_gpus = 1\n", "names quotas.users.'Alice', which is not a"),
        ("[quotas.users]\nalice = 3\n", "sets quotas.users.alice to a value: it must be a table"),
        ("quotas = 3\n", "must be a table: [quotas] in the config file"),
    ],
)
def test_a_bad_quota_table_is_refused_naming_the_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        from_file(tmp_path, toml)
    assert str(caught.value).startswith("quotas: ")
    assert message in str(caught.value)


def test_leases_under_a_ceiling_need_a_default_within_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        from_file(tmp_path, "max_lease_hours = 24\n")
    assert str(caught.value).startswith("default_lease_hours: 0 is not within max_lease_hours")
    assert from_file(tmp_path, "max_lease_hours = 24\ndefault_lease_hours = 8\n").max_lease_hours


def test_a_reload_replaces_the_fair_share_settings_and_names_the_changed_ones() -> None:
    holder = PolicyHolder(Config())
    changed = holder.replace(Config(idle_gpu_minutes=30, quotas=parse_quotas({"max_gpus": 1})))
    assert changed == ["quotas", "idle_gpu_minutes"]
    assert holder.current.quotas.limits_for("bob", is_admin=False).max_gpus == 1
    assert holder.replace(Config(idle_gpu_minutes=30, quotas=parse_quotas({"max_gpus": 1}))) == []


# --- use and limits ---


def container(
    name: str, owner: str, state: str, *, gpus: str = "", memory: str = "", cpus: str = ""
) -> ContainerSummary:
    return ContainerSummary(
        id=f"id-{name}", name=name, image="", image_id="", state=state, published={},
        labels={labels.OWNER: owner, labels.GPU_INDICES: gpus, labels.MEMORY_MB: memory,
                labels.CPUS: cpus},
    )  # fmt: skip


def test_use_counts_running_containers_and_a_reservation_once() -> None:
    containers = [
        container("a", "alice", "running", gpus="0,1", memory="1024", cpus="2"),
        container("b", "alice", "exited", gpus="2", memory="512", cpus="1"),
        container("c", "bob", "running", gpus="3", memory="64", cpus="1"),
        # A create in flight: Docker has made it ("created"), its reservation says running.
        container("d", "alice", "created", gpus="4", memory="256", cpus="0.5"),
        Reservation("d", "alice", 22001, (Gpu(4, None),), memory_mb=256, cpus=0.5).as_holder(),
    ]

    use = usage_of("alice", containers)

    assert (use.gpus, use.containers, use.memory_mb, use.cpus) == (3, 3, 1280, 2.5)
    assert use.running == ("a", "d")
    assert use.all == ("a", "b", "d")
    # A start asks about its own container: it is left out of the use.
    assert usage_of("alice", containers, exclude_name="a").gpus == 1


def test_the_refusal_names_the_limit_the_use_and_what_to_stop() -> None:
    use = usage_of("alice", [container("a", "alice", "running", gpus="0,1", memory="8", cpus="1")])

    with pytest.raises(QuotaExceeded) as caught:
        check_quota("alice", QuotaLimits(max_gpus=2), use, Ask(1, 1, 8, 1))

    assert caught.value.status == 403
    assert caught.value.message == (
        "quota exceeded: alice's max_gpus is 2; alice holds 2 GPUs (a) and this asks for 1 "
        "more: stop one (POST /containers/NAME/stop), or ask an admin to raise it"
    )
    # A start (no new container) is not refused for max_containers, even above it.
    check_quota("alice", QuotaLimits(max_containers=1), use, Ask(0, 0, 8, 1))
    with pytest.raises(QuotaExceeded, match="max_containers is 1"):
        check_quota("alice", QuotaLimits(max_containers=1), use, Ask(0, 1, 8, 1))
    with pytest.raises(QuotaExceeded, match=r"max_cpus is 1\.5"):
        check_quota("alice", QuotaLimits(max_cpus=1.5), use, Ask(0, 1, 8, 0.75))
    check_quota("alice", QuotaLimits(max_cpus=1.5), use, Ask(0, 1, 8, 0.5))


def test_a_lease_above_the_ceiling_is_refused_naming_it() -> None:
    policy = Policy(default_lease_hours=8, max_lease_hours=24)
    assert lease_hours_for(None, policy) == 8
    assert lease_hours_for(0.5, policy) == 0.5
    for asked in (25, 0):
        with pytest.raises(InvalidInput, match=r"is above max_lease_hours \(24 hours\)"):
            lease_hours_for(asked, policy)
    assert lease_hours_for(None, Policy()) == 0  # no lease


# --- the idle clock ---


def status(index: int, utilization: float | None, error: str | None = None) -> GpuStatus:
    info = GpuInfo(index, f"GPU-{index}", "sim", None, None)
    reading = GpuReading(None, utilization, None, None, None, error=error)
    return GpuStatus(info, error, reading)


def test_idle_is_an_unbroken_run_of_samples_at_or_under_the_threshold() -> None:
    clock = IdleClock()
    samples = [(0.0, 3), (1.0, 5), (2.0, 0), (3.0, 40), (4.0, 0), (5.0, 1), (6.0, None)]
    seen = []
    for now, utilization in samples:
        clock.observe([status(0, utilization)], 5, now)
        seen.append(clock.idle_for(0, now, max_gap_s=5))
    # Busy at 3 s starts the run again; a sample without a reading (an error) breaks it.
    assert seen == [0.0, 1.0, 2.0, 0.0, 0.0, 1.0, 0.0]


def test_a_gap_in_the_samples_is_never_idle() -> None:
    clock = IdleClock()
    clock.observe([status(0, 0)], 5, 0.0)
    clock.observe([status(0, 0)], 5, 1.0)
    assert clock.idle_for(0, 3.0, max_gap_s=5) == 3.0
    assert clock.idle_for(0, 7.0, max_gap_s=5) == 0.0  # the sampler stopped: not idle
    assert clock.idle_for(1, 1.0, max_gap_s=5) == 0.0  # never sampled


def test_a_mig_slice_is_idle_while_no_process_runs_on_it() -> None:
    a100 = GpuInfo(
        1, "GPU-1", "sim", None, None, mig_mode=True,
        slices=(MigSlice(0, "MIG-0", "3g.40gb", None, 1, 0), MigSlice(1, "MIG-1", "3g.40gb", None, 2, 0)),
    )  # fmt: skip
    clock = IdleClock()

    def observe(now: float, processes: tuple[GpuProcess, ...] | None) -> None:
        snapshot = ProcessSnapshot(number=int(now) + 1, processes={1: processes}, origins={})
        clock.observe_slices(snapshot, [a100], now)

    observe(0.0, ())
    observe(1.0, (GpuProcess(pid=7, memory_used_mib=10, sm_utilization=0, mig_slice=1),))
    assert (clock.idle_for((1, 0), 1.0, max_gap_s=5), clock.idle_for((1, 1), 1.0, max_gap_s=5)) == (
        1.0, 0.0,
    )  # fmt: skip
    observe(2.0, None)  # the GPU's processes could not be listed: unknown, the run breaks
    observe(3.0, ())
    assert clock.idle_for((1, 0), 4.0, max_gap_s=5) == 1.0
    assert clock.idle_for((1, 1), 4.0, max_gap_s=5) == 1.0
    assert clock.idle_for(1, 4.0, max_gap_s=5) == 0.0  # the whole GPU is not what was sampled


# --- the records file ---


def test_an_unreadable_records_file_is_never_written_over(tmp_path: Path) -> None:
    records = ContainerRecords(tmp_path)
    ends = datetime(2026, 11, 28, 9, tzinfo=UTC)
    records.set_lease("c1", Lease(ends, datetime(2026, 11, 27, 9, tzinfo=UTC)))
    assert ContainerRecords(tmp_path).get("c1").lease == Lease(
        ends, datetime(2026, 11, 27, 9, tzinfo=UTC)
    )
    assert oct(records.path.stat().st_mode & 0o777) == "0o600"
    broken = records.path.read_text().replace("{", "[", 1)
    records.path.write_text(broken)

    assert not records.readable
    with pytest.raises(RecordsUnreadable, match="cannot be read: mend it"):
        records.warned("c1", ends)
    records.started("c1")
    records.forget("c1")
    assert records.path.read_text() == broken

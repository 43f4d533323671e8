"""Fair share on the rig: quotas under concurrent creates, leases that stop (never remove)
containers, across a SIGKILL of the daemon, idle-GPU reclaim judged from the simulated GPU's
samples, warnings on the user's terminals, and a config reload by SIGHUP.

No test waits on minutes: the configs give durations of seconds, as fractions of minutes and
hours."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.host import ram_total_mib
from deepdockd.quota_settings import parse_quotas
from deepdockd.tokens import TokenStore

from tests.support import users
from tests.support.api import ClientFactory
from tests.support.daemon import RunningDaemon, http_json
from tests.support.docker_state import clear_namespace
from tests.support.gpus import sim_gpu
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig
from tests.support.users import users_tokens

AUDIT = "deepdockd.audit"


class People(users.People):
    """The callers of a daemon (with auth off, everyone is the anonymous admin), and waits on
    what they see."""

    async def container(self, who: str, name: str) -> dict[str, Any]:
        status, answer = await self.call(who, "GET", f"/containers/{name}")
        assert status == 200, answer
        return dict(answer)

    async def until_status(
        self, who: str, name: str, status: str, deadline_s: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + deadline_s
        while True:
            container = await self.container(who, name)
            if container["status"] == status:
                return container
            assert time.monotonic() < deadline, f"{name} is still {container['status']}"
            await asyncio.sleep(0.2)


MakePeople = Callable[..., Awaitable[People]]


@pytest.fixture
async def fair(
    aiohttp_client: ClientFactory,
    config: Config,
    sim_gpus: Callable[..., Path],
    rig: Rig,
    ssh_ports: tuple[int, int],
    gpu_stem: str,
) -> Any:
    """Factory: a daemon with ``gpus`` simulated GPUs (their utilization samples given per
    GPU, else moving), auth on (admin, alice, bob) or off, and these config changes."""

    async def make(
        *, gpus: int = 1, utilization: dict[int, list[int]] | None = None, auth: bool = True,
        **changes: Any,
    ) -> People:  # fmt: skip
        utilization = utilization or {}
        sim_gpus(
            *(
                sim_gpu(i, stem=gpu_stem, **({"utilization": utilization[i]} if i in utilization else {}))
                for i in range(gpus)
            )
        )  # fmt: skip
        made = replace(config, auth=auth, ssh_port_range=ssh_ports, **changes)
        tokens = users_tokens(TokenStore(made.state_dir)) if auth else {}
        return People(await aiohttp_client(create_app(made)), tokens)

    yield make
    clear_namespace(rig, config.namespace)


def box(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw"} | extra


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def names_in(rig: Rig, namespace: str) -> list[str]:
    listed = rig.docker(
        "ps",
        "--all",
        "--filter",
        f"label=deepdockd.namespace={namespace}",
        "--format",
        "{{.Names}}",
    )
    return sorted(listed.split())


def docker_state(rig: Rig, name: str) -> str:
    return rig.docker("inspect", "--format", "{{.State.Status}}", name).strip()


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == AUDIT]


# --- quotas ---


async def test_ten_concurrent_creates_against_a_two_gpu_quota(
    fair: MakePeople, rig: Rig, namespace: str
) -> None:
    people = await fair(gpus=10, quotas=parse_quotas({"max_gpus": 2}))
    names = [unique(f"q{i}") for i in range(10)]

    answers = await asyncio.gather(
        *(
            people.call("alice", "POST", "/containers/create", box(name, gpu_ids=[i]))
            for i, name in enumerate(names)
        )
    )

    statuses = [status for status, _ in answers]
    assert sorted(statuses) == [201] * 2 + [403] * 8, answers
    made = sorted(name for name, (status, _) in zip(names, answers, strict=True) if status == 201)
    for status, answer in answers:
        if status == 403:
            assert answer["error"]["code"] == "quota_exceeded"
            message = answer["error"]["message"]
            assert "alice's max_gpus is 2; alice holds 2 GPUs" in message, message
            assert "stop one (POST /containers/NAME/stop)" in message
    # Nothing of the refused creates is left: no container, no port, no GPU.
    assert names_in(rig, namespace) == made
    listed = (await people.call("alice", "GET", "/containers"))[1]["containers"]
    assert len({c["ssh-port"] for c in listed}) == 2
    refused_gpus = [i for i, (status, _) in enumerate(answers) if status == 403]
    status, answer = await people.call(
        "bob", "POST", "/containers/create", box(unique("bob"), gpu_ids=[refused_gpus[0]])
    )
    assert status == 201, answer
    # The default memory limit counts (a quarter of the host's RAM); no CPU limit counts as
    # all the host's CPUs. Without a [quotas] key, the default caps (issue 30) hold.
    status, quota = await people.call("alice", "GET", "/quota")
    quota["used"].pop("disk_mb")  # as measured: tests/test_disk.py
    assert (status, quota) == (
        200,
        {
            "user": "alice",
            "limits": {"max_gpus": 2, "max_containers": 20, "max_memory_mb": None,
                       "max_cpus": None, "max_service_ports": 20, "max_disk_gb": None},
            "used": {"gpus": 2, "containers": 2, "memory_mb": 2 * (ram_total_mib() // 4),
                     "cpus": 2 * (os.cpu_count() or 1), "service_ports": 0},
            "caller": {"user": "alice", "role": "user"},
        },
    )  # fmt: skip

    # A stopped container whose start would pass the quota is refused too.
    first, second = made
    assert (await people.call("alice", "POST", f"/containers/{first}/stop"))[0] == 200
    third = unique("q-third")
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(third, gpu_ids=[refused_gpus[1]])
    )
    assert status == 201, answer
    status, answer = await people.call("alice", "POST", f"/containers/{first}/start")
    assert status == 403, answer
    assert answer["error"]["code"] == "quota_exceeded"
    assert answer["error"]["details"]["containers"] == sorted([second, third])
    assert docker_state(rig, first) == "exited"
    # Others see their own quota only; an admin sees anyone's.
    assert (await people.call("bob", "GET", "/quota?user=alice"))[0] == 403
    status, answer = await people.call("admin", "GET", "/quota?user=alice")
    assert (status, answer["used"]["gpus"]) == (200, 2)
    admins = (await people.call("admin", "GET", "/quota"))[1]
    assert admins["limits"]["max_gpus"] is None
    assert admins["caller"] == {"user": admins["user"], "role": "admin"}


async def test_memory_and_container_quotas_name_what_to_do(fair: MakePeople) -> None:
    people = await fair(
        gpus=0, quotas=parse_quotas({"max_containers": 2, "max_memory_mb": 512, "max_cpus": 1})
    )
    first = unique("m1")
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(first, memory_mb=384, cpus=0.5)
    )
    assert status == 201, answer

    # The default memory limit (a quarter of the host's RAM) is over 512 MiB.
    status, answer = await people.call("alice", "POST", "/containers/create", box(unique("m2")))
    assert status == 403, answer
    assert "max_memory_mb is 512" in answer["error"]["message"]
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(unique("m3"), memory_mb=256, cpus=0.25)
    )
    assert status == 403, answer
    assert answer["error"]["details"] == {
        "limit": "max_memory_mb", "allowed": 512, "used": 384, "requested": 256,
        "containers": [first],
    }  # fmt: skip
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(unique("m4"), memory_mb=128, cpus=0.5)
    )
    assert status == 201, answer
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(unique("m5"), memory_mb=6, cpus=0.01)
    )
    assert status == 403, answer
    assert answer["error"]["details"]["limit"] == "max_containers"
    assert "remove one (DELETE /containers/NAME)" in answer["error"]["message"]
    status, answer = await people.call("alice", "GET", "/quota")
    answer["used"].pop("disk_mb")  # as measured: tests/test_disk.py
    assert answer["used"] == {
        "gpus": 0, "containers": 2, "memory_mb": 512, "cpus": 1.0, "service_ports": 0,
    }  # fmt: skip


async def test_without_quotas_a_user_is_capped_at_20_containers_and_20_service_ports(
    fair: MakePeople,
    rig: Rig,
    namespace: str,
    aiohttp_client: ClientFactory,
    config: Config,
    ssh_ports: tuple[int, int],
) -> None:
    """Defaults that share (issue 30): with no [quotas] table a user may have 20 containers
    and 20 service ports, not the whole port ranges; the 21st is a 403 naming the cap, and an
    admin's config (0: none) lifts it."""
    people = await fair(gpus=0)
    names = [unique(f"cap{i}") for i in range(20)]
    first = box(names[0], ports=[8000 + i for i in range(16)])
    answers = await asyncio.gather(
        people.call("alice", "POST", "/containers/create", first),
        *(people.call("alice", "POST", "/containers/create", box(n)) for n in names[1:]),
    )
    assert [status for status, _ in answers] == [201] * 20, answers

    status, answer = await people.call("alice", "POST", "/containers/create", box(unique("cap20")))
    assert status == 403, answer
    assert answer["error"]["code"] == "quota_exceeded"
    assert answer["error"]["message"].startswith(
        "quota exceeded: alice's max_containers is 20; alice holds 20 containers"
    )
    assert answer["error"]["details"]["limit"] == "max_containers"
    status, answer = await people.call("alice", "GET", "/quota")
    assert (answer["limits"]["max_containers"], answer["limits"]["max_service_ports"]) == (20, 20)
    assert (answer["used"]["containers"], answer["used"]["service_ports"]) == (20, 16)
    # Bob is not held back by alice's containers; 5 more ports than alice's 16 are refused.
    status, answer = await people.call(
        "bob", "POST", "/containers/create", box(unique("bob"), ports=[9000])
    )
    assert status == 201, answer
    assert (await people.call("alice", "DELETE", f"/containers/{names[1]}?force=true"))[0] == 200
    status, answer = await people.call(
        "alice",
        "POST",
        "/containers/create",
        box(unique("ports"), ports=[9001, 9002, 9003, 9004, 9005]),
    )
    assert status == 403, answer
    assert (
        "alice's max_service_ports is 20; alice holds 16 service ports"
        in (answer["error"]["message"])
    )
    made = names_in(rig, namespace)
    assert len(made) == 20

    # The admin lifts both caps: [quotas] with 0 for none.
    # (A second daemon on the same state directory: the same users and tokens.)
    quotas = parse_quotas({"max_containers": 0, "max_service_ports": 0})
    lifted_config = replace(config, auth=True, ssh_port_range=ssh_ports, quotas=quotas)
    lifted = People(await aiohttp_client(create_app(lifted_config)), people.tokens)
    extra = unique("ports")
    status, answer = await lifted.call(
        "alice", "POST", "/containers/create", box(extra, ports=[9001, 9002, 9003, 9004, 9005])
    )
    assert status == 201, answer
    status, answer = await lifted.call("alice", "POST", "/containers/create", box(unique("cap21")))
    assert status == 201, answer
    assert len(names_in(rig, namespace)) == 22


async def test_a_create_refused_by_quota_leaves_nothing_behind(
    fair: MakePeople, rig: Rig, namespace: str
) -> None:
    people = await fair(gpus=1, quotas=parse_quotas({"max_containers": 1}))
    first = unique("kept")
    status, answer = await people.call("alice", "POST", "/containers/create", box(first))
    assert status == 201, answer

    def in_docker() -> dict[str, list[str]]:
        label = f"label=deepdockd.namespace={namespace}"
        return {
            kind: sorted(rig.docker(*command, "--filter", label).split())
            for kind, command in (
                ("containers", ["ps", "--all", "--format", "{{.Names}}"]),
                ("volumes", ["volume", "ls", "--quiet"]),
                ("networks", ["network", "ls", "--format", "{{.Name}}"]),
            )
        }

    before, volumes_before = in_docker(), (await people.call("alice", "GET", "/volumes"))[1]
    refusals = [
        await people.call(
            "alice", "POST", "/containers/create",
            box(unique("over"), user_name=f"u{i}", gpu_ids=[0]),
        )
        for i in range(2, 7)
    ]  # fmt: skip
    # A name that is taken is refused before anything is made too (bob has no network yet).
    taken = await people.call("bob", "POST", "/containers/create", box(first, user_name="u9"))

    assert [(s, a["error"]["code"]) for s, a in refusals] == [(403, "quota_exceeded")] * 5
    assert (taken[0], taken[1]["error"]["code"]) == (409, "conflict"), taken
    # No home volume, network or container was made, in Docker's own lists or the API's...
    assert in_docker() == before
    assert len(before["volumes"]) == 1
    assert await people.call("alice", "GET", "/volumes") == (200, volumes_before)
    assert await people.call("bob", "GET", "/volumes") == (200, {"volumes": []})
    # ... and no GPU or port is held: alice's use is her one container, and bob takes GPU 0.
    status, answer = await people.call("alice", "GET", "/quota")
    assert (answer["used"]["containers"], answer["used"]["gpus"]) == (1, 0)
    status, answer = await people.call(
        "bob", "POST", "/containers/create", box(unique("b"), gpu_ids=[0])
    )
    assert status == 201, answer


async def test_sighup_reloads_quotas_and_keeps_the_old_config_when_the_new_one_is_broken(
    rig_daemon: Callable[..., RunningDaemon],
    tmp_path: Path,
    namespace: str,
    ssh_ports: tuple[int, int],
    cleanup: None,
) -> None:
    config_file = tmp_path / "deepdockd.toml"
    settings = f'namespace = "{namespace}"\nssh_port_range = "{ssh_ports[0]}-{ssh_ports[1]}"\n'
    config_file.write_text(settings + "[quotas]\nmax_containers = 1\n")
    running = rig_daemon("--config", str(config_file), auth=True)
    token = TokenStore(running.state_dir).add("alice", "user")  # read at the next request

    def create(name: str) -> tuple[int, Any]:
        return http_json(
            "POST", f"{running.base}/containers/create", json_body=box(unique(name)),
            token=token, timeout_s=120,
        )  # fmt: skip

    assert create("r1")[0] == 201
    status, answer = create("r2")
    assert (status, answer["error"]["code"]) == (403, "quota_exceeded")

    # Broken: logged, and the quota read before stays.
    config_file.write_text(settings + "[quotas]\nmax_containers = -1\n")
    running.daemon.process.send_signal(signal.SIGHUP)
    wait_for_log(running, "config reload failed, keeping the config loaded before: quotas:")
    status, answer = create("r3")
    assert (status, answer["error"]["code"]) == (403, "quota_exceeded")

    config_file.write_text(settings + "log_max_file = 5\n[quotas]\nmax_containers = 2\n")
    running.daemon.process.send_signal(signal.SIGHUP)
    wait_for_log(running, "config reloaded: quotas changed")
    wait_for_log(running, "log_max_file changed, which takes effect only at the next restart")
    assert create("r4")[0] == 201
    assert running.daemon.process.poll() is None


def wait_for_log(running: RunningDaemon, text: str, deadline_s: float = 10) -> None:
    deadline = time.monotonic() + deadline_s
    while text not in running.daemon.log.read_text():
        assert time.monotonic() < deadline, f"not logged: {text}\n{running.daemon.log.read_text()}"
        time.sleep(0.05)


# --- leases ---


async def test_a_lease_stops_the_container_keeps_its_home_and_frees_its_gpu(
    fair: MakePeople, rig: Rig, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    people = await fair(gpus=1, default_lease_hours=1, max_lease_hours=1, stop_warning_minutes=0)
    name = unique("lease")
    asked = datetime.now(UTC)
    # The default lease, an hour: no create, however slow, outlasts it.
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(name, gpu_ids=[0])
    )
    answered = datetime.now(UTC)
    assert status == 201, answer
    made_to_end = datetime.fromisoformat(answer["expires_at"])
    hour = timedelta(hours=1)
    assert asked.replace(microsecond=0) + hour <= made_to_end <= answered + hour
    rig.docker("exec", "-u", "u1", name, "sh", "-c", "echo kept > /home/u1/notes.txt")
    # Its end is brought forward through the API, to a second from now, not waited out.
    status, answer = await people.call(
        "alice", "POST", f"/containers/{name}/extend", {"lease_hours": 1 / 3600}
    )
    assert status == 200, answer
    expires_at = answer["expires_at"]
    ends = datetime.fromisoformat(expires_at)

    stopped = await people.until_status("alice", name, "exited")

    assert datetime.now(UTC) >= ends
    assert stopped["stopped_reason"] == f"lease ended at {expires_at}"
    assert stopped["expires_at"] == expires_at
    assert names_in(rig, namespace) == [name]  # stopped, not removed
    volume = stopped["home_volume"]
    assert rig.docker("volume", "inspect", "--format", "{{.Name}}", volume).strip() == volume
    assert "kept" in rig.docker("cp", f"{name}:/home/u1/notes.txt", "-")
    assert (
        f'user=deepdockd action=stop target={name} outcome=stopped owner=alice reason="lease '
        f'ended at {expires_at}"' in audit_lines(caplog)
    )
    # Its GPU is free at once.
    status, answer = await people.call(
        "bob", "POST", "/containers/create", box(unique("bob"), gpu_ids=[0])
    )
    assert status == 201, answer

    # It starts again only once its lease is extended, within the ceiling.
    status, answer = await people.call("alice", "POST", f"/containers/{name}/start")
    assert (status, answer["error"]["code"]) == (409, "lease_expired")
    assert f"POST /containers/{name}/extend" in answer["error"]["message"]
    status, answer = await people.call(
        "alice", "POST", f"/containers/{name}/extend", {"lease_hours": 2}
    )
    assert status == 422, answer
    assert "max_lease_hours (1 hours)" in answer["error"]["message"]
    asked = datetime.now(UTC)
    status, answer = await people.call(
        "alice", "POST", f"/containers/{name}/extend", {"lease_hours": 0.5}
    )
    answered = datetime.now(UTC)
    assert status == 200, answer
    extended = datetime.fromisoformat(answer["expires_at"])
    half_hour = timedelta(minutes=30)
    assert asked.replace(microsecond=0) + half_hour <= extended <= answered + half_hour
    assert (await people.container("alice", name))["expires_at"] == answer["expires_at"]
    # Now the GPU is bob's: the start meets that, not the lease.
    status, answer = await people.call("alice", "POST", f"/containers/{name}/start")
    assert (status, answer["error"]["code"]) == (409, "gpu_busy")
    assert (await people.call("bob", "POST", f"/containers/{name}/extend", {"lease_hours": 1}))[
        0
    ] == 404


async def test_lease_and_exemption_requests_are_checked(fair: MakePeople) -> None:
    people = await fair(gpus=1, default_lease_hours=1, max_lease_hours=1)
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(unique("x"), lease_hours=1.5)
    )
    assert status == 422, answer
    assert answer["error"]["message"].startswith(
        "lease_hours: 1.5 hours is above max_lease_hours (1 hours)"
    )
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(unique("x"), lease_hours=0)
    )
    assert status == 422, answer
    status, answer = await people.call(
        "alice", "POST", "/containers/create", box(unique("x"), gpu_ids=[0], idle_reclaim=False)
    )
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert "only an admin may exempt" in answer["error"]["message"]
    name = unique("default")
    status, answer = await people.call("alice", "POST", "/containers/create", box(name))
    assert status == 201, answer
    ends = datetime.fromisoformat(answer["expires_at"])
    assert abs(ends - datetime.now(UTC) - timedelta(hours=1)) < timedelta(seconds=30)


def test_a_lease_that_ended_while_the_daemon_was_killed_stops_the_container_after(
    rig_daemon: Callable[..., RunningDaemon],
    rig: Rig,
    tmp_path: Path,
    namespace: str,
    ssh_ports: tuple[int, int],
    cleanup: None,
) -> None:
    args = ("--namespace", namespace)
    env = {"DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}"}
    running = rig_daemon(*args, env=env)
    name = unique("killed")
    # No lease while it is made (a slow create cannot outlast it), then one of 3 s, set through
    # the API a moment before the daemon is killed.
    status, answer = http_json(
        "POST", f"{running.base}/containers/create", json_body=box(name), timeout_s=120
    )
    assert status == 201, answer
    assert answer["expires_at"] is None
    status, answer = http_json(
        "POST", f"{running.base}/containers/{name}/extend", json_body={"lease_hours": 3 / 3600}
    )
    assert status == 200, answer
    running.daemon.process.send_signal(signal.SIGKILL)
    running.daemon.wait_for_exit()
    ends = datetime.fromisoformat(answer["expires_at"])
    while datetime.now(UTC) < ends + timedelta(seconds=1):
        time.sleep(0.2)
    assert docker_state(rig, name) == "running"  # nobody stopped it while deepdockd was down

    back = rig_daemon(*args, env=env)
    came_back = time.monotonic()
    while docker_state(rig, name) == "running":
        assert time.monotonic() - came_back < 30, "not stopped after the daemon came back"
        time.sleep(0.2)

    status, container = http_json("GET", f"{back.base}/containers/{name}")
    assert container["status"] == "exited"
    assert container["stopped_reason"] == f"lease ended at {answer['expires_at']}"
    assert names_in(rig, namespace) == [name]


async def test_the_users_terminals_are_warned_before_the_lease_ends(
    fair: MakePeople, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    people = await fair(gpus=0, auth=False, stop_warning_minutes=3 / 60)
    name = unique("warned")
    # No lease while it is made and logged into (however slow), then one of 6 s through the
    # API once the session is open: the warning is due 3 s before its end.
    status, answer = await people.call("admin", "POST", "/containers/create", box(name))
    assert status == 201, answer
    port = answer["ssh-port"]
    session = await asyncio.create_subprocess_exec(
        "sshpass", "-e", "ssh", "-tt", "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
        "-o", "LogLevel=ERROR", "u1@127.0.0.1", "echo session-open; sleep 60",
        env={"SSHPASS": "pw", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
    )  # fmt: skip
    output = ""
    try:
        # Its stdin stays open, as a person's would: the session lasts until the lease ends.
        assert session.stdout is not None
        async with asyncio.timeout(40):
            while "session-open" not in output:
                chunk = await session.stdout.read(4096)
                assert chunk, f"the session ended before it opened: {output}"
                output += chunk.decode(errors="replace")
            status, answer = await people.call(
                "admin", "POST", f"/containers/{name}/extend", {"lease_hours": 6 / 3600}
            )
            assert status == 200, answer
            while chunk := await session.stdout.read(4096):
                output += chunk.decode(errors="replace")
    finally:
        if session.returncode is None:
            session.kill()
        await session.wait()

    warning = re.search(r"deepdockd: this container stops at (\d\d:\d\d:\d\d) UTC", output)
    assert warning, (output, audit_lines(caplog))
    assert answer["expires_at"].endswith(f"T{warning[1]}Z")
    assert f"/containers/{name}/extend" in output
    assert any(
        line.startswith(f"user=deepdockd action=warn target={name} outcome=sent")
        for line in audit_lines(caplog)
    ), audit_lines(caplog)
    stopped = await people.until_status("admin", name, "exited")
    assert stopped["stopped_reason"].startswith("lease ended at")


# --- idle GPUs ---


async def test_idle_gpus_are_reclaimed_busy_and_exempt_ones_are_not(
    fair: MakePeople, rig: Rig, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    idle_s = 3
    people = await fair(
        gpus=3, auth=False, gpu_sample_interval=0.25,
        # GPU 0 and 2 idle (at or under 5 %); GPU 1 mostly idle, but busy every fifth sample.
        utilization={0: [0, 3, 5], 1: [0, 0, 0, 0, 80], 2: [0]},
        idle_gpu_minutes=idle_s / 60, stop_warning_minutes=1.5 / 60,
    )  # fmt: skip
    idle, busy, exempt, no_gpu = (unique(n) for n in ("idle", "busy", "exempt", "nogpu"))
    for name, extra in (
        (idle, {"gpu_ids": [0]}),
        (busy, {"gpu_ids": [1]}),
        (exempt, {"gpu_ids": [2], "idle_reclaim": False}),
        (no_gpu, {}),
    ):
        status, answer = await people.call(
            "admin", "POST", "/containers/create", box(name, **extra)
        )
        assert status == 201, answer
    all_made = time.monotonic()

    stopped = await people.until_status("admin", idle, "exited")

    assert re.fullmatch(
        r"idle GPUs: GPU 0 at or under 5% utilization for \d+ s \(idle_gpu_minutes is 0\.05\)",
        stopped["stopped_reason"],
    ), stopped["stopped_reason"]
    assert stopped["idle_reclaim"] is True
    audit = audit_lines(caplog)
    assert any(f"action=warn target={idle} outcome=sent" in line for line in audit), audit
    assert any(f"action=stop target={idle} outcome=stopped" in line for line in audit), audit
    # The others have had the idle window (and more) since they were made.
    await asyncio.sleep(max(0.0, all_made + idle_s + 2 - time.monotonic()))
    for name in (busy, exempt, no_gpu):
        container = await people.container("admin", name)
        assert (container["status"], container["stopped_reason"]) == ("running", None), name
    assert (await people.container("admin", exempt))["idle_reclaim"] is False
    assert sorted(names_in(rig, namespace)) == sorted([idle, busy, exempt, no_gpu])
    # Started again, its idle clock starts from zero.
    assert (await people.call("admin", "POST", f"/containers/{idle}/start"))[0] == 200
    assert (await people.container("admin", idle))["stopped_reason"] is None

"""The allocation lock covers only the decision, and a freed SSH port is not handed out again
while others are free: as one user could otherwise slow everyone down, or meet another
user's logins on a port that was theirs a moment ago."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config

from tests.support.api import Client, ClientFactory, body, created
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig, RigError

SLOW_STOP_IMAGE = "deepdockd-test/slow-stop:1"
# Docker's grace before it kills a container that ignores SIGTERM (deepdockd's default).
STOP_GRACE_S = 10
TERM_SEEN = "/run/deepdockd-test-term"

# An sshd that outlives SIGTERM, as a user's processes may: it notes the signal and goes on,
# so that Docker waits out the whole grace period before it kills the container.
_SLOW_SSHD = f"""#!/bin/sh
case " $* " in *" -D "*) ;; *) exec /usr/sbin/sshd.real "$@" ;; esac
/usr/sbin/sshd.real "$@" &
trap 'echo TERM >> {TERM_SEEN}' TERM
while :; do wait; done
"""


@pytest.fixture(scope="module")
def slow_stop_image(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("slow-stop")
    (context / "sshd").write_text(_SLOW_SSHD)
    (context / "sshd").chmod(0o755)  # the classic builder's COPY keeps the mode
    (context / "Dockerfile").write_text(
        f"FROM {DEBIAN_SSH_IMAGE}\n"
        "RUN mv /usr/sbin/sshd /usr/sbin/sshd.real\n"
        "COPY sshd /usr/sbin/sshd\n"
    )
    rig.docker("build", "--quiet", "--tag", SLOW_STOP_IMAGE, str(context))
    return SLOW_STOP_IMAGE


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, config: Config, ssh_ports: tuple[int, int], cleanup: None
) -> Client:
    return await aiohttp_client(
        create_app(Config(**{**config.__dict__, "ssh_port_range": ssh_ports}))
    )


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


def started_at(rig: Rig, name: str) -> str:
    """When the container's current run began: a restart gives it a new value."""
    return rig.docker("inspect", "--format", "{{.State.StartedAt}}", name).strip()


async def test_restarts_that_wait_out_the_stop_grace_do_not_hold_up_a_create(
    client: Client, rig: Rig, slow_stop_image: str
) -> None:
    stubborn = [f"stubborn{i}" for i in range(3)]
    for name in stubborn:
        await created(client, **body(name, image=slow_stop_image, user_name="bob"))
    first_runs = {name: started_at(rig, name) for name in stubborn}

    sent = time.monotonic()
    restarts = [
        asyncio.create_task(client.post(f"/containers/{name}/restart")) for name in stubborn
    ]

    def term_seen(name: str) -> bool:
        try:
            return bool(rig.docker("exec", name, "sh", "-c", f"cat {TERM_SEEN} 2>/dev/null || :"))
        except RigError:  # an exec that met the container between its stop and its start
            return False

    def all_in_their_grace() -> bool:
        return all(term_seen(name) for name in stubborn)

    try:
        # All three in their grace at once: a lock held through a restart would let one
        # restart stop its container at a time.
        await asyncio.to_thread(wait_until, all_in_their_grace, "SIGTERM reached every one", 15)
        await created(client, **body("during"))
        # The order, not two timings: the create answered while every restart still waited
        # out its grace (the containers are still in their first run), which a create that
        # queued behind them could not (Docker ends a grace only by killing the container).
        restarts_done_when_created = [task.done() for task in restarts]
        runs_when_created = {name: started_at(rig, name) for name in stubborn}
        answers = await asyncio.gather(*restarts)
        restarts_s = time.monotonic() - sent
    finally:
        for task in restarts:
            task.cancel()
        await asyncio.gather(*restarts, return_exceptions=True)

    assert restarts_done_when_created == [False] * 3
    assert runs_when_created == first_runs
    assert [answer.status for answer in answers] == [200] * 3
    assert [await answer.json() for answer in answers] == [
        {"message": f"container '{name}' restarted"} for name in stubborn
    ]
    assert restarts_s >= STOP_GRACE_S  # they really waited out the grace; the create did not
    for name in stubborn:
        assert rig.docker("inspect", "--format", "{{.State.Running}}", name).strip() == "true"
        assert started_at(rig, name) != first_runs[name]  # restarted: a run of its own


async def test_a_freed_port_waits_while_other_ports_are_free(
    client: Client, ssh_ports: tuple[int, int]
) -> None:
    low = ssh_ports[0]
    first = await created(client, **body("first"))
    second = await created(client, **body("second"))
    assert (await client.delete("/containers/first?force=true")).status == 200

    third = await created(client, **body("third"))
    assert (await client.delete("/containers/second?force=true")).status == 200
    fourth = await created(client, **body("fourth"))
    fifth = await created(client, **body("fifth"))

    assert [first["ssh-port"], second["ssh-port"]] == [low, low + 1]
    assert third["ssh-port"] == low + 2  # not first's, freed a moment ago
    assert fourth["ssh-port"] == low + 3
    assert fifth["ssh-port"] == low + 4


async def test_a_freed_port_is_reused_once_it_is_the_one_freed_longest_ago(
    aiohttp_client: ClientFactory, config: Config, ssh_ports: tuple[int, int], cleanup: None
) -> None:
    low = ssh_ports[0]
    narrow = Config(**{**config.__dict__, "ssh_port_range": (low, low + 2)})
    client = await aiohttp_client(create_app(narrow))
    for name in ("lru-a", "lru-b", "lru-c"):
        await created(client, **body(name))
    assert (await client.delete("/containers/lru-b?force=true")).status == 200
    assert (await client.delete("/containers/lru-a?force=true")).status == 200

    d = await created(client, **body("lru-d"))
    e = await created(client, **body("lru-e"))

    assert d["ssh-port"] == low + 1  # lru-b's, freed before lru-a's
    assert e["ssh-port"] == low

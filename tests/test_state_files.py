"""State files fail closed: a file of the state directory that deepdockd wrote before and
cannot find now is unreadable, never empty. "Never written" is told from "lost" by the
directory's manifest (``state-files.json``) and, when the whole directory is gone, by Docker:
containers of the namespace mean deepdockd ran here before.

On the rig: a lost ``containers.json`` stops no extended lease early; release times of ports
outlive a restart of the daemon (a real process), and a whole state directory lost refuses
the port choice until it is restored. The record of images is tested in test_image_trust.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.containers.allocation import PortRecordsUnreadable, PortReleases
from deepdockd.fairshare.records import ContainerRecords, Lease, RecordsUnreadable
from deepdockd.state_files import StateDirectory, StateFileLost, StateFileUnknown

from tests.support.api import ClientFactory
from tests.support.daemon import RunningDaemon, http_json
from tests.support.docker_state import clear_namespace
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig


def box(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw"} | extra


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def witness(answer: bool) -> Callable[[], Any]:
    """Docker's word, as the daemon asks it: whether the namespace has containers."""

    async def has_containers() -> bool:
        return answer

    return has_containers


# --- never written, or lost ---


def test_a_file_never_written_is_empty_and_one_written_then_gone_is_lost(tmp_path: Path) -> None:
    state = StateDirectory(tmp_path / "state")
    never, gone = state.file("never.json"), state.file("gone.json")
    gone.write('{"x": 1}\n')

    gone.path.unlink()

    assert never.read() is None
    with pytest.raises(StateFileLost, match=r"gone\.json was written before and is gone"):
        gone.read()
    assert json.loads((tmp_path / "state" / "state-files.json").read_text()) == {
        "written": ["gone.json"]
    }


async def test_a_whole_state_directory_lost_is_told_by_dockers_containers(
    tmp_path: Path,
) -> None:
    lost = StateDirectory(tmp_path / "lost", witness=witness(True))
    new = StateDirectory(tmp_path / "new", witness=witness(False))
    lost_file, new_file = lost.file("records.json"), new.file("records.json")

    with pytest.raises(StateFileUnknown, match="cannot tell yet"):
        lost_file.read()  # until Docker has said: neither empty nor lost
    await lost.settle()
    await new.settle()

    with pytest.raises(StateFileLost):
        lost_file.read()
    assert new_file.read() is None
    # The admin's word that it is gone for good: the file written anew.
    lost_file.path.write_text("{}\n")
    assert lost_file.read() == "{}\n"


async def test_a_directory_from_before_the_manifest_keeps_what_it_has(tmp_path: Path) -> None:
    (tmp_path / "containers.json").write_text('{"containers": {}}\n')
    state = StateDirectory(tmp_path, witness=witness(True))
    kept, absent = state.file("containers.json"), state.file("images.json")

    await state.settle()
    assert absent.read() is None  # never written by the deepdockd before this one
    kept.path.unlink()

    with pytest.raises(StateFileLost):
        kept.read()


def test_a_lost_container_record_refuses_changes_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = ContainerRecords(StateDirectory(tmp_path))
    ends = datetime(2026, 11, 28, 9, tzinfo=UTC)
    records.set_lease("c1", Lease(ends, None))
    records.path.unlink()

    readable = [records.readable for _ in range(3)]
    with pytest.raises(RecordsUnreadable, match="was written before and is gone"):
        records.set_lease("c1", Lease(ends + timedelta(hours=1), None))
    records.forget("c1")

    assert readable == [False, False, False]
    assert not records.path.exists()
    logged = [r.getMessage() for r in caplog.records if "containers.json" in r.getMessage()]
    assert len(logged) == 1, logged
    assert "no container is stopped for its lease" in logged[0]


def test_port_release_times_outlive_the_object_that_kept_them(tmp_path: Path) -> None:
    first = PortReleases(StateDirectory(tmp_path), clock=lambda: 1000.0)
    first.release(22000, None, 22001)
    again = PortReleases(StateDirectory(tmp_path))
    assert again.released_at == {22000: 1000.0, 22001: 1000.0}
    (tmp_path / "ports.json").unlink()
    with pytest.raises(PortRecordsUnreadable, match="was written before and is gone"):
        again.released_at  # noqa: B018


# --- on the rig ---


async def test_a_lost_containers_json_stops_no_extended_lease_early(
    aiohttp_client: ClientFactory,
    config: Config,
    rig: Rig,
    ssh_ports: tuple[int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    made = replace(config, ssh_port_range=ssh_ports, max_lease_hours=1, stop_warning_minutes=0)
    client = await aiohttp_client(create_app(made))
    name = unique("extended")
    try:
        created = await client.post("/containers/create", json=box(name, lease_hours=3 / 3600))
        assert created.status == 201, await created.json()
        first_end = datetime.fromisoformat((await created.json())["expires_at"])
        extended = await client.post(f"/containers/{name}/extend", json={"lease_hours": 1})
        assert extended.status == 200, await extended.json()
        path = made.state_dir / "containers.json"

        path.unlink()
        # Three reaper ticks past the end the labels give.
        await asyncio.sleep((first_end + timedelta(seconds=3) - datetime.now(UTC)).total_seconds())
        state = rig.docker("inspect", "--format", "{{.State.Status}}", name).strip()
        extend_again = await client.post(f"/containers/{name}/extend", json={"lease_hours": 1})

        assert state == "running"
        assert extend_again.status == 503
        assert (await extend_again.json())["error"]["code"] == "container_records_unreadable"
        assert not path.exists()
        logged = [r.getMessage() for r in caplog.records if "containers.json" in r.getMessage()]
        assert len(logged) == 1, logged
        assert logged[0] == (
            f"{path} was written before and is gone: until it is restored, no container is "
            "stopped for its lease, leases show as they were made, and extending one is "
            "refused (writing it anew as {} forgets every extended lease and stop reason)"
        )
    finally:
        clear_namespace(rig, made.namespace)


def test_a_port_freed_before_a_restart_is_not_handed_out_again_at_once(
    rig_daemon: Callable[..., RunningDaemon],
    rig: Rig,
    namespace: str,
    ssh_ports: tuple[int, int],
    cleanup: None,
) -> None:
    args = ("--namespace", namespace)
    env = {"DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}"}
    running = rig_daemon(*args, env=env)
    first, second, third = unique("first"), unique("second"), unique("third")

    status, made = http_json(
        "POST", f"{running.base}/containers/create", json_body=box(first), timeout_s=120
    )
    assert status == 201, made
    freed = made["ssh-port"]
    assert freed == ssh_ports[0]
    assert http_json("DELETE", f"{running.base}/containers/{first}?force=true")[0] == 200
    running.stop()
    back = rig_daemon(*args, env=env)
    status, after_restart = http_json(
        "POST", f"{back.base}/containers/create", json_body=box(second), timeout_s=120
    )

    assert status == 201, after_restart
    assert after_restart["ssh-port"] != freed  # the user of the freed port may still knock

    # The whole state directory lost: Docker still holds this namespace's containers, so the
    # release times were lost, not never written; no port is handed out until an admin says.
    back.stop()
    shutil.rmtree(back.state_dir)
    third_start = rig_daemon(*args, env=env)
    refused = http_json(
        "POST", f"{third_start.base}/containers/create", json_body=box(third), timeout_s=120
    )
    ports_file = third_start.state_dir / "ports.json"
    message = (
        f"{ports_file} was written before and is gone: until it is restored, no port is handed "
        "out, since one freed just before the loss would go to someone else at once (writing "
        "it anew as {} forgets when each port was freed)"
    )

    assert refused == (
        503,
        {"error": {"code": "port_records_unreadable", "message": message, "details": {}}},
    )
    deadline = time.monotonic() + 10
    while message not in third_start.daemon.log.read_text():
        assert time.monotonic() < deadline, third_start.daemon.log.read_text()
        time.sleep(0.05)
    ports_file.write_text("{}\n")  # the admin's word: forget them
    status, answer = http_json(
        "POST", f"{third_start.base}/containers/create", json_body=box(third), timeout_s=120
    )
    assert status == 201, answer

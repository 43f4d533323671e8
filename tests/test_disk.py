"""Disk is accounted and bounded: each container's writable layer and each home volume is
measured (Docker's system/df, on a short cadence here), shown (``disk_used_mb``, ``GET
/quota``), exported to Prometheus, and ``max_disk_gb`` refuses a create or a start of a user
over it and warns their terminals; nothing is deleted. ``container_disk_limit_gb`` on the
rig's storage (overlay2 not on XFS) is refused with an error that names the setting."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config, load_config
from deepdockd.quota_settings import parse_quotas
from deepdockd.tokens import TokenStore

from tests.support import users
from tests.support.api import ClientFactory
from tests.support.docker_state import clear_namespace
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig
from tests.support.users import users_tokens

MIB = 1024 * 1024


def box(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw"} | extra


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def people(
    aiohttp_client: ClientFactory,
    config: Config,
    rig: Rig,
    ssh_ports: tuple[int, int],
    request: pytest.FixtureRequest,
) -> Any:
    """Factory: a daemon with auth on (admin, alice, bob) that measures disk every 0.5 s."""

    async def make(**changes: Any) -> users.People:
        made = replace(config, auth=True, ssh_port_range=ssh_ports, disk_usage_interval=0.5)
        made = replace(made, **changes)
        tokens = users_tokens(TokenStore(made.state_dir))
        return users.People(await aiohttp_client(create_app(made)), tokens)

    yield make
    clear_namespace(rig, config.namespace)


async def _ssh_until(port: int, command: str, pattern: str, timeout_s: float) -> str:
    """An SSH login with a terminal (as a person's) that runs ``command``; its output until
    ``pattern`` shows (or the time is up)."""
    session = await asyncio.create_subprocess_exec(
        "sshpass", "-e", "ssh", "-tt", "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
        "-o", "LogLevel=ERROR", "u1@127.0.0.1", command,
        env={"SSHPASS": "pw", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
    )  # fmt: skip
    output = ""
    assert session.stdout is not None
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await session.stdout.read(4096):
                output += chunk.decode(errors="replace")
                if re.search(pattern, output):
                    break
    except TimeoutError:
        pass
    finally:
        if session.returncode is None:
            session.kill()
        await session.wait()
    return output


async def test_a_user_over_max_disk_gb_is_shown_refused_and_warned_and_nothing_is_deleted(
    people: Callable[..., Any], rig: Rig
) -> None:
    # 20 MiB for alice; bob has no limit.
    team = await people(quotas=parse_quotas({"users": {"alice": {"max_disk_gb": 20 / 1024}}}))
    name = unique("disk")
    status, answer = await team.call("alice", "POST", "/containers/create", box(name))
    assert status == 201, answer
    port = answer["ssh-port"]
    status, quota = await team.call("alice", "GET", "/quota")
    assert quota["limits"]["max_disk_gb"] == pytest.approx(20 / 1024), quota

    # alice writes 40 MiB in her home over SSH, and stays logged in as a person would.
    output = await _ssh_until(
        port,
        "dd if=/dev/zero of=$HOME/big bs=1M count=40 2>/dev/null; echo written; sleep 60",
        r"deepdockd: .*disk quota",
        timeout_s=45,
    )
    assert "written" in output, output
    warning = re.search(r"deepdockd: alice's disk use \(([\d.]+) GiB.*max_disk_gb", output)
    assert warning, output
    assert float(warning[1]) * 1024 >= 40

    status, quota = await team.call("alice", "GET", "/quota")
    assert status == 200, quota
    assert quota["used"]["disk_mb"] >= 40, quota
    # bob's use is his own: nothing of alice's is counted for him.
    assert (await team.call("bob", "GET", "/quota"))[1]["used"]["disk_mb"] == 0

    status, answer = await team.call("alice", "POST", "/containers/create", box(unique("more")))
    assert status == 403, answer
    assert answer["error"]["code"] == "quota_exceeded"
    assert answer["error"]["details"]["limit"] == "max_disk_gb"
    assert "disk" in answer["error"]["message"]
    assert answer["error"]["details"]["containers"] == [name]

    # Shown per container (its writable layer) and per volume (the home).
    status, container = await team.call("alice", "GET", f"/containers/{name}")
    assert isinstance(container["disk_used_mb"], float | int), container
    status, listed = await team.call("alice", "GET", "/containers")
    assert [c["disk_used_mb"] for c in listed["containers"]] == [container["disk_used_mb"]]
    status, volumes = await team.call("alice", "GET", "/volumes")
    (home,) = volumes["volumes"]
    assert home["disk_used_mb"] >= 40, home

    # Exported, with the owner as a label.
    status, text = await team.call("admin", "GET", "/metrics/prometheus")
    assert status == 200
    volume_line = re.search(
        rf'deepdockd_volume_disk_used_bytes\{{[^}}]*volume="{re.escape(home["name"])}"[^}}]*\}} (\S+)',
        text,
    )
    assert volume_line, text
    assert float(volume_line[1]) >= 40 * MIB, text
    assert 'owner="alice"' in volume_line[0]
    assert re.search(
        rf'deepdockd_container_disk_used_bytes\{{container="{name}",owner="alice"\}} \S+', text
    ), text

    # A start is refused too; the stopped container and alice's file stay.
    assert (await team.call("alice", "POST", f"/containers/{name}/stop"))[0] == 200
    status, answer = await team.call("alice", "POST", f"/containers/{name}/start")
    assert (status, answer["error"]["details"]["limit"]) == (403, "max_disk_gb"), answer
    assert rig.docker("inspect", "--format", "{{.State.Status}}", name).strip() == "exited"
    listing = rig.docker(
        "run", "--rm", "-v", f"{home['name']}:/h", "deepdockd-test/busybox:latest",
        "ls", "-l", "/h/big",
    )  # fmt: skip
    assert str(40 * MIB) in listing, listing


async def test_container_disk_limit_gb_where_docker_cannot_apply_it_is_a_clear_error(
    people: Callable[..., Any], rig: Rig, namespace: str
) -> None:
    team = await people(container_disk_limit_gb=1.0)
    name = unique("limited")
    status, answer = await team.call("alice", "POST", "/containers/create", box(name))
    assert status == 503, answer
    assert answer["error"]["code"] == "disk_limit_unsupported"
    assert "container_disk_limit_gb is 1" in answer["error"]["message"]
    assert "XFS" in answer["error"]["message"]
    assert "pquota" in answer["error"]["message"]
    assert answer["error"]["details"] == {"setting": "container_disk_limit_gb", "value": 1.0}
    left = rig.docker("ps", "--all", "--filter", f"label=deepdockd.namespace={namespace}", "-q")
    assert left.split() == []


def test_disk_settings_are_checked(tmp_path: Path) -> None:
    quotas = parse_quotas({"max_disk_gb": 0.5, "users": {"bob": {"max_disk_gb": 2}}})
    assert quotas.limits_for("alice", is_admin=False).max_disk_gb == 0.5
    assert quotas.limits_for("bob", is_admin=False).max_disk_gb == 2.0
    with pytest.raises(ValueError, match=r"quotas\.max_disk_gb to -1"):
        parse_quotas({"max_disk_gb": -1})
    config = load_config(
        {}, environ={"DEEPDOCKD_DISK_USAGE_INTERVAL": "5", "DEEPDOCKD_CONTAINER_DISK_LIMIT_GB": "8"},
        default_file=tmp_path / "none.toml",
    )  # fmt: skip
    assert (config.disk_usage_interval, config.container_disk_limit_gb) == (5.0, 8.0)
    with pytest.raises(Exception, match="container_disk_limit_gb"):
        load_config(
            {}, environ={"DEEPDOCKD_CONTAINER_DISK_LIMIT_GB": "-1"},
            default_file=tmp_path / "none.toml",
        )  # fmt: skip

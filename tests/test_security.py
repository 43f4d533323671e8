"""Security for a shared server: tokens, roles and owners over every route, token management,
refusals at start, strict input, and an audit line for every change."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests.support.api import ClientFactory
from tests.support.daemon import RunningDaemon, clean_env, http_request, run_deepdockd
from tests.support.docker_state import clear_namespace
from tests.support.gpus import sim_gpu
from tests.support.rig import DEBIAN_SSH_IMAGE, Rig
from tests.support.users import People, users_tokens

MakeImage = Callable[..., str]


@pytest.fixture
async def people(
    aiohttp_client: ClientFactory,
    config: Config,
    sim_gpus: Callable[..., Path],
    rig: Rig,
    ssh_ports: tuple[int, int],
    service_ports: tuple[int, int],
    gpu_stem: str,
) -> Any:
    """A daemon with auth on, an admin and two users, alice and bob."""
    sim_gpus(sim_gpu(0, stem=gpu_stem), sim_gpu(1, stem=gpu_stem))
    secured = Config(
        **{
            **config.__dict__,
            "auth": True,
            "ssh_port_range": ssh_ports,
            "service_port_range": service_ports,
        }
    )
    tokens = users_tokens(TokenStore(secured.state_dir))
    yield People(await aiohttp_client(create_app(secured)), tokens)
    clear_namespace(rig, config.namespace)


def box(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "u1", "password": "pw"} | extra


# --- the access matrix ---


async def test_every_route_for_every_caller(
    people: People, registry_image: MakeImage, namespace: str
) -> None:
    reference = registry_image()
    alice_box = f"alice-{uuid.uuid4().hex[:6]}"
    alice_home = f"{namespace}-home-alice.u1"  # the home volume of alice's box
    committed = f"{namespace}-matrix/{alice_box}:1"  # the tag commits of alice's box set
    # Port 8080 published, with nothing listening on it (the proxy's 502 past the checks).
    status, created = await people.call(
        "alice", "POST", "/containers/create", box(alice_box, gpu_ids=[0], ports=[8080])
    )
    assert status == 201, created

    everyone = ("anonymous", "alice", "bob", "admin")

    def row(method: str, path: str, body: Any, *statuses: int) -> tuple[Any, ...]:
        """Statuses for anonymous, alice (the owner), bob (another user), admin, in order."""
        return method, path, body, list(zip(everyone, statuses, strict=True))

    matrix = [
        row("GET", "/healthz", None, 200, 200, 200, 200),
        row("GET", "/openapi.yaml", None, 200, 200, 200, 200),
        row("GET", "/openapi.json", None, 200, 200, 200, 200),
        row("GET", "/docs", None, 200, 200, 200, 200),
        row("GET", "/docs/swagger-ui.css", None, 200, 200, 200, 200),
        # The dashboard's files are public; what it shows comes from the calls above.
        row("GET", "/ui", None, 200, 200, 200, 200),
        row("GET", "/ui/app.js", None, 200, 200, 200, 200),
        row("GET", "/metrics", None, 401, 200, 200, 200),
        row("GET", "/metrics/gpus", None, 401, 200, 200, 200),
        # It names every user's containers: for admins (and their Prometheus) only.
        row("GET", "/metrics/prometheus", None, 401, 403, 403, 200),
        row("GET", "/gpus", None, 401, 200, 200, 200),
        # Each user's own GPU-hours, an admin's everyone's (tests/test_usage.py: the rows).
        row("GET", "/usage", None, 401, 200, 200, 200),
        row("GET", "/usage?by=team", None, 401, 422, 422, 422),
        # Each sees their own self-made tokens (none here); making one takes the local
        # socket's word of who calls, never a token (tests/test_host_users.py: the socket).
        row("GET", "/tokens", None, 401, 200, 200, 200),
        row("POST", "/tokens", {"name": "laptop"}, 401, 403, 403, 403),
        row("DELETE", "/tokens/tok_000000000000", None, 401, 404, 404, 404),
        row("GET", "/images", None, 401, 200, 200, 200),
        row("POST", "/images", {"repo_tag": reference}, 401, 200, 200, 200),
        row("GET", "/containers", None, 401, 200, 200, 200),
        row("GET", f"/containers/{alice_box}", None, 401, 200, 404, 200),
        row("POST", f"/containers/{alice_box}/stop", None, 401, 200, 404, 200),
        row("POST", f"/containers/{alice_box}/start", None, 401, 200, 404, 200),
        row("POST", f"/containers/{alice_box}/restart", None, 401, 200, 404, 200),
        # Paused by alice, paused already for the admin (200, no change); unpaused by alice,
        # so the admin's unpause meets a running one (409 container_not_paused).
        row("POST", f"/containers/{alice_box}/pause", None, 401, 200, 404, 200),
        row("POST", f"/containers/{alice_box}/unpause", None, 401, 200, 404, 409),
        row("POST", f"/containers/{alice_box}/extend", {"lease_hours": 2}, 401, 200, 404, 200),
        # alice's commit makes her image and tag; an admin may move any tag (to a public image
        # of theirs, which the admin then removes).
        row("POST", f"/containers/{alice_box}/commit", {"tag": committed}, 401, 201, 404, 201),
        row("DELETE", f"/images/{committed}", None, 401, 403, 403, 200),
        row("GET", f"/containers/{alice_box}/logs?tail=5", None, 401, 200, 404, 200),
        row("GET", f"/containers/{alice_box}/stats?step=30", None, 401, 200, 404, 200),
        # The proxy: the owner's and the admins' (tests/test_proxy.py: a real service).
        row("GET", f"/containers/{alice_box}/proxy/8080/", None, 401, 502, 404, 502),
        row("POST", f"/containers/{alice_box}/proxy/8080/api", {}, 401, 502, 404, 502),
        row("GET", f"/containers/{alice_box}/proxy/9999/", None, 401, 404, 404, 404),
        row("POST", f"/containers/{alice_box}/proxy-session", None, 401, 201, 404, 201),
        row("GET", "/events?timeout=1", None, 401, 200, 200, 200),
        row("GET", "/volumes", None, 401, 200, 200, 200),
        row("GET", "/quota", None, 401, 200, 200, 200),
        # Another user's quota: for admins only.
        row("GET", "/quota?user=alice", None, 401, 200, 403, 200),
        # Used by alice's box: refused to its owner and the admin, unknown to bob.
        row("DELETE", f"/volumes/{alice_home}", None, 401, 409, 404, 409),
        # Past the token, a create is checked like anyone's: this one's empty password is not.
        row("POST", "/containers/create", box("never-made", password=""), 401, 422, 422, 422),
        row("DELETE", f"/images/{reference}", None, 401, 403, 403, 200),
        # The admin removes alice's container; after that it is gone for alice too.
        ("DELETE", f"/containers/{alice_box}?force=true", None,
         [("anonymous", 401), ("bob", 404), ("admin", 200), ("alice", 404)]),
        # Unused now: still unknown to bob; alice removes it, and then it is gone for the admin.
        ("DELETE", f"/volumes/{alice_home}", None,
         [("anonymous", 401), ("bob", 404), ("alice", 200), ("admin", 404)]),
    ]  # fmt: skip

    for method, path, body, expected in matrix:
        for who, status_expected in expected:
            status, answer = await people.call(who, method, path, body)
            assert status == status_expected, (method, path, who, answer)
            if status == 401:
                assert answer["error"]["code"] == "unauthorized"
    lists = {who: (await people.call(who, "GET", "/containers"))[1] for who in everyone[1:]}
    assert lists == {who: {"containers": []} for who in everyone[1:]}
    volumes = {who: (await people.call(who, "GET", "/volumes"))[1] for who in everyone[1:]}
    assert volumes == {who: {"volumes": []} for who in everyone[1:]}


async def test_a_user_cannot_learn_another_users_container_names(people: People) -> None:
    name = f"secret-name-{uuid.uuid4().hex[:6]}"
    assert (await people.call("alice", "POST", "/containers/create", box(name, gpu_ids=[1])))[
        0
    ] == 201

    seen_by_bob = [
        await people.call("bob", "GET", "/containers"),
        await people.call("bob", "GET", "/gpus"),
        await people.call("bob", "POST", "/containers/create", box("bobs", gpu_ids=[1])),
        await people.call("bob", "GET", f"/containers/{name}"),
    ]
    absent = await people.call("bob", "GET", "/containers/no-such-box")

    assert name not in json.dumps(seen_by_bob[:3])  # (the last one echoes the name bob asked for)
    assert seen_by_bob[0][1] == {"containers": []}
    # bob learns that GPU 1 is taken (so as not to ask for it), not by which container.
    bobs_gpu = seen_by_bob[1][1]["gpus"][1]
    assert (bobs_gpu["containers"], bobs_gpu["held"]) == ([], True)
    assert seen_by_bob[1][1]["gpus"][0]["held"] is False
    assert seen_by_bob[2][0] == 409
    assert (
        seen_by_bob[2][1]["error"]["message"] == "GPU 1 is held by another user's running container"
    )
    # Another user's container answers exactly as one that does not exist.
    assert seen_by_bob[3][1]["error"]["message"].replace(name, "X") == absent[1]["error"][
        "message"
    ].replace("no-such-box", "X")
    admin_view = await people.call("admin", "GET", "/gpus")
    assert admin_view[1]["gpus"][1]["containers"] == [name]
    alice_view = await people.call("alice", "GET", "/containers")
    assert [(c["name"], c["owner"]) for c in alice_view[1]["containers"]] == [(name, "alice")]


async def test_missing_and_wrong_tokens_are_401_with_a_challenge(people: People) -> None:
    missing = await people.client.get("/containers")
    wrong = await people.client.get("/containers", headers={"Authorization": "Bearer ddk_nope"})
    basic = await people.client.get("/containers", headers={"Authorization": "Basic YTpi"})

    assert [r.status for r in (missing, wrong, basic)] == [401, 401, 401]
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="deepdockd"'
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="deepdockd", error="invalid_token"'
    assert (await missing.json())["error"]["message"].startswith("this route needs a token")


# --- tokens ---


def token_command(
    state_dir: Path, *args: str, docker_host: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``deepdockd token ARGS``; with the daemon's ``docker_host``, which ``add`` asks what
    the name still owns (see test_user_lifecycle.py)."""
    on_docker = {"DEEPDOCKD_DOCKER_HOST": docker_host} if docker_host else None
    return subprocess.run(
        [sys.executable, "-m", "deepdockd", "token", "--state-dir", str(state_dir), *args],
        env=clean_env(on_docker), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_first_start_makes_an_admin_token_and_tokens_can_be_added_and_revoked(
    rig: Rig, rig_daemon: Callable[..., RunningDaemon]
) -> None:
    daemon = rig_daemon(auth=True)
    state, base = daemon.state_dir, daemon.base
    try:
        admin_token = (state / "admin.token").read_text().strip()
        added = token_command(state, "add", "carol", "--role", "user", docker_host=rig.docker_host)
        carol = added.stdout.strip()
        listed = token_command(state, "list")
        with_token = _get(f"{base}/containers", carol)
        token_command(state, "revoke", "carol", docker_host=rig.docker_host)
        after_revoke = _get(f"{base}/containers", carol)
        admin = _get(f"{base}/containers", admin_token)
    finally:
        status, log = daemon.stop()

    assert stat.S_IMODE((state / "admin.token").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "tokens.json").stat().st_mode) == 0o600
    assert f"made an admin token and wrote it to {state / 'admin.token'}" in log
    assert admin_token not in log
    assert admin_token not in (state / "tokens.json").read_text()  # only its hash
    assert carol not in (state / "tokens.json").read_text()
    assert added.returncode == 0
    assert carol.startswith("ddk_")
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        ["admin", "admin"],
        ["carol", "user"],
    ]
    assert with_token == 200
    assert after_revoke == 401  # at once, without a restart
    assert admin == 200
    assert status == 0


def _get(url: str, token: str) -> int:
    return http_request("GET", url, token=token)[0]


def test_token_command_errors_are_one_line(tmp_path: Path) -> None:
    token_command(tmp_path, "add", "dave", "--inherit")  # no Docker to ask what dave owns

    again = token_command(tmp_path, "add", "dave")
    unknown = token_command(tmp_path, "revoke", "erin")
    bad_name = token_command(tmp_path, "add", "Not A Name")

    assert [r.returncode for r in (again, unknown, bad_name)] == [2, 2, 2]
    assert again.stderr == "deepdockd token: 'dave' has a token already; revoke it first\n"
    assert unknown.stderr == "deepdockd token: 'erin' has no token\n"
    assert bad_name.stderr.startswith("deepdockd token: 'Not A Name' is not a valid user name")


def test_a_token_file_others_can_read_is_refused_at_start(rig: Rig, tmp_path: Path) -> None:
    state = tmp_path / "state"
    TokenStore(state).ensure_admin()
    os.chmod(state / "admin.token", 0o644)

    result = run_deepdockd("--state-dir", str(state), "--docker-host", rig.docker_host)

    assert result.returncode == 2
    assert result.stderr == (
        f"deepdockd: {state / 'admin.token'} has mode 0644: others could read a token from it; "
        f"run chmod 600 {state / 'admin.token'}\n"
    )


def test_auth_off_is_refused_off_loopback(tmp_path: Path) -> None:
    result = run_deepdockd(
        "--host", "0.0.0.0", "--state-dir", str(tmp_path / "s"), env={"DEEPDOCKD_AUTH": "false"}
    )

    assert result.returncode == 2
    assert result.stderr.startswith(
        "deepdockd: auth: false is allowed only when the daemon listens on a loopback address"
    )


# --- input ---


async def test_an_oversized_body_is_413(aiohttp_client: ClientFactory, config: Config) -> None:
    client = await aiohttp_client(create_app(Config(**{**config.__dict__, "max_body_size": 1024})))

    response = await client.post("/containers/create", json=box("big", password="x" * 2000))

    assert response.status == 413
    assert (await response.json())["error"]["code"] == "body_too_large"


async def test_a_system_account_of_the_image_cannot_become_a_login(
    people: People, rig: Rig
) -> None:
    image = f"deepdockd-test/with-service-user:{uuid.uuid4().hex[:6]}"
    builder = f"build-{uuid.uuid4().hex[:6]}"
    rig.docker("run", "--name", builder, DEBIAN_SSH_IMAGE, "useradd", "--system", "svcacct")
    rig.docker("commit", "--change", 'CMD ["/bin/bash"]', builder, image)
    rig.docker("rm", builder)
    try:
        status, error = await people.call(
            "alice", "POST", "/containers/create", box("svc", image=image, user_name="svcacct")
        )
    finally:
        rig.docker("rmi", "--force", image)

    assert status == 422
    assert "user svcacct is a system account of the image" in error["error"]["message"]


# --- audit ---


async def test_every_change_is_audited_once_without_secrets(
    people: People, registry_image: MakeImage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = f"pw-{uuid.uuid4().hex}"
    registry_password = f"rpw-{uuid.uuid4().hex}"  # the open registry wants none; still a secret
    name = f"audited-{uuid.uuid4().hex[:6]}"
    reference = registry_image()
    auth = {"username": "alice", "password": registry_password}

    await people.call("alice", "POST", "/images", {"repo_tag": reference, "auth": auth})
    await people.call("alice", "DELETE", f"/images/{reference}")
    await people.call("admin", "DELETE", f"/images/{reference}")
    await people.call("alice", "GET", "/images")  # not a change: not audited
    await people.call("alice", "POST", "/containers/create", box(name, password=password))
    await people.call("bob", "POST", f"/containers/{name}/stop")
    await people.call("alice", "POST", f"/containers/{name}/stop")
    await people.call("alice", "POST", f"/containers/{name}/start")
    await people.call("alice", "POST", f"/containers/{name}/restart")
    await people.call("alice", "GET", "/containers")  # not a change: not audited
    await people.call("admin", "DELETE", f"/containers/{name}?force=true")

    audit = [r for r in caplog.records if r.name == "deepdockd.audit"]
    expected = [  # logfmt: the action has a space, so it is quoted (docs/security.md#audit)
        f'user=alice action="POST /images" target={reference} outcome=200',
        f'user=alice action="DELETE /images/{reference}" target={reference} outcome=403',
        f'user=admin action="DELETE /images/{reference}" target={reference} outcome=200',
        f'user=alice action="POST /containers/create" target={name} outcome=201',
        f'user=bob action="POST /containers/{name}/stop" target={name} outcome=404',
        f'user=alice action="POST /containers/{name}/stop" target={name} outcome=200',
        f'user=alice action="POST /containers/{name}/start" target={name} outcome=200',
        f'user=alice action="POST /containers/{name}/restart" target={name} outcome=200',
        f'user=admin action="DELETE /containers/{name}" target={name} outcome=200',
    ]
    assert [r.getMessage() for r in audit] == expected
    # The same four fields, as a JSON log line carries them.
    fields = [[getattr(r, f) for f in ("user", "action", "target", "outcome")] for r in audit]
    assert [f'user={u} action="{a}" target={t} outcome={o}' for u, a, t, o in fields] == expected
    for secret in (password, registry_password, *people.tokens.values()):
        assert secret not in caplog.text

"""Commit a container to an image of its owner's, on the rig: what a user made outside the home
goes into the image; the home, deepdockd's files, the sessions' env and the password's hash do
not; the image is its owner's alone, and a create from it logs in and finds the files."""

from __future__ import annotations

import asyncio
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.clock import now_utc
from deepdockd.config import Config
from deepdockd.containers.disk import MIB, DiskMeasurement
from deepdockd.docker import DiskEntry
from deepdockd.quota_settings import parse_quotas
from deepdockd.tokens import TokenStore

from tests.support.api import ClientFactory
from tests.support.docker_state import clear_namespace
from tests.support.gpus import sim_gpu
from tests.support.rig import BUSYBOX_IMAGE, DEBIAN_SSH_IMAGE, Rig
from tests.support.ssh import ssh
from tests.support.users import People, users_tokens

# A value of the request's env: it is in the sessions' env files, which stay out of the image.
ENV_SECRET = "env-secret-5c1d"


@pytest.fixture
async def people(
    aiohttp_client: ClientFactory,
    config: Config,
    sim_gpus: Callable[..., Path],
    rig: Rig,
    ssh_ports: tuple[int, int],
    gpu_stem: str,
) -> Any:
    """A daemon with auth on, an admin and two users, alice and bob."""
    sim_gpus(sim_gpu(0, stem=gpu_stem))
    secured = Config(**{**config.__dict__, "auth": True, "ssh_port_range": ssh_ports})
    tokens = users_tokens(TokenStore(secured.state_dir))
    yield People(await aiohttp_client(create_app(secured)), tokens)
    clear_namespace(rig, config.namespace)


def box(name: str, image: str = DEBIAN_SSH_IMAGE, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "image": image, "user_name": "u1", "password": "pw-" + name,
        "env": {"PROJECT_TOKEN": ENV_SECRET},
    } | extra  # fmt: skip


async def created(people: People, who: str, body: dict[str, Any]) -> int:
    status, answer = await people.call(who, "POST", "/containers/create", body)
    assert status == 201, answer
    port: int = answer["ssh-port"]
    return port


def shadow_line(rig: Rig, container: str) -> str:
    """The u1 line of the container's /etc/shadow, with its hash."""
    return rig.docker("exec", container, "grep", "^u1:", "/etc/shadow").strip()


def pauses(rig: Rig, container: str, since: float) -> list[str]:
    """Docker's pause and unpause events of the container from ``since`` to now."""
    listed = rig.docker(
        "events", "--since", f"{since - 1:.3f}", "--until", f"{time.time() + 1:.3f}",
        "--filter", f"container={container}", "--filter", "event=pause",
        "--filter", "event=unpause", "--format", "{{.Action}}",
    )  # fmt: skip
    return listed.split()


def image_contents(rig: Rig, image: str, tmp_path: Path) -> tuple[dict[str, bytes], bytes]:
    """Every file of every layer of ``image`` (``docker save``), by path, and all of the
    saved archive's bytes (layers and config)."""
    saved = tmp_path / "image.tar"
    rig.docker("save", "-o", str(saved), image)
    files: dict[str, bytes] = {}
    with tarfile.open(saved) as archive:
        for member in archive.getmembers():
            if not member.name.endswith("layer.tar"):
                continue
            layer = archive.extractfile(member)
            assert layer is not None
            with tarfile.open(fileobj=layer) as inner:
                for entry in inner.getmembers():
                    content = inner.extractfile(entry) if entry.isfile() else None
                    files[entry.name] = content.read() if content else b""
    return files, saved.read_bytes()


async def test_a_commit_keeps_the_users_files_and_none_of_deepdockds(
    people: People, rig: Rig, namespace: str, tmp_path: Path
) -> None:
    tag = f"{namespace}-alice/env:1"
    port = await created(people, "alice", box("alice-env"))
    made = ssh(
        port, "u1", "pw-alice-env",
        "echo kept > /tmp/kept.txt && echo in-home > ~/home.txt && echo $PROJECT_TOKEN",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == ENV_SECRET
    hash_before = shadow_line(rig, "alice-env").split(":")[1]
    assert hash_before.startswith("$6$")

    since = time.time()
    status, image = await people.call(
        "alice", "POST", "/containers/alice-env/commit", {"tag": tag, "message": "my env"}
    )

    assert status == 201, image
    assert image in (await people.call("alice", "GET", "/images"))[1]["images"]
    # Frozen while Docker copied it, by default.
    assert pauses(rig, "alice-env", since) == ["pause", "unpause"]
    assert image["tags"] == [tag]
    assert image["tag"] == tag
    # The container is as it was: password logins, its sessions' env, its hash.
    again = ssh(port, "u1", "pw-alice-env", "cat /tmp/kept.txt && echo $PROJECT_TOKEN")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["kept", ENV_SECRET]
    assert shadow_line(rig, "alice-env").split(":")[1] == hash_before
    # The image: the file made outside the home; not the home, nor deepdockd's files, nor
    # the sessions' env, nor the hash (in no layer and not in its config).
    files, saved = image_contents(rig, tag, tmp_path)
    assert files["tmp/kept.txt"] == b"kept\n"
    assert not [name for name in files if name.endswith("home.txt")]
    assert not [name for name in files if name.startswith(".deepdockd/") and name != ".deepdockd/"]
    assert ".deepdockd-session-env" not in files
    assert "etc/profile.d/deepdockd-env.sh" not in files
    assert hash_before.encode() not in saved
    assert ENV_SECRET.encode() not in saved
    in_image = rig.docker("run", "--rm", "--entrypoint", "cat", tag, "/etc/shadow")
    assert [line.split(":")[1] for line in in_image.splitlines() if line.startswith("u1:")] == ["*"]
    # It keeps the base image's command and none of deepdockd's container labels.
    [config] = json.loads(rig.docker("image", "inspect", tag))
    [base] = json.loads(rig.docker("image", "inspect", DEBIAN_SSH_IMAGE))
    assert (config["Config"]["Entrypoint"] or None) == (base["Config"]["Entrypoint"] or None)
    assert config["Config"]["Cmd"] == (base["Config"]["Cmd"] or ["/bin/sh"])
    assert config["Comment"] == "my env"
    labels = config["Config"]["Labels"]
    assert labels["deepdockd.namespace"] == ""
    assert labels["deepdockd.committed-by"] == "alice"

    # alice's alone: listed for her and the admin, absent to bob as a missing image is.
    listed = {
        who: [i["id"] for i in (await people.call(who, "GET", "/images"))[1]["images"]]
        for who in ("alice", "bob", "admin")
    }
    assert image["id"] in listed["alice"]
    assert image["id"] in listed["admin"]
    assert image["id"] not in listed["bob"]
    status, removal = await people.call("bob", "DELETE", f"/images/{tag}")
    _, missing = await people.call("bob", "DELETE", f"/images/{namespace}-none/env:1")
    assert status == 404
    assert removal["error"]["message"].replace(tag, "X") == missing["error"]["message"].replace(
        f"{namespace}-none/env:1", "X"
    )
    status, by_id = await people.call(
        "bob", "POST", "/containers/create", box("bob-1", config["Id"])
    )
    assert (status, by_id["error"]["code"]) == (404, "not_found")
    # bob cannot re-point alice's tag with a commit of his own.
    await created(people, "bob", box("bob-env", BUSYBOX_IMAGE))
    status, taken = await people.call("bob", "POST", "/containers/bob-env/commit", {"tag": tag})
    assert status == 409, taken
    assert taken["error"]["code"] == "tag_taken"
    assert tag in taken["error"]["message"]
    assert json.loads(rig.docker("image", "inspect", tag))[0]["Id"] == config["Id"]
    # Nor commit alice's container: it is absent to him.
    status, hidden = await people.call(
        "bob", "POST", "/containers/alice-env/commit", {"tag": "b:1"}
    )
    assert (status, hidden["error"]["code"]) == (404, "not_found")

    # alice removes her container and creates from the image: her files are back.
    assert (await people.call("alice", "DELETE", "/containers/alice-env?force=true"))[0] == 200
    port = await created(people, "alice", box("alice-env2", tag))
    back = ssh(port, "u1", "pw-alice-env2", "cat /tmp/kept.txt ~/home.txt")
    assert back.returncode == 0, back.stderr
    assert back.stdout.split() == ["kept", "in-home"]


async def test_a_commit_with_the_bundled_ssh_server_logs_in_from_the_image(
    people: People, rig: Rig, namespace: str, tmp_path: Path
) -> None:
    tag = f"{namespace}-alice/busybox:1"
    port = await created(people, "alice", box("alice-bb", BUSYBOX_IMAGE))
    # The test image's /tmp is root's; most images' is everyone's.
    rig.docker("exec", "alice-bb", "chmod", "1777", "/tmp")
    made = ssh(port, "u1", "pw-alice-bb", "echo kept > /tmp/kept.txt")
    assert made.returncode == 0, made.stderr
    hash_before = shadow_line(rig, "alice-bb").split(":")[1]

    since = time.time()
    status, image = await people.call(
        "alice", "POST", "/containers/alice-bb/commit", {"tag": tag, "pause": False}
    )

    assert status == 201, image
    assert pauses(rig, "alice-bb", since) == []
    # The bundled server's sessions get their env again, and the password works.
    again = ssh(port, "u1", "pw-alice-bb", "echo $PROJECT_TOKEN")
    assert (again.returncode, again.stdout.strip()) == (0, ENV_SECRET), again.stderr
    _, saved = image_contents(rig, tag, tmp_path)
    assert hash_before.encode() not in saved
    assert ENV_SECRET.encode() not in saved
    port = await created(people, "alice", box("alice-bb2", tag, persistent_home=False))
    back = ssh(port, "u1", "pw-alice-bb2", "cat /tmp/kept.txt && echo $PROJECT_TOKEN")
    assert back.returncode == 0, back.stderr
    assert back.stdout.split() == ["kept", ENV_SECRET]


async def test_a_commit_names_what_is_wrong(people: People, namespace: str) -> None:
    await created(people, "alice", box("alice-bad", BUSYBOX_IMAGE))

    async def commit(body: Any, name: str = "alice-bad") -> tuple[int, Any]:
        return await people.call("alice", "POST", f"/containers/{name}/commit", body)

    bad_tag = await commit({"tag": "Not A Tag"})
    digest = await commit({"tag": "x@sha256:" + "0" * 64})
    no_tag = await commit({"message": "m"})
    unknown = await commit({"tag": "x:1", "paws": True})
    missing = await commit({"tag": "x:1"}, name="no-such-box")
    admins_tag = await commit({"tag": BUSYBOX_IMAGE})  # on the host first: the admins'

    assert bad_tag[0] == 422
    assert bad_tag[1]["error"]["message"].startswith("tag: 'Not A Tag' is not an image reference")
    assert bad_tag[1]["error"]["details"] == {"field": "tag"}
    assert (digest[0], digest[1]["error"]["details"]) == (422, {"field": "tag"})
    assert no_tag[0] == 422
    assert "tag" in no_tag[1]["error"]["details"]["fields"]
    assert unknown[0] == 422
    assert (missing[0], missing[1]["error"]["code"]) == (404, "not_found")
    assert (admins_tag[0], admins_tag[1]["error"]["code"]) == (409, "tag_taken")
    assert admins_tag[1]["error"]["details"] == {"tag": BUSYBOX_IMAGE}


async def test_a_committed_image_counts_toward_its_owners_disk_quota(
    aiohttp_client: ClientFactory,
    config: Config,
    rig: Rig,
    ssh_ports: tuple[int, int],
    namespace: str,
) -> None:
    # 50 MiB for alice, measured every half second.
    quotas = parse_quotas({"users": {"alice": {"max_disk_gb": 50 / 1024}}})
    made = replace(
        config, auth=True, ssh_port_range=ssh_ports, disk_usage_interval=0.5, quotas=quotas
    )
    people = People(
        await aiohttp_client(create_app(made)), users_tokens(TokenStore(made.state_dir))
    )
    try:
        port = await created(
            people, "alice", box("alice-big", BUSYBOX_IMAGE, persistent_home=False)
        )
        rig.docker("exec", "alice-big", "chmod", "1777", "/tmp")
        wrote = ssh(port, "u1", "pw-alice-big", "dd if=/dev/zero of=/tmp/big bs=1M count=30")
        assert wrote.returncode == 0, wrote.stderr
        commit = {"tag": f"{namespace}-alice/big:1"}
        status, image = await people.call("alice", "POST", "/containers/alice-big/commit", commit)
        assert status == 201, image

        # The container's 30 MiB and the image's own 30 MiB: over the quota once measured.
        used_mb = 0.0
        async with asyncio.timeout(30):
            while used_mb < 58:
                await asyncio.sleep(0.2)
                used_mb = (await people.call("alice", "GET", "/quota"))[1]["used"]["disk_mb"] or 0
        status, refused = await people.call(
            "alice", "POST", "/containers/alice-big/commit", {"tag": f"{namespace}-alice/big:2"}
        )

        assert status == 403, refused
        assert refused["error"]["code"] == "quota_exceeded"
        assert refused["error"]["details"]["limit"] == "max_disk_gb"
    finally:
        clear_namespace(rig, config.namespace)


def test_only_the_committers_own_images_count_in_their_disk_use() -> None:
    def image(committed_by: str, size_mib: int) -> DiskEntry:
        name = f"sha256:{committed_by}{size_mib}"
        by = {"deepdockd.committed-by": committed_by, "deepdockd.committed-in": "ns"}
        return DiskEntry(id=name, name=name, labels=by, size_bytes=size_mib * MIB)

    volume = DiskEntry(id="v", name="v", labels={"deepdockd.owner": "alice"}, size_bytes=MIB)
    images = [image("alice", 30), image("alice", 5), image("bob", 7)]
    measured = DiskMeasurement(
        containers={}, volumes={"v": volume}, measured_at=now_utc(),
        images={i.id: i for i in images},
    )  # fmt: skip

    assert measured.owner_bytes("alice") == 36 * MIB
    assert measured.owner_bytes("bob") == 7 * MIB


async def test_a_container_with_its_bootstrap_files_copied_in_is_not_committed(
    aiohttp_client: ClientFactory, config: Config, rig: Rig, ssh_ports: tuple[int, int]
) -> None:
    # Its /.deepdockd-in is on its disk, with its host key: the commit would take them.
    made = replace(config, ssh_port_range=ssh_ports, mount_host_files=False)
    client = await aiohttp_client(create_app(made))
    try:
        answer = await client.post("/containers/create", json=box("copied", BUSYBOX_IMAGE))
        assert answer.status == 201, await answer.text()

        refused = await client.post("/containers/copied/commit", json={"tag": "copied:1"})

        assert refused.status == 409
        error = (await refused.json())["error"]
        assert error["code"] == "commit_unsupported"
        assert "copied into it" in error["message"]
        images = await (await client.get("/images")).json()
        assert not [i for i in images["images"] if "copied:1" in i["tags"]]
    finally:
        clear_namespace(rig, config.namespace)

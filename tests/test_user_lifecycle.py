"""A user's end of life (issue 29, item 3), on the rig with a real second user: a revoked
user's containers stop (``token revoke --stop``, ``user remove``), so her SSH logins end and
her GPUs go to others; what is left in her name is said; and the name is not handed to the
next person of that name with her home and her containers unless the admin says ``--inherit``.
The ``deepdockd`` command runs as a real subprocess against the rig's dockerd, as an admin
runs it on the host."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import RunningDaemon, http_json, run_deepdockd
from tests.support.gpus import NVML_SIM_LIBRARY, sim_gpu
from tests.support.images import random_layer_tar
from tests.support.rig import (
    BUSYBOX_IMAGE,
    DEBIAN_SSH_IMAGE,
    PRIVATE_REGISTRY_ADDR,
    PRIVATE_REGISTRY_USER,
    Rig,
)
from tests.support.ssh import ssh

NO_DOCKER = "unix:///nonexistent/docker.sock"


@dataclass
class Lab:
    """A deepdockd with auth on, on the rig, and the admin's ``deepdockd`` command beside it."""

    rig: Rig
    daemon: RunningDaemon
    namespace: str

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``deepdockd ARGS`` as the admin runs it on the host: the daemon's state directory,
        Docker and namespace (from the environment, as a config file would give them)."""
        env = {"DEEPDOCKD_DOCKER_HOST": self.rig.docker_host, "DEEPDOCKD_NAMESPACE": self.namespace}
        return run_deepdockd(
            args[0], "--state-dir", str(self.daemon.state_dir), *args[1:], env=env, timeout_s=120
        )

    def add(self, user: str) -> str:
        added = self.command("token", "add", user)
        assert added.returncode == 0, added.stderr
        return added.stdout.strip()

    def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        return http_json(
            method, f"{self.daemon.base}{path}", json_body=body, token=token, timeout_s=180
        )

    def create(self, token: str, name: str, **extra: Any) -> dict[str, Any]:
        fields = {"name": name, "image": DEBIAN_SSH_IMAGE, "user_name": "alice"} | extra
        status, answer = self.call("POST", "/containers/create", token, fields)
        assert status == 201, answer
        return dict(answer)

    def state(self, name: str) -> str:
        return self.rig.docker("inspect", "--format", "{{.State.Status}}", name).strip()

    def home(self, user: str) -> str:
        return f"{self.namespace}-home-{user}.alice"

    def read_home(self, volume: str, path: str) -> str:
        """A file of a home volume, read by a container of the rig's own (not deepdockd's)."""
        return self.rig.docker(
            "run", "--rm", "--volume", f"{volume}:/h", BUSYBOX_IMAGE, "cat", f"/h/{path}"
        )


@pytest.fixture
def lab(
    rig: Rig,
    rig_daemon: Callable[..., RunningDaemon],
    namespace: str,
    ssh_ports: tuple[int, int],
    gpu_stem: str,
    sim_gpus: Callable[..., Path],
    cleanup: None,
) -> Lab:
    """One simulated GPU, of this test's own."""
    gpus = sim_gpus(sim_gpu(0, stem=gpu_stem))
    env = {
        "DEEPDOCKD_NAMESPACE": namespace,
        "DEEPDOCKD_SSH_PORT_RANGE": f"{ssh_ports[0]}-{ssh_ports[1]}",
        "LD_LIBRARY_PATH": str(NVML_SIM_LIBRARY.parent),
        "NVML_SIM_CONFIG": str(gpus),
    }
    return Lab(rig, rig_daemon(env=env, auth=True), namespace)


def left(lab: Lab, user: str, *things: str) -> str:
    """What the command says is left in ``user``'s name."""
    if not things:
        return f"nothing is left in {user}'s name (namespace {lab.namespace})\n"
    return (
        f"left in {user}'s name (namespace {lab.namespace}):\n"
        + "".join(f"  {thing}\n" for thing in things)
        + f"they stay until an admin removes them (DELETE /containers/NAME, /volumes/NAME, "
        f"/images/REF); until then `deepdockd token add {user}` is refused, unless --inherit "
        "hands them to the new token\n"
    )


def test_revoke_with_stop_ends_her_containers_logins_and_gpus_and_keeps_her_home(
    lab: Lab,
) -> None:
    alice, bob = lab.add("alice"), lab.add("bob")
    box, bobs = f"{lab.namespace}-alice", f"{lab.namespace}-bob"
    made = lab.create(alice, box, password="pw-alice", gpu_ids=[0])
    port = made["ssh-port"]
    wrote = ssh(port, "alice", "pw-alice", "echo mine > ~/notes.txt && echo written")
    assert wrote.stdout == "written\n", wrote.stderr
    held = lab.call("POST", "/containers/create", bob, {
        "name": bobs, "image": DEBIAN_SSH_IMAGE, "user_name": "bob", "password": "pw-bob",
        "gpu_ids": [0],
    })  # fmt: skip
    assert held[0] == 409, held  # alice's GPU
    with subprocess.Popen(  # an SSH login of hers that is open when the admin acts
        [
            "sshpass", "-e", "ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no",
            "-o", "LogLevel=ERROR", "alice@127.0.0.1", "echo in; exec sleep 600",
        ],
        env={"SSHPASS": "pw-alice", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as session:  # fmt: skip
        try:
            assert session.stdout is not None
            assert session.stdout.readline() == "in\n"

            revoked = lab.command("token", "revoke", "alice", "--stop")

            session_ended = session.wait(timeout=60)
        finally:
            if session.poll() is None:
                session.kill()
    again = ssh(port, "alice", "pw-alice", "true")
    her_calls = lab.call("GET", "/containers", alice)
    bobs_create = lab.call("POST", "/containers/create", bob, {
        "name": bobs, "image": DEBIAN_SSH_IMAGE, "user_name": "bob", "password": "pw-bob",
        "gpu_ids": [0],
    })  # fmt: skip

    assert revoked.returncode == 0, revoked.stderr
    volume = f"home volume {lab.home('alice')} (mounted by {box})"
    assert revoked.stdout == f"revoked the token of alice\nstopped {box}\n" + left(
        lab, "alice", f"container {box} (exited)", volume
    )
    assert revoked.stderr == ""
    assert lab.state(box) == "exited"  # stopped, not removed
    assert session_ended != 0  # her open login ended with the container
    assert again.returncode == 255  # and no new one gets in
    assert her_calls[0] == 401
    assert bobs_create[0] == 201, bobs_create  # her GPU is free for bob
    assert lab.call("GET", f"/containers/{bobs}", bob)[1]["gpus"] == ["0"]
    assert lab.read_home(lab.home("alice"), "notes.txt") == "mine\n"  # her work is kept


def test_a_name_that_still_owns_things_is_given_again_only_with_inherit(lab: Lab) -> None:
    alice = lab.add("alice")
    box = f"{lab.namespace}-alice"
    lab.create(alice, box, password="pw-alice")
    tokens = lab.daemon.state_dir / "tokens.json"

    revoked = lab.command("token", "revoke", "alice")  # no --stop: it keeps running
    before = tokens.read_text()
    refused = lab.command("token", "add", "alice")  # for someone else, who took the name
    after_refusal = tokens.read_text()
    inherited = lab.command("token", "add", "alice", "--inherit")
    new_alice = inherited.stdout.strip()
    listed = lab.call("GET", "/containers", new_alice)

    volume = lab.home("alice")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == "revoked the token of alice\n" + left(
        lab, "alice", f"container {box} (running)", f"home volume {volume} (mounted by {box})"
    )
    assert lab.state(box) == "running"
    assert refused.returncode == 2
    assert refused.stdout == ""  # no token was made
    assert refused.stderr == (
        f"deepdockd token: alice still owns what a user of that name left (namespace "
        f"{lab.namespace}):\n"
        f"  container {box} (running)\n"
        f"  home volume {volume} (mounted by {box})\n"
        "a token for alice would hand all of it to whoever holds the token: remove them first "
        "(as an admin: DELETE /containers/NAME, /volumes/NAME, /images/REF), or add the token "
        "with --inherit if they are to be this user's\n"
    )
    assert after_refusal == before
    assert "alice" not in json.loads(after_refusal)["users"]
    assert inherited.returncode == 0, inherited.stderr
    assert new_alice.startswith("ddk_")
    assert inherited.stderr == (
        f"alice inherits (namespace {lab.namespace}):\n"
        f"  container {box} (running)\n"
        f"  home volume {volume} (mounted by {box})\n"
        "token for alice (user): shown once, keep it secret\n"
    )
    assert listed[0] == 200
    assert [c["name"] for c in listed[1]["containers"]] == [box]


@pytest.fixture
def private_image(rig: Rig) -> Iterator[str]:
    """An image in the rig's registry that wants a password, not in the engine."""
    reference = f"{PRIVATE_REGISTRY_ADDR}/deepdockd-test/private-{uuid.uuid4().hex[:8]}:1"
    rig.docker("import", "-", reference, input=random_layer_tar(1))
    rig.docker("push", reference)
    rig.docker("rmi", reference)
    yield reference
    if rig.image_exists(reference):
        rig.docker("rmi", "--force", reference)


def test_user_remove_stops_by_default_and_names_her_private_images_and_tags(
    lab: Lab, private_image: str, registry_image: Callable[..., str]
) -> None:
    alice = lab.add("alice")
    box = f"{lab.namespace}-alice"
    lab.create(alice, box, password="pw-alice")
    credentials = {"username": PRIVATE_REGISTRY_USER, "password": lab.rig.private_registry_password}
    pulled = lab.call("POST", "/images", alice, {"repo_tag": private_image, "auth": credentials})
    assert pulled[0] == 200, pulled
    public = registry_image()  # a tag she sets: hers to move, as item 1 of issue 29 has it
    assert lab.call("POST", "/images", alice, {"repo_tag": public})[0] == 200
    tag = f"tag {public} (set by alice, who may move it)"
    image_id = lab.rig.docker("image", "inspect", "--format", "{{.Id}}", private_image).strip()
    image = f"private image {image_id.removeprefix('sha256:')[:12]} ({private_image})"
    volume = f"home volume {lab.home('alice')}"

    kept = lab.command("user", "remove", "alice", "--no-stop")
    state_kept = lab.state(box)
    removed = lab.command("user", "remove", "alice")
    state_removed = lab.state(box)
    refused = lab.command("token", "add", "alice")

    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == "revoked the token of alice\n" + left(
        lab, "alice", f"container {box} (running)", f"{volume} (mounted by {box})", image, tag
    )
    assert state_kept == "running"
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"alice has no token\nstopped {box}\n" + left(
        lab, "alice", f"container {box} (exited)", f"{volume} (mounted by {box})", image, tag
    )
    assert state_removed == "exited"
    assert refused.returncode == 2
    assert f"  {image}\n  {tag}\n" in refused.stderr
    assert lab.rig.image_exists(private_image)  # nothing is removed


def test_a_name_with_nothing_left_is_added_and_removed_plainly(lab: Lab) -> None:
    added = lab.command("token", "add", "carol")
    removed = lab.command("user", "remove", "carol")
    again = lab.command("token", "add", "carol")

    assert (added.returncode, added.stdout.startswith("ddk_")) == (0, True)
    assert added.stderr == "token for carol (user): shown once, keep it secret\n"
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == "revoked the token of carol\n" + left(lab, "carol")
    assert again.returncode == 0, again.stderr


def test_unreadable_image_records_refuse_the_name_but_not_the_stop(lab: Lab) -> None:
    alice = lab.add("alice")
    box = f"{lab.namespace}-alice"
    lab.create(alice, box, password="pw-alice")
    images = lab.daemon.state_dir / "images.json"
    images.write_text('{"private": ')  # a hand edit gone wrong: who owns which image is unknown

    removed = lab.command("user", "remove", "alice")
    refused = lab.command("token", "add", "alice")

    assert removed.returncode == 2
    assert removed.stdout == f"revoked the token of alice\nstopped {box}\n"
    assert removed.stderr.startswith(
        f"deepdockd user: cannot tell what is left in alice's name: {images} cannot be read"
    ), removed.stderr
    assert removed.stderr.endswith("run `deepdockd user remove alice` once that is mended\n")
    assert lab.state(box) == "exited"
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith(
        f"deepdockd token: cannot tell what alice still owns: {images} cannot be read"
    ), refused.stderr
    assert refused.stderr.endswith(
        "mend that and try again, or add the token with --inherit if whatever the name owns is "
        "to be this user's\n"
    )


# --- without Docker: nothing is given away unchecked ---


def command_without_docker(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_deepdockd(
        args[0], "--state-dir", str(state), *args[1:], env={"DEEPDOCKD_DOCKER_HOST": NO_DOCKER}
    )


def test_a_name_is_not_added_while_docker_cannot_say_what_it_owns(tmp_path: Path) -> None:
    state = tmp_path / "state"

    refused = command_without_docker(state, "token", "add", "alice")
    refused_files = sorted(p.name for p in state.iterdir()) if state.exists() else []
    inherited = command_without_docker(state, "token", "add", "alice", "--inherit")

    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr == (
        "deepdockd token: cannot tell what alice still owns: Docker is not reachable at "
        f"{NO_DOCKER}: No such file or directory; start Docker and try again, or add the token with "
        "--inherit if whatever the name owns is to be this user's\n"
    )
    assert "tokens.json" not in refused_files
    assert inherited.returncode == 0, inherited.stderr
    assert inherited.stdout.startswith("ddk_")
    assert inherited.stderr == (
        "deepdockd token: cannot tell what alice inherits: Docker is not reachable at "
        f"{NO_DOCKER}: No such file or directory\n"
        "token for alice (user): shown once, keep it secret\n"
    )


def test_a_revoke_goes_through_when_docker_cannot_stop_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    inherited = command_without_docker(state, "token", "add", "alice", "--inherit")
    assert inherited.returncode == 0, inherited.stderr

    revoked = command_without_docker(state, "token", "revoke", "alice", "--stop")

    assert revoked.returncode == 2
    assert revoked.stdout == "revoked the token of alice\n"
    assert revoked.stderr == (
        "deepdockd token: cannot stop alice's containers or tell what is left: Docker is not "
        f"reachable at {NO_DOCKER}: No such file or directory; the token is revoked all the same: run "
        "`deepdockd user remove alice` once Docker answers\n"
    )
    assert "alice" not in json.loads((state / "tokens.json").read_text())["users"]

"""Image trust on a shared host, written as the attacker acts: with a user's token and a
registry they control, against another user's tag and another user's private image. The
rig's real registries and engine; what the victim would see, and what Docker holds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import stat
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory
from tests.support.docker_state import clear_namespace
from tests.support.images import random_layer_tar
from tests.support.rig import (
    DEBIAN_SSH_IMAGE,
    PRIVATE_REGISTRY_ADDR,
    PRIVATE_REGISTRY_USER,
    REGISTRY_ADDR,
    Rig,
    RigError,
)
from tests.support.users import users_tokens

# The rig's open registry under another name: a push through it changes what the registry
# serves under a tag without touching the engine's tag of the same image (127.0.0.1:5000/…),
# which is what a registry that someone else controls does.
REGISTRY_ALIAS = REGISTRY_ADDR.replace("127.0.0.1", "localhost")


@dataclass
class People:
    client: Client
    tokens: dict[str, str]
    state_dir: Path

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        response = await self.client.request(method, path, json=body, headers=headers)
        return response.status, await response.json()

    async def pull(self, who: str, reference: str, **extra: Any) -> tuple[int, Any]:
        return await self.call(who, "POST", "/images", {"repo_tag": reference, **extra})

    async def create(self, who: str, name: str, image: str) -> tuple[int, Any]:
        box = {"name": name, "image": image, "user_name": "u1", "password": "pw"}
        return await self.call(who, "POST", "/containers/create", box)

    async def listed(self, who: str) -> str:
        """Everything ``who`` sees of the images, as one text to search."""
        status, body = await self.call(who, "GET", "/images")
        assert status == 200
        return json.dumps(body)


@pytest.fixture
async def people(
    aiohttp_client: ClientFactory, config: Config, rig: Rig, ssh_ports: tuple[int, int]
) -> AsyncIterator[People]:
    """A daemon with auth on, an admin and two users, alice and bob."""
    secured = dataclasses.replace(config, auth=True, ssh_port_range=ssh_ports)
    tokens = users_tokens(TokenStore(secured.state_dir))
    yield People(await aiohttp_client(create_app(secured)), tokens, secured.state_dir)
    clear_namespace(rig, config.namespace)


@dataclass(frozen=True)
class Pushed:
    image_id: str  # "sha256:…", the same in the engine once pulled
    digest: str  # the manifest's digest in the registry


Push = Callable[..., Pushed]


@pytest.fixture
def push(rig: Rig) -> Iterator[Push]:
    """Factory: make an image and push it to a registry under ``reference``, leaving the
    engine as it was (neither the image nor ``reference`` is there afterwards). With
    ``marker`` it is the Debian image with sshd and a file /marker that says which it is;
    without, a random layer. Whatever the tests pulled of these is removed at the end."""
    pulled: list[str] = []

    def make(reference: str, marker: str | None = None) -> Pushed:
        name = reference.replace(REGISTRY_ADDR, REGISTRY_ALIAS, 1)
        if marker is None:
            image_id = rig.docker("import", "-", name, input=random_layer_tar(1)).strip()
        else:
            image_id = marked_image(rig, name, marker)
        output = rig.docker("push", name)
        rig.docker("rmi", name)
        pulled.extend([reference, image_id])
        [digest] = re.findall(r"digest: (sha256:[0-9a-f]{64})", output)
        return Pushed(image_id, digest)

    yield make
    for ref in pulled:
        if rig.image_exists(ref):
            with contextlib.suppress(RigError):  # a container of the test may still use it
                rig.docker("rmi", "--force", ref)


def marked_image(rig: Rig, name: str, marker: str) -> str:
    """The Debian image with sshd and a file /marker that says ``marker``, tagged ``name`` in
    the engine; its id."""
    builder = f"build-{uuid.uuid4().hex[:8]}"
    rig.docker("run", "--name", builder, DEBIAN_SSH_IMAGE, "sh", "-c", f"echo {marker} >/marker")
    try:
        return rig.docker("commit", "--change", 'CMD ["/bin/bash"]', builder, name).strip()
    finally:
        rig.docker("rm", builder)


@pytest.fixture
def local(rig: Rig) -> Iterator[Callable[[str, str], str]]:
    """Factory: an image made on the host (built or loaded, never pulled through deepdockd)
    under ``tag``, with /marker; its id. Removed at the end."""
    made: list[str] = []

    def make(tag: str, marker: str) -> str:
        image_id = marked_image(rig, tag, marker)
        made.extend([tag, image_id])
        return image_id

    yield make
    for ref in made:
        if rig.image_exists(ref):
            with contextlib.suppress(RigError):
                rig.docker("rmi", "--force", ref)


def inspect(rig: Rig, name: str) -> dict[str, Any]:
    [data] = json.loads(rig.docker("inspect", name))
    return dict(data)


def runs(rig: Rig, container: str) -> tuple[bool, str, str, str]:
    """What a container runs: whether it runs, its image, its image id label, its /marker."""
    data = inspect(rig, container)
    marker = rig.docker("exec", container, "cat", "/marker").strip()
    return (
        data["State"]["Running"],
        data["Image"],
        data["Config"]["Labels"]["deepdockd.image-id"],
        marker,
    )


def error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


# Why a user's pull may not move a tag, and the rule that says so.
ON_THE_HOST_FIRST = (
    "that was on this host before deepdockd recorded who set it",
    "only an admin may move it",
)
AN_ADMIN_SET = ("an admin set", "only an admin may move it")
ANOTHER_USER_SET = (
    "another user set",
    "only the user who set it last, or an admin, may move it",
)
ANOTHER_USERS_CONTAINER = (
    "another user's container was created from",
    "your pull would change what it runs for them",
)


def tag_in_use(reference: str, rule: tuple[str, str], digest: str) -> dict[str, Any]:
    repository = reference.rsplit(":", 1)[0]
    why, only = rule
    return error(
        "tag_in_use",
        f"{reference} is a tag {why}, and registry {REGISTRY_ADDR} now serves another image "
        f"under it: {only}. Pull that image by digest ({repository}@{digest}) or under a tag "
        f"of your own, or ask an admin to pull {reference}",
        reference=reference,
        registry=REGISTRY_ADDR,
        digest=digest,
    )


def records(people: People) -> dict[str, Any]:
    """deepdockd's records of images (none until one is written)."""
    path = people.state_dir / "images.json"
    if not path.exists():
        return {"private": {}, "tags": {}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document: dict[str, Any] = json.loads(path.read_text())
    return document


# --- a tag everyone uses ---


async def test_a_users_pull_cannot_re_point_a_tag_another_users_container_runs(
    push: Push, people: People, rig: Rig
) -> None:
    tag = f"{REGISTRY_ADDR}/team/cuda-{uuid.uuid4().hex[:8]}:12"
    clean = push(tag, marker="clean")
    assert (await people.pull("alice", tag))[0] == 200
    assert (await people.create("alice", "alice-first", tag))[0] == 201
    refresh = await people.pull("bob", tag)  # the registry still serves alice's image
    bobs = push(tag, marker="bobs")  # bob's registry now serves another image under the tag

    bobs_pull = await people.pull("bob", tag)
    tag_after_bobs_pull = inspect(rig, tag)["Id"]
    alices_next = await people.create("alice", "alice-next", tag)

    assert refresh == (200, {
        "message": f"Image '{tag}' pulled successfully.", "id": short(clean.image_id),
        "tags": [tag], "size_mb": refresh[1]["size_mb"],
    })  # fmt: skip
    assert bobs_pull == (403, tag_in_use(tag, ANOTHER_USER_SET, bobs.digest))
    assert tag_after_bobs_pull == clean.image_id
    assert not rig.image_exists(bobs.image_id)  # nothing of it was pulled
    assert alices_next[0] == 201, alices_next
    for name in ("alice-first", "alice-next"):
        assert runs(rig, name) == (True, clean.image_id, clean.image_id, "clean")

    # An admin may re-point it; alice's containers run what they ran.
    admins_pull = await people.pull("admin", tag)

    assert admins_pull[0] == 200
    assert admins_pull[1]["id"] == short(bobs.image_id)
    assert inspect(rig, tag)["Id"] == bobs.image_id
    for name in ("alice-first", "alice-next"):
        assert runs(rig, name) == (True, clean.image_id, clean.image_id, "clean")
    status, listing = await people.call("alice", "GET", "/containers")
    assert status == 200
    assert sorted((c["name"], c["image"], c["image_id"]) for c in listing["containers"]) == [
        ("alice-first", [tag], clean.image_id),
        ("alice-next", [tag], clean.image_id),
    ]


async def test_a_tag_an_admin_pulled_is_theirs_to_re_point_and_a_users_own_is_theirs(
    push: Push, people: People, rig: Rig
) -> None:
    curated = f"{REGISTRY_ADDR}/team/base-{uuid.uuid4().hex[:8]}:1"
    own = f"{REGISTRY_ADDR}/bob/scratch-{uuid.uuid4().hex[:8]}:dev"
    first = push(curated)
    assert (await people.pull("admin", curated))[0] == 200
    refresh = await people.pull("alice", curated)
    second = push(curated)

    refused = await people.pull("alice", curated)
    by_digest = await people.pull("alice", f"{curated.rsplit(':', 1)[0]}@{second.digest}")
    push(own)
    bobs_first = await people.pull("bob", own)
    bobs_second_image = push(own)
    bobs_second = await people.pull("bob", own)  # no one else relies on it

    assert refresh[0] == 200
    assert refresh[1]["id"] == short(first.image_id)
    assert refused == (403, tag_in_use(curated, AN_ADMIN_SET, second.digest))
    assert by_digest[0] == 200  # what the message offers: a pull by digest moves no tag
    assert by_digest[1]["id"] == short(second.image_id)
    assert inspect(rig, curated)["Id"] == first.image_id
    assert bobs_first[0] == 200
    assert bobs_second[0] == 200
    assert inspect(rig, own)["Id"] == bobs_second_image.image_id
    assert records(people)["tags"] == {
        curated: {"image_id": first.image_id, "set_by": None},
        own: {"image_id": bobs_second_image.image_id, "set_by": "bob"},
    }


async def test_a_tag_that_was_on_the_host_first_is_the_admins_to_move(
    local: Callable[[str, str], str], push: Push, people: People, rig: Rig
) -> None:
    # The steps: a tag built or loaded on the host; bob creates from it and removes
    # his container; alice pulls the tag from a registry she controls.
    tag = f"{REGISTRY_ADDR}/lab/base-{uuid.uuid4().hex[:8]}:1"
    original = local(tag, "original")
    first = await people.create("bob", "bob-first", tag)
    assert first[0] == 201, first
    assert (await people.call("bob", "DELETE", "/containers/bob-first?force=true"))[0] == 200
    trojan = push(tag, marker="trojan")

    alices_pull = await people.pull("alice", tag)
    bobs_next = await people.create("bob", "bob-next", tag)

    assert alices_pull == (403, tag_in_use(tag, ON_THE_HOST_FIRST, trojan.digest))
    assert inspect(rig, tag)["Id"] == original
    assert not rig.image_exists(trojan.image_id)  # nothing of it was pulled
    assert bobs_next[0] == 201, bobs_next
    assert runs(rig, "bob-next") == (True, original, original, "original")

    # What the refusal offers: the image by digest, or under a tag of her own.
    repository = tag.rsplit(":", 1)[0]
    own = f"{repository}:alice"
    alices_own = push(own)
    by_digest = await people.pull("alice", f"{repository}@{trojan.digest}")
    own_tag = await people.pull("alice", own)  # a tag the host lacks

    assert by_digest[0] == 200
    assert own_tag[0] == 200
    assert inspect(rig, tag)["Id"] == original
    # No one set the first tag through deepdockd; alice set her own.
    assert records(people)["tags"] == {own: {"image_id": alices_own.image_id, "set_by": "alice"}}


async def test_a_users_tag_is_theirs_alone_to_move_while_no_one_else_runs_it(
    push: Push, people: People, rig: Rig
) -> None:
    tag = f"{REGISTRY_ADDR}/bob/tool-{uuid.uuid4().hex[:8]}:1"
    push(tag, marker="first")
    assert (await people.pull("bob", tag))[0] == 200  # a tag the host lacked: bob set it
    second = push(tag, marker="second")

    alices_pull = await people.pull("alice", tag)
    bobs_pull = await people.pull("bob", tag)
    alices_box = await people.create("alice", "alice-tool", tag)
    third = push(tag, marker="third")
    bobs_next_pull = await people.pull("bob", tag)

    assert alices_pull == (403, tag_in_use(tag, ANOTHER_USER_SET, second.digest))
    assert bobs_pull[0] == 200
    assert bobs_pull[1]["id"] == short(second.image_id)
    assert alices_box[0] == 201, alices_box
    assert bobs_next_pull == (403, tag_in_use(tag, ANOTHER_USERS_CONTAINER, third.digest))
    assert runs(rig, "alice-tool") == (True, second.image_id, second.image_id, "second")
    assert inspect(rig, tag)["Id"] == second.image_id
    assert records(people)["tags"] == {tag: {"image_id": second.image_id, "set_by": "bob"}}


# --- a private image ---


async def test_a_private_image_is_absent_for_other_users(
    push: Push, people: People, rig: Rig
) -> None:
    repository = f"{PRIVATE_REGISTRY_ADDR}/team/secret-{uuid.uuid4().hex[:8]}"
    private, never_pushed = f"{repository}:1", f"{repository}:never-pushed"
    missing_id = "sha256:" + "0" * 64
    secret = push(private, marker="secret")
    credentials = {"username": PRIVATE_REGISTRY_USER, "password": rig.private_registry_password}

    assert (await people.pull("alice", private, auth=credentials))[0] == 200
    as_missing = {  # what bob gets for a missing image, with the private one's name
        "pull": await people.pull("bob", never_pushed),
        "create": await people.create("bob", "bob-box", never_pushed),
        "create by id": await people.create("bob", "bob-box", missing_id),
        "delete": await people.call("bob", "DELETE", f"/images/{never_pushed}"),
        "delete by id": await people.call("bob", "DELETE", f"/images/{missing_id}"),
    }
    as_missing = json.loads(
        json.dumps(as_missing).replace(never_pushed, private).replace(missing_id, secret.image_id)
    )

    async def bob_tries() -> dict[str, Any]:
        return {
            "pull": list(await people.pull("bob", private)),
            "create": list(await people.create("bob", "bob-box", private)),
            "create by id": list(await people.create("bob", "bob-box", secret.image_id)),
            "delete": list(await people.call("bob", "DELETE", f"/images/{private}")),
            "delete by id": list(await people.call("bob", "DELETE", f"/images/{secret.image_id}")),
        }

    before_alice_uses_it = await bob_tries()
    bob_sees = await people.listed("bob")
    alice_sees, admin_sees = await people.listed("alice"), await people.listed("admin")
    alices_box = await people.create("alice", "alice-box", private)
    admins_box = await people.create("admin", "admin-box", secret.image_id)
    after_alice_uses_it = await bob_tries()

    wants_credentials = error(
        "registry_auth_failed",
        f'registry {PRIVATE_REGISTRY_ADDR} wants credentials for {private} (send "auth")',
        reference=private,
        registry=PRIVATE_REGISTRY_ADDR,
    )
    absent = {
        "pull": [502, wants_credentials],
        "create": [502, wants_credentials],
        "create by id": [
            404,
            error("not_found", f"no image {secret.image_id!r} on this host", image=secret.image_id),
        ],
        "delete": [
            404,
            error("not_found", f"no image {private!r} on this host", image_ref=private),
        ],
        "delete by id": [
            404,
            error(
                "not_found",
                f"no image {secret.image_id!r} on this host",
                image_ref=secret.image_id,
            ),
        ],
    }
    assert as_missing == absent
    assert before_alice_uses_it == absent
    assert after_alice_uses_it == absent  # its tag now in use: still the answer of a missing one
    assert rig.image_exists(private)
    assert rig.docker("ps", "-aq", "--filter", "label=deepdockd.owner=bob").split() == []
    assert private not in bob_sees
    assert short(secret.image_id) not in bob_sees
    assert private in alice_sees
    assert private in admin_sees
    assert alices_box[0] == 201, alices_box
    assert admins_box[0] == 201, admins_box
    assert runs(rig, "alice-box") == (True, secret.image_id, secret.image_id, "secret")
    assert runs(rig, "admin-box") == (True, secret.image_id, secret.image_id, "secret")
    assert records(people)["private"] == {
        secret.image_id: {"owners": ["alice"], "references": [private]}
    }

    # With credentials of his own, bob pulls it too: then it is his as well.
    bobs_pull = await people.pull("bob", private, auth=credentials)

    assert bobs_pull[0] == 200
    assert private in await people.listed("bob")
    assert records(people)["private"][secret.image_id]["owners"] == ["alice", "bob"]

    # An admin removes it, and its record goes with it.
    for name in ("alice-box", "admin-box"):
        assert (await people.call("admin", "DELETE", f"/containers/{name}?force=true"))[0] == 200
    alices_delete = await people.call("alice", "DELETE", f"/images/{private}")
    admins_delete = await people.call("admin", "DELETE", f"/images/{private}")

    assert alices_delete == (403, error(
        "forbidden", "only admins may remove images: other users' containers may need them"
    ))  # fmt: skip
    assert admins_delete[0] == 200
    assert not rig.image_exists(secret.image_id)
    assert records(people)["private"] == {}


async def test_a_pull_with_credentials_does_not_hide_a_public_image(
    push: Push, people: People, rig: Rig
) -> None:
    # The open registry takes any credentials: bob's pull with them brings an image that
    # alice pulled without, and that stays public.
    public = f"{REGISTRY_ADDR}/team/public-{uuid.uuid4().hex[:8]}:1"
    image = push(public)
    assert (await people.pull("alice", public))[0] == 200

    bobs_pull = await people.pull("bob", public, auth={"username": "bob", "password": "x"})

    assert bobs_pull[0] == 200
    assert public in await people.listed("alice")
    assert (await people.call("alice", "DELETE", f"/images/{image.image_id}"))[0] == 403
    assert records(people)["private"] == {}


async def test_a_private_image_by_digest_needs_the_registrys_word_for_each_user(
    push: Push, people: People, rig: Rig
) -> None:
    # The steps: alice pulls from a registry that wants a password; bob asks for the
    # same image by digest without credentials. Docker would complete that pull from its own
    # content after the registry answered 401; the registry's answer is what counts.
    repository = f"{PRIVATE_REGISTRY_ADDR}/p/private-{uuid.uuid4().hex[:8]}"
    secret = push(f"{repository}:2", marker="secret")
    by_digest, never_pushed = f"{repository}@{secret.digest}", f"{repository}@sha256:{'0' * 64}"
    credentials = {"username": PRIVATE_REGISTRY_USER, "password": rig.private_registry_password}
    wrong = {"username": PRIVATE_REGISTRY_USER, "password": "not-the-password"}
    assert (await people.pull("alice", f"{repository}:2", auth=credentials))[0] == 200

    async def bob_tries(reference: str) -> dict[str, Any]:
        return {
            "create": list(await people.create("bob", "bob-box", reference)),
            "pull": list(await people.pull("bob", reference)),
            "pull with wrong credentials": list(await people.pull("bob", reference, auth=wrong)),
        }

    as_missing = json.loads(
        json.dumps(await bob_tries(never_pushed)).replace(never_pushed, by_digest)
    )
    bob_got = await bob_tries(by_digest)
    bob_sees = await people.listed("bob")

    assert as_missing["create"][1]["error"]["code"] == "registry_auth_failed"
    assert bob_got == as_missing
    assert rig.docker("ps", "-aq", "--filter", "label=deepdockd.owner=bob").split() == []
    for trace in (repository, secret.digest, short(secret.image_id)):
        assert trace not in bob_sees  # still private: not made public by bob's tries
    assert records(people)["private"] == {
        secret.image_id: {"owners": ["alice"], "references": [f"{repository}:2"]}
    }

    # With the right credentials the registry vouches for bob: he may use it.
    bobs_pull = await people.pull("bob", by_digest, auth=credentials)
    bobs_box = await people.create("bob", "bob-box", by_digest)

    assert bobs_pull[0] == 200, bobs_pull
    assert bobs_box[0] == 201, bobs_box
    assert runs(rig, "bob-box") == (True, secret.image_id, secret.image_id, "secret")
    assert records(people)["private"][secret.image_id]["owners"] == ["alice", "bob"]


# --- the record of images is a state file that fails closed ---


async def test_a_lost_image_record_keeps_private_images_absent(
    push: Push, people: People, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    private = f"{PRIVATE_REGISTRY_ADDR}/team/lost-{uuid.uuid4().hex[:8]}:1"
    secret = push(private)
    credentials = {"username": PRIVATE_REGISTRY_USER, "password": rig.private_registry_password}
    assert (await people.pull("alice", private, auth=credentials))[0] == 200
    path = people.state_dir / "images.json"

    path.unlink()
    bobs_list = await people.call("bob", "GET", "/images")
    bobs_create = await people.create("bob", "bob-box", secret.image_id)
    bobs_pull = await people.pull("bob", private)
    admins_list = await people.call("admin", "GET", "/images")

    lost = error(
        "image_records_unreadable",
        f"{path} was written before and is gone: until it is restored, image routes are "
        "refused, so that no private image shows (writing it anew as {} forgets who pulled "
        "what: every private image becomes public, every tag the admins')",
    )
    assert bobs_list == (503, lost)
    assert bobs_create == (503, lost)
    assert bobs_pull == (503, lost)
    assert admins_list[0] == 200  # admins see every image: nothing of the record is needed
    assert not path.exists()  # never written over with an empty record
    assert rig.docker("ps", "-aq", "--filter", "label=deepdockd.owner=bob").split() == []
    logged = [r.getMessage() for r in caplog.records if "images.json" in r.getMessage()]
    assert logged == [lost["error"]["message"]]

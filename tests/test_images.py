"""Images against the rig's real registries: list, pull (plain, streamed, shared, private),
delete, and every error a person can meet."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.api import Client
from tests.support.images import registry_layer_files
from tests.support.relays import held_link, slow_link
from tests.support.rig import (
    BUSYBOX_IMAGE,
    PRIVATE_REGISTRY_ADDR,
    PRIVATE_REGISTRY_USER,
    REGISTRY_ADDR,
    Rig,
)

MakeImage = Callable[..., str]
ClientAllowing = Callable[..., Awaitable[Client]]
NDJSON = {"Accept": "application/x-ndjson"}

# The seed's examples (deepdock-api-reference.md, section 1): our answers keep every key, with
# a value of the same type.
SEED_LIST_ITEM = {
    "id": "8aef630a54bc",
    "tag": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04",
    "digest": "nvidia/cuda@sha256:8aef630a54bc5c5146ae5ce68e6af5caa3df0fb690bb91544175c91f307e4356",
    "size_mb": 2008.44,
}
SEED_PULL = {
    "message": "Image 'nvidia/cuda:12.2.0-runtime-ubuntu20.04' pulled successfully.",
    "id": "44fdb25dd06b",
    "tags": ["nvidia/cuda:12.2.0-runtime-ubuntu20.04"],
    "size_mb": 1135.24,
}

# Docker words a missing tag as it words another registry's answer behind a redirect, so a
# registry's "not found" is the one answer of a failed pull (but on Docker Hub).
PULL_FAILED = (
    "the pull of {ref} from registry {registry} failed (no such repository or tag, credentials "
    "refused, or another failure); the daemon's log has Docker's reason"
)


def assert_seed_shape(
    answer: dict[str, Any], seed: dict[str, Any], *, nullable: tuple[str, ...] = ()
) -> None:
    for key, example in seed.items():
        assert key in answer, f"seed key {key!r} missing from {answer}"
        if not (key in nullable and answer[key] is None):
            assert type(answer[key]) is type(example), (key, answer[key])


def inspect(rig: Rig, reference: str) -> dict[str, Any]:
    [data] = json.loads(rig.docker("image", "inspect", reference))
    return dict(data)


def pulled(rig: Rig, reference: str) -> dict[str, Any]:
    """The answer to a pull of ``reference``, from what the engine holds after it."""
    data = inspect(rig, reference)
    return {
        "message": f"Image '{reference}' pulled successfully.",
        "id": data["Id"].removeprefix("sha256:")[:12],
        "tags": [reference],
        "size_mb": round(data["Size"] / 2**20, 2),
    }


def error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def pull_error(code: str, message: str, reference: str) -> dict[str, Any]:
    """A failed pull's answer: the reference and its registry in ``details``, and nothing of
    what Docker or the registry said."""
    return error(code, message, reference=reference, registry=registry_of(reference))


def registry_of(reference: str) -> str:
    """``127.0.0.1:5001`` of ``127.0.0.1:5001/deepdockd-test/rand-…:v1``."""
    return reference.split("/", 1)[0]


def repository_path(reference: str) -> str:
    """``deepdockd-test/rand-…`` of ``127.0.0.1:5000/deepdockd-test/rand-…:v1``, as Docker
    names it in "Pulling from …"."""
    return reference.split("/", 1)[1].rsplit(":", 1)[0]


def layer_in_engine(rig: Rig, chain_id: str) -> bool:
    """Whether the engine still stores the layer ``chain_id`` (in its layer database)."""
    driver = rig.docker("info", "--format", "{{.Driver}}").strip()
    layerdb = rig.data_root / "image" / driver / "layerdb" / "sha256"
    return (layerdb / chain_id.removeprefix("sha256:")).is_dir()


async def pull(client: Client, repo_tag: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post("/images", json={"repo_tag": repo_tag, **extra})
    return response.status, await response.json()


async def pull_streamed(client: Client, repo_tag: str) -> list[dict[str, Any]]:
    response = await client.post("/images", json={"repo_tag": repo_tag}, headers=NDJSON)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in (await response.text()).splitlines()]


# --- list ---


async def test_list_shows_the_engines_images_in_the_seeds_shape(client: Client, rig: Rig) -> None:
    response = await client.get("/images")

    assert response.status == 200
    body = await response.json()
    assert body["count"] == len(body["images"])
    data = inspect(rig, BUSYBOX_IMAGE)
    [busybox] = [i for i in body["images"] if i["id"] == data["Id"].removeprefix("sha256:")[:12]]
    assert_seed_shape(busybox, SEED_LIST_ITEM, nullable=("digest",))  # imported: no digest
    assert busybox["digest"] is None
    assert busybox["tag"] == data["RepoTags"][0]
    assert busybox["size_mb"] == round(data["Size"] / 2**20, 2)
    ids = rig.docker("images", "--quiet", "--no-trunc").split()
    assert {i["id"] for i in body["images"]} == {i.removeprefix("sha256:")[:12] for i in ids}


# --- pull ---


async def test_pull_answers_the_seeds_shape_and_lists_the_image(
    client: Client, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image()

    status, body = await pull(client, reference)

    assert status == 200
    assert body == pulled(rig, reference)
    assert_seed_shape(body, SEED_PULL)
    listed = (await (await client.get("/images")).json())["images"]
    [item] = [i for i in listed if i["tag"] == reference]
    assert_seed_shape(item, SEED_LIST_ITEM)
    assert item["digest"].startswith(reference.rsplit(":", 1)[0] + "@sha256:")


async def test_streamed_pull_carries_progress_then_the_result(
    client: Client, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image(size_mb=8)

    lines = await pull_streamed(client, reference)

    *progress, last = lines
    assert last["message"] == f"Image '{reference}' pulled successfully."
    assert last["id"] == inspect(rig, reference)["Id"].removeprefix("sha256:")[:12]
    assert all(set(p) == {"status", "layer", "current", "total"} for p in progress)
    downloading = [p for p in progress if p["status"] == "Downloading"]
    assert downloading, progress
    assert all(p["layer"] and 0 < p["current"] <= p["total"] for p in downloading)
    assert any(p["status"] == "Pull complete" for p in progress)


async def test_reference_without_tag_pulls_latest_only(
    client: Client, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image(tags=("latest", "other"))
    repository = reference.rsplit(":", 1)[0]

    status, body = await pull(client, repository)

    assert status == 200
    assert body["message"] == f"Image '{repository}:latest' pulled successfully."
    assert body["tags"] == [f"{repository}:latest"]
    assert not rig.image_exists(f"{repository}:other")


async def test_concurrent_pulls_of_one_reference_share_one_docker_pull(
    client: Client, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image(size_mb=32)
    since = str(int(time.time()) - 1)

    answers = await asyncio.gather(pull(client, reference), pull(client, reference))

    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == answers[1][1]
    until = str(int(time.time()) + 1)
    events = rig.docker(
        "events", "--since", since, "--until", until, "--format", "{{.Actor.ID}}",
        "--filter", "type=image", "--filter", "event=pull", "--filter", f"image={reference}",
    ).split()  # fmt: skip
    assert events == [reference]


@pytest.mark.parametrize("others", [0, 1])
async def test_a_client_that_goes_away_does_not_stop_the_pull(
    client_allowing: ClientAllowing, rig: Rig, registry_image: MakeImage, others: int
) -> None:
    # 4 MiB through a 4 MiB/s link: the layer is still coming when the client hangs up in the
    # middle of its download, alone or while another client shares the pull.
    in_registry = registry_image(size_mb=4)
    async with slow_link(REGISTRY_ADDR, bytes_per_s=4 * 2**20) as link:
        client = await client_allowing(link)
        reference = in_registry.replace(REGISTRY_ADDR, link, 1)
        try:
            leaving = await client.post("/images", json={"repo_tag": reference}, headers=NDJSON)
            first = json.loads(await leaving.content.readline())
            staying = [
                await client.post("/images", json={"repo_tag": reference}, headers=NDJSON)
                for _ in range(others)
            ]
            for other in staying:  # its first line: it listens to the pull
                await other.content.readline()
            last_seen = first
            while last_seen["status"] != "Downloading":
                last_seen = json.loads(await leaving.content.readline())
            leaving.close()  # the client hangs up
            in_the_engine_when_the_client_left = rig.image_exists(reference)

            assert first == {
                "status": f"Pulling from {repository_path(reference)}",
                "layer": None,
                "current": None,
                "total": None,
            }
            assert 0 < last_seen["current"] < last_seen["total"]
            assert not in_the_engine_when_the_client_left
            deadline = time.monotonic() + 30
            while not rig.image_exists(reference):
                assert time.monotonic() < deadline, "the pull stopped when its client went away"
                await asyncio.sleep(0.2)
            for other in staying:
                async with asyncio.timeout(30):
                    last_line = (await other.text()).splitlines()[-1]
                assert json.loads(last_line) == pulled(rig, reference)
        finally:
            if rig.image_exists(reference):
                rig.docker("rmi", "--force", reference)


async def test_private_registry_pull_with_credentials(
    client: Client,
    rig: Rig,
    registry_image: MakeImage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    reference = registry_image(registry=PRIVATE_REGISTRY_ADDR)
    password = rig.private_registry_password
    right = {"username": PRIVATE_REGISTRY_USER, "password": password}
    wrong = {"username": PRIVATE_REGISTRY_USER, "password": password + "-wrong"}

    without = await pull(client, reference)
    refused = await pull(client, reference, auth=wrong)
    with_right = await pull(
        client, reference, auth=right | {"serveraddress": PRIVATE_REGISTRY_ADDR}
    )

    assert without == (502, wants_credentials(reference))
    assert refused == (502, credentials_refused(reference))
    assert with_right == (200, pulled(rig, reference))
    assert password not in caplog.text
    assert password not in json.dumps([without, refused, with_right])


async def test_pulls_with_credentials_are_never_shared(
    client_allowing: ClientAllowing, rig: Rig, registry_image: MakeImage
) -> None:
    # The pull with the right credentials comes through a link that holds its layer mid-way
    # until the others have answered: a pull shared by reference would hand them its image (or
    # it their refusal), and they would wait for it.
    in_registry = registry_image(registry=PRIVATE_REGISTRY_ADDR, size_mb=16)
    password = rig.private_registry_password
    right = {"username": PRIVATE_REGISTRY_USER, "password": password}
    wrong = {"username": PRIVATE_REGISTRY_USER, "password": password + "-wrong"}
    async with held_link(PRIVATE_REGISTRY_ADDR, after_bytes=2 * 2**20) as link:
        client = await client_allowing(link.address)
        reference = in_registry.replace(PRIVATE_REGISTRY_ADDR, link.address, 1)
        first = asyncio.create_task(pull(client, reference, auth=right))
        others = None
        try:
            async with asyncio.timeout(60):
                await link.holding.wait()  # its layer is coming, and held
            others = asyncio.gather(pull(client, reference), pull(client, reference, auth=wrong))
            await asyncio.wait({others}, timeout=30)
            assert others.done(), "the pulls without the right credentials waited for it"
            first_in_flight = not first.done()
            link.release()
            async with asyncio.timeout(60):
                with_right = await first
            without, with_wrong = others.result()
            in_the_engine = pulled(rig, reference) if rig.image_exists(reference) else None
        finally:
            for task in (first, others):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(first, *([others] if others else []), return_exceptions=True)
            if rig.image_exists(reference):
                rig.docker("rmi", "--force", reference)

    assert first_in_flight  # the others came, and answered, while it was still pulling
    assert with_right == (200, in_the_engine)
    assert without == (502, wants_credentials(reference))
    assert with_wrong == (502, credentials_refused(reference))


def wants_credentials(reference: str) -> dict[str, Any]:
    return pull_error(
        "registry_auth_failed",
        f'registry {registry_of(reference)} wants credentials for {reference} (send "auth")',
        reference,
    )


def credentials_refused(reference: str) -> dict[str, Any]:
    # Docker words a refusal exactly as it words a 401 from wherever a hostile registry sends
    # the pull: the one answer of a failed pull (docs/security.md#pulls-that-are-sent-elsewhere).
    return pull_error(
        "pull_failed", PULL_FAILED.format(ref=reference, registry=registry_of(reference)), reference
    )


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
async def test_a_layer_the_registry_cannot_serve_fails_the_pull(
    client: Client, rig: Rig, registry_image: MakeImage, fault: str
) -> None:
    # The registry serves the manifest, then a layer is gone from its storage, or its bytes no
    # longer match its digest: the registry answered, so this is no "registry_unreachable".
    reference = registry_image()
    [layer] = registry_layer_files(rig, reference)
    if fault == "missing":
        layer.unlink()
    else:
        layer.write_bytes(os.urandom(layer.stat().st_size))
    # The one answer of a failed pull: a layer's failure reads like one behind a redirect.
    expected = pull_error(
        "pull_failed", PULL_FAILED.format(ref=reference, registry=REGISTRY_ADDR), reference
    )

    streamed = await pull_streamed(client, reference)
    plain = await pull(client, reference)

    *progress, last = streamed
    assert progress[0]["status"] == f"Pulling from {repository_path(reference)}"
    assert last == expected  # the stream had begun: its last line is the error
    assert plain == (502, expected)
    assert not rig.image_exists(reference)


# --- delete ---


@pytest.mark.parametrize("how", ["tag", "percent-encoded tag", "short id", "full id"])
async def test_delete_by_tag_short_id_or_full_id(
    client: Client, rig: Rig, registry_image: MakeImage, how: str
) -> None:
    reference = registry_image()
    await pull(client, reference)
    data = inspect(rig, reference)
    full_id = data["Id"]
    [layer] = data["RootFS"]["Layers"]  # one layer: its chain id is its diff id
    assert layer_in_engine(rig, layer)
    image_ref = {
        "tag": reference,
        "percent-encoded tag": quote(reference, safe=""),
        "short id": full_id.removeprefix("sha256:")[:12],
        "full id": full_id,
    }[how]

    response = await client.delete(f"/images/{image_ref}")

    assert response.status == 200, await response.text()
    shown = reference if how == "percent-encoded tag" else image_ref
    assert await response.json() == {
        "message": f"Image '{shown}' removed successfully.",
        "untagged": [reference, *data["RepoDigests"]],
        "deleted": [full_id, layer],
    }
    assert not rig.image_exists(full_id)
    assert not layer_in_engine(rig, layer)


async def test_delete_of_an_image_in_use_names_the_containers_and_force_removes_it(
    client: Client, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image()
    await pull(client, reference)
    data = inspect(rig, reference)
    [layer] = data["RootFS"]["Layers"]
    container = f"uses-{reference.rsplit('-', 1)[1].replace(':', '-')}"
    rig.docker("create", "--name", container, reference, "/bin/true")
    try:
        refused = await client.delete(f"/images/{reference}")
        assert refused.status == 409
        assert await refused.json() == error(
            "conflict",
            f"image {reference!r} is used by container(s) {container}; remove them first, or "
            "ask again with ?force=true",
            containers=[container],
        )
        assert rig.image_exists(reference)

        forced = await client.delete(f"/images/{reference}?force=true")
        assert forced.status == 200
        # Docker untags and deletes the image; the container keeps the layer, and itself.
        assert await forced.json() == {
            "message": f"Image '{reference}' removed successfully.",
            "untagged": [reference, *data["RepoDigests"]],
            "deleted": [data["Id"]],
        }
        assert not rig.image_exists(data["Id"])
        assert layer_in_engine(rig, layer)
        assert rig.docker("ps", "--all", "--quiet", "--filter", f"name=^{container}$").strip()
    finally:
        rig.docker("rm", "--force", container)


# --- errors ---


async def test_delete_unknown_image_is_404(client: Client) -> None:
    response = await client.delete("/images/deepdockd-test/never-pulled:v9")
    assert response.status == 404
    assert (await response.json())["error"]["message"] == (
        "no image 'deepdockd-test/never-pulled:v9' on this host"
    )


REPOSITORY_RULE = (
    "(lower-case letters, digits and separators '.', '_', '-', in components joined by '/')"
)


@pytest.mark.parametrize(
    ("repo_tag", "why"),
    [
        ("Busybox", f"has an invalid repository name 'Busybox' {REPOSITORY_RULE}"),
        ("busybox:bad:tag", f"has an invalid repository name 'busybox:bad' {REPOSITORY_RULE}"),
        ("busybox:-tag", "has an invalid tag '-tag' (letters, digits, '_', '.', '-'; at most 128)"),
        ("bad image", "must not contain white space"),
        ("busybox@sha256:12", "has a malformed digest 'sha256:12' (expected ALGORITHM:HEX)"),
    ],
)
async def test_malformed_reference_is_422_saying_why(
    client: Client, repo_tag: str, why: str
) -> None:
    status, body = await pull(client, repo_tag)
    delete = await client.delete(f"/images/{quote(repo_tag, safe='')}")

    assert (status, body) == (422, error(
        "invalid_input",
        f"repo_tag: {repo_tag!r} is not an image reference Docker accepts: it {why}",
        field="repo_tag",
    ))  # fmt: skip
    assert (delete.status, await delete.json()) == (422, error(
        "invalid_input",
        f"image_ref: {repo_tag!r} is not an image reference Docker accepts: it {why}",
        field="image_ref",
    ))  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "repo_tag: Missing data for required field."),
        ({"repo_tag": 7}, "repo_tag: Not a valid string."),
        ({"repo_tag": "busybox", "tag": "x"}, "tag: Unknown field."),
        ({"repo_tag": "busybox", "auth": {"username": "u"}}, "auth.password: Missing data"),
        (["busybox"], "body: Invalid input type."),
    ],
)
async def test_bad_pull_body_is_422_naming_the_field(
    client: Client, body: object, message: str
) -> None:
    response = await client.post("/images", json=body)
    assert response.status == 422
    assert (await response.json())["error"]["message"].startswith(message)


async def test_pull_body_that_is_not_json_is_400(client: Client) -> None:
    response = await client.post("/images", data=b"repo_tag=busybox")
    assert response.status == 400
    assert "not valid JSON" in (await response.json())["error"]["message"]


async def test_bad_force_value_is_422(client: Client) -> None:
    response = await client.delete(f"/images/{BUSYBOX_IMAGE}?force=maybe")
    assert response.status == 422
    assert (await response.json())["error"]["message"] == "force: must be true or false"


@pytest.mark.parametrize(
    ("repo_tag", "status", "code", "says"),
    [
        (f"{REGISTRY_ADDR}/deepdockd-test/no-such-repo:v1", 502, "pull_failed", PULL_FAILED),
        (f"{REGISTRY_ADDR}/deepdockd-test/busybox:no-such-tag", 502, "pull_failed", PULL_FAILED),
        # Nothing listens on port 1 (which this test's daemon allows); a loopback registry is
        # insecure, so Docker tries http.
        ("127.0.0.1:1/x:1", 502, "registry_unreachable",
         "cannot reach registry {registry} to pull {ref}: connection refused"),
        # .invalid never resolves (RFC 2606): the daemon leaves the name to Docker.
        ("no-such-host.invalid/x:1", 502, "registry_unreachable",
         "cannot reach registry {registry} to pull {ref}: no such host"),
    ],
)  # fmt: skip
async def test_pull_errors_say_what_went_wrong(
    client_allowing: ClientAllowing,
    rig: Rig,
    caplog: pytest.LogCaptureFixture,
    repo_tag: str,
    status: int,
    code: str,
    says: str,
) -> None:
    client = await client_allowing("127.0.0.1:1")
    registry = repo_tag.split("/", 1)[0]
    for headers in ({}, NDJSON):  # a pull that cannot start is a plain error, streamed or not
        response = await client.post("/images", json={"repo_tag": repo_tag}, headers=headers)

        assert (response.status, await response.json()) == (
            status,
            pull_error(code, says.format(ref=repo_tag, registry=registry), repo_tag),
        )
        assert not rig.image_exists(repo_tag)
    # The admin still has Docker's own words, in the daemon's log.
    assert f"pull of {repo_tag} failed: " in caplog.text
    assert "; Docker answered " in caplog.text

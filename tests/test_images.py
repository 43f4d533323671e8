"""Images against the rig's real registries: list, pull (plain, streamed, shared, private),
delete, and every error a person can meet."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from conftest import Client
from rig import BUSYBOX_IMAGE, PRIVATE_REGISTRY_ADDR, PRIVATE_REGISTRY_USER, REGISTRY_ADDR, Rig

MakeImage = Callable[..., str]
NDJSON = {"Accept": "application/x-ndjson"}
NOT_IN_REGISTRY = "was not found in its registry"

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
    data = inspect(rig, reference)
    assert body == {
        "message": f"Image '{reference}' pulled successfully.",
        "id": data["Id"].removeprefix("sha256:")[:12],
        "tags": [reference],
        "size_mb": round(data["Size"] / 2**20, 2),
    }
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


async def test_a_client_that_goes_away_does_not_stop_the_pull(
    client: Client, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image(size_mb=64)

    response = await client.post("/images", json={"repo_tag": reference}, headers=NDJSON)
    first = json.loads(await response.content.readline())
    response.close()  # the client hangs up after the first line

    assert first["status"].startswith("Pulling from")
    deadline = time.monotonic() + 60
    while not rig.image_exists(reference):
        assert time.monotonic() < deadline, "the pull stopped when its client went away"
        await asyncio.sleep(0.2)


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
    pulled = await pull(client, reference, auth=right | {"serveraddress": PRIVATE_REGISTRY_ADDR})

    assert without[0] == 502
    assert without[1]["error"]["code"] == "registry_auth_failed"
    assert "wants credentials" in without[1]["error"]["message"]
    assert refused[0] == 502
    assert refused[1]["error"]["code"] == "registry_auth_failed"
    assert "refused the credentials" in refused[1]["error"]["message"]
    assert pulled[0] == 200
    assert rig.image_exists(reference)
    assert password not in caplog.text
    assert password not in json.dumps([without, refused, pulled])


# --- delete ---


@pytest.mark.parametrize("how", ["tag", "percent-encoded tag", "short id", "full id"])
async def test_delete_by_tag_short_id_or_full_id(
    client: Client, rig: Rig, registry_image: MakeImage, how: str
) -> None:
    reference = registry_image()
    await pull(client, reference)
    full_id = inspect(rig, reference)["Id"]
    image_ref = {
        "tag": reference,
        "percent-encoded tag": quote(reference, safe=""),
        "short id": full_id.removeprefix("sha256:")[:12],
        "full id": full_id,
    }[how]

    response = await client.delete(f"/images/{image_ref}")

    assert response.status == 200, await response.text()
    shown = reference if how == "percent-encoded tag" else image_ref
    assert (await response.json())["message"] == f"Image '{shown}' removed successfully."
    assert not rig.image_exists(reference)


async def test_delete_of_an_image_in_use_names_the_containers_and_force_removes_it(
    client: Client, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image()
    await pull(client, reference)
    container = f"uses-{reference.rsplit('-', 1)[1].replace(':', '-')}"
    rig.docker("create", "--name", container, reference, "/bin/true")
    try:
        refused = await client.delete(f"/images/{reference}")
        assert refused.status == 409
        error = (await refused.json())["error"]
        assert container in error["message"]
        assert error["details"]["containers"] == [container]
        assert rig.image_exists(reference)

        forced = await client.delete(f"/images/{reference}?force=true")
        assert forced.status == 200
        assert not rig.image_exists(reference)
    finally:
        rig.docker("rm", "--force", container)


# --- errors ---


async def test_delete_unknown_image_is_404(client: Client) -> None:
    response = await client.delete("/images/deepdockd-test/never-pulled:v9")
    assert response.status == 404
    assert (await response.json())["error"]["message"] == (
        "no image 'deepdockd-test/never-pulled:v9' on this host"
    )


@pytest.mark.parametrize(
    ("repo_tag", "why"),
    [
        ("Busybox", "has an invalid repository name 'Busybox'"),
        ("busybox:bad:tag", "has an invalid repository name 'busybox:bad'"),
        ("busybox:-tag", "has an invalid tag '-tag'"),
        ("bad image", "must not contain white space"),
        ("busybox@sha256:12", "has a malformed digest 'sha256:12'"),
    ],
)
async def test_malformed_reference_is_422_saying_why(
    client: Client, repo_tag: str, why: str
) -> None:
    status, body = await pull(client, repo_tag)
    assert status == 422
    assert body["error"]["message"].startswith(
        f"repo_tag: {repo_tag!r} is not an image reference Docker accepts: it {why}"
    )
    delete = await client.delete(f"/images/{quote(repo_tag, safe='')}")
    assert delete.status == 422


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
        (f"{REGISTRY_ADDR}/deepdockd-test/no-such-repo:v1", 404, "not_found", NOT_IN_REGISTRY),
        (f"{REGISTRY_ADDR}/deepdockd-test/busybox:no-such-tag", 404, "not_found", NOT_IN_REGISTRY),
        ("127.0.0.1:5999/deepdockd-test/busybox:v1", 502, "registry_unreachable", "refused"),
    ],
)  # fmt: skip
async def test_pull_errors_say_what_went_wrong(
    client: Client, repo_tag: str, status: int, code: str, says: str
) -> None:
    for headers in ({}, NDJSON):  # a pull that cannot start is a plain error, streamed or not
        response = await client.post("/images", json={"repo_tag": repo_tag}, headers=headers)
        assert response.status == status
        error = (await response.json())["error"]
        assert error["code"] == code
        assert repo_tag in error["message"]
        assert says in error["message"]

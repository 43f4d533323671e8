"""Registry reach: a pull goes only to a public registry or to one the admin listed in
``allowed_registries``, so a reference cannot make the host's Docker knock on the host's own
ports and private networks; and a pull's error is told in our words, never in what the
registry (or whatever else answered) sent back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config, ConfigError, load_config
from deepdockd.images.registries import RULE, RegistryNotAllowed, RegistryReach
from deepdockd.references import parse_reference

from tests.support.api import Client, ClientFactory
from tests.support.daemon import RunningDaemon, http_json
from tests.support.rig import REGISTRY_ADDR, Rig

MakeImage = Callable[..., str]
ClientAllowing = Callable[..., Awaitable[Client]]
NDJSON = {"Accept": "application/x-ndjson"}


def not_allowed(registry: str, why: str, *, field: str = "repo_tag") -> dict[str, Any]:
    return {
        "error": {
            "code": "registry_not_allowed",
            "message": f"registry {registry} {why}; {RULE}",
            "details": {"field": field, "registry": registry},
        }
    }


@dataclasses.dataclass
class Listener:
    address: str  # host:port
    requests: list[bytes]  # the first bytes of every connection, in order


@contextlib.asynccontextmanager
async def listener(
    reply: Callable[[bytes], bytes] = lambda request: b"",
) -> AsyncIterator[Listener]:
    """A TCP server on a free loopback port that answers each connection's first bytes with
    ``reply(them)`` and closes it: a registry, a web server or an SSH server, as the test
    needs."""
    seen = Listener(address="", requests=[])
    connections: set[asyncio.Task[None]] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            request = await reader.read(65536)
            seen.requests.append(request)
            writer.write(reply(request))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            connections.discard(task)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    seen.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield seen
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()


# --- refused: loopback, link-local and private registries that nobody listed ---

REFUSED = [
    ("127.0.0.1:1/x:1", "127.0.0.1:1", "is a loopback address"),
    ("127.0.0.1:22/x:1", "127.0.0.1:22", "is a loopback address"),
    ("localhost:5000/x:1", "localhost:5000", "is a loopback address"),
    ("10.1.2.3/x:1", "10.1.2.3", "is a private address"),
    ("192.168.0.1:5000/x:1", "192.168.0.1:5000", "is a private address"),
    ("169.254.169.254/x:1", "169.254.169.254", "is a link-local address"),
    ("[::1]:5000/x:1", "[::1]:5000", "is a loopback address"),
    ("[::ffff:7f00:1]:5000/x:1", "[::ffff:7f00:1]:5000", "is a loopback address"),
    ("[fe80::1]:5000/x:1", "[fe80::1]:5000", "is a link-local address"),
    ("0.0.0.0:5000/x:1", "0.0.0.0:5000", "is an unspecified address"),
    ("100.64.0.1/x:1", "100.64.0.1", "is an address that is not public"),
    # Not an address as written: the host's resolver reads 127.1 as 127.0.0.1.
    ("127.1:5000/x:1", "127.1:5000", "resolves to 127.0.0.1, a loopback address"),
]


@pytest.mark.parametrize(("repo_tag", "registry", "why"), REFUSED)
async def test_a_pull_from_an_unlisted_private_registry_is_422_naming_the_rule(
    client: Client,
    aiohttp_client: ClientFactory,
    config: Config,
    tmp_path: Path,
    repo_tag: str,
    registry: str,
    why: str,
) -> None:
    # The same daemon with a Docker that does not exist: a pull that asked Docker anything
    # would be a 503, so its 422 shows the refusal came first.
    dead_docker = dataclasses.replace(config, docker_host=f"unix://{tmp_path}/no-docker.sock")
    without_docker = await aiohttp_client(create_app(dead_docker))

    for asked in (client, without_docker):
        for headers in ({}, NDJSON):  # refused before the pull starts: a plain answer
            response = await asked.post("/images", json={"repo_tag": repo_tag}, headers=headers)

            assert (response.status, await response.json()) == (422, not_allowed(registry, why))


async def test_docker_never_knocks_on_a_refused_port(
    client: Client, config: Config, rig: Rig
) -> None:
    async with listener() as port:
        started = time.monotonic()
        pull = await client.post("/images", json={"repo_tag": f"{port.address}/x:1"})
        create = await client.post(
            "/containers/create",
            json={
                "name": f"reach-{uuid.uuid4().hex[:8]}",
                "image": f"{port.address}/x:1",
                "user_name": "alice",
                "password": "pw-reach",
            },
        )
        took_s = time.monotonic() - started

        assert (pull.status, await pull.json()) == (
            422,
            not_allowed(port.address, "is a loopback address"),
        )
        assert (create.status, await create.json()) == (
            422,
            not_allowed(port.address, "is a loopback address", field="image"),
        )
        assert port.requests == []  # not even a connection
        assert took_s < 5, took_s
    assert not rig.docker(
        "ps", "--all", "--quiet", "--filter", f"label=deepdockd.namespace={config.namespace}"
    ).split()


async def test_a_listed_registry_is_pulled_from_and_only_that_one(
    aiohttp_client: ClientFactory, config: Config, rig: Rig, registry_image: MakeImage
) -> None:
    reference = registry_image()
    listed = dataclasses.replace(config, allowed_registries=(REGISTRY_ADDR,))
    unlisted = dataclasses.replace(config, allowed_registries=("127.0.0.1:5001", "127.0.0.1"))

    refused = await (await aiohttp_client(create_app(unlisted))).post(
        "/images", json={"repo_tag": reference}
    )
    pulled = await (await aiohttp_client(create_app(listed))).post(
        "/images", json={"repo_tag": reference}
    )

    assert (refused.status, await refused.json()) == (
        422,
        not_allowed(REGISTRY_ADDR, "is a loopback address"),
    )
    assert pulled.status == 200
    assert (await pulled.json())["message"] == f"Image '{reference}' pulled successfully."
    assert rig.image_exists(reference)


def test_a_daemon_process_takes_the_list_from_its_environment(
    rig_daemon: Callable[..., RunningDaemon], registry_image: MakeImage
) -> None:
    # rig_daemon lists the rig's registries in DEEPDOCKD_ALLOWED_REGISTRIES unless told not to.
    reference = registry_image()
    listing = rig_daemon(name="listing")
    allowed = http_json("POST", f"{listing.base}/images", json_body={"repo_tag": reference})
    listing.stop()
    bare = rig_daemon(env={"DEEPDOCKD_ALLOWED_REGISTRIES": ""}, name="bare")
    refused = http_json("POST", f"{bare.base}/images", json_body={"repo_tag": reference})

    assert (allowed[0], allowed[1]["message"]) == (
        200,
        f"Image '{reference}' pulled successfully.",
    )
    assert refused == (422, not_allowed(REGISTRY_ADDR, "is a loopback address"))


# --- an allowed registry's answers are never echoed ---

MARKER = f"marker-{uuid.uuid4().hex}"
PAGE = f"<html><head><title>{MARKER}</title></head><body><h1>{MARKER}</h1></body></html>"


def http(status: str, body: str, content_type: str = "text/html") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def registry_error(request: bytes) -> bytes:
    """A registry that answers its ping, then a registry error whose words are the marker."""
    if request.startswith(b"GET /v2/ "):
        return http("200 OK", "{}", "application/json")
    errors = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": MARKER, "detail": MARKER}]}
    return http("404 Not Found", json.dumps(errors), "application/json")


BAD_ANSWERS = {
    # A web server's error page, with the marker as its reason phrase too.
    "500 page": (
        lambda request: http(f"500 {MARKER}", PAGE),
        502, "pull_failed",
        "registry {registry} gave a bad answer to the pull of {ref}: unexpected HTTP status 500",
    ),
    "404 page": (
        lambda request: http("404 Not Found", PAGE),
        502, "pull_failed",
        "registry {registry} gave a bad answer to the pull of {ref}: HTTP status 404 with a "
        "body that is not a registry's",
    ),
    "200 page": (
        lambda request: http("200 OK", PAGE),
        502, "pull_failed",
        "registry {registry} gave a bad answer to the pull of {ref}: content that is not an "
        "image manifest",
    ),
    # An SSH server's greeting.
    "not HTTP": (
        lambda request: f"SSH-2.0-OpenSSH_9.2p1 {MARKER}\r\n".encode(),
        502, "pull_failed",
        "registry {registry} gave a bad answer to the pull of {ref}: an answer that is not HTTP",
    ),
    "registry error": (
        registry_error,
        404, "not_found",
        "{ref} was not found in registry {registry}: no such repository or tag",
    ),
}  # fmt: skip


@pytest.mark.parametrize("answer", BAD_ANSWERS)
async def test_what_an_allowed_registry_answered_is_never_shown(
    client_allowing: ClientAllowing,
    rig: Rig,
    caplog: pytest.LogCaptureFixture,
    answer: str,
) -> None:
    caplog.set_level(logging.INFO)
    reply, status, code, says = BAD_ANSWERS[answer]
    async with listener(reply) as registry:
        client = await client_allowing(registry.address)
        reference = f"{registry.address}/deepdockd-test/x:1"
        expected = {
            "error": {
                "code": code,
                "message": says.format(registry=registry.address, ref=reference),
                "details": {"reference": reference, "registry": registry.address},
            }
        }

        for headers in ({}, NDJSON):
            response = await client.post("/images", json={"repo_tag": reference}, headers=headers)
            raw = await response.read()

            assert MARKER not in raw.decode(), raw
            assert (response.status, json.loads(raw)) == (status, expected)
        assert registry.requests, "Docker never asked the registry"
        assert not rig.image_exists(reference)
    # What Docker said stays in the daemon's log, for the admin.
    assert f"pull of {reference} failed: {expected['error']['message']}" in caplog.text


# --- the rule, for names and spellings (a resolver of the test's own) ---


def resolver(names: dict[str, list[str]]) -> Callable[[str], Awaitable[list[str]]]:
    async def resolve(host: str) -> list[str]:
        if host not in names:
            raise OSError(f"no such host {host}")
        return names[host]

    return resolve


@pytest.mark.parametrize(
    ("repo_tag", "why"),
    [
        ("registry.lab:5000/x:1", "resolves to 10.0.0.5, a private address"),
        ("mixed.example.org/x:1", "resolves to 192.168.1.9, a private address"),
        ("metadata.cloud.example/x:1", "resolves to 169.254.169.254, a link-local address"),
        ("six.example.org/x:1", "resolves to ::1, a loopback address"),
        ("shop.localhost/x:1", "is a loopback address"),  # RFC 6761, whatever DNS says
    ],
)
async def test_a_name_is_refused_when_any_of_its_addresses_is_not_public(
    repo_tag: str, why: str
) -> None:
    reach = RegistryReach(
        resolve=resolver(
            {
                "registry.lab": ["10.0.0.5"],
                "mixed.example.org": ["93.184.216.34", "192.168.1.9"],
                "metadata.cloud.example": ["169.254.169.254"],
                "six.example.org": ["2606:2800:220:1::1", "::1"],
                "shop.localhost": ["93.184.216.34"],
            }
        )
    )
    reference = parse_reference(repo_tag)

    with pytest.raises(RegistryNotAllowed) as refused:
        await reach.check(reference, field="repo_tag")

    registry = repo_tag.split("/", 1)[0]
    assert refused.value.message == f"registry {registry} {why}; {RULE}"
    assert refused.value.details == {"field": "repo_tag", "registry": registry}


@pytest.mark.parametrize(
    "repo_tag",
    [
        "busybox:1",  # Docker Hub
        "nvidia/cuda:12.2.0-runtime-ubuntu22.04",
        "public.example.org/team/x:1",  # every address public
        "no-such-host.invalid/x:1",  # does not resolve: Docker will say it cannot reach it
        "93.184.216.34:5000/x:1",
        "[2606:2800:220:1::1]/x:1",
        "LOCALHOST:5000/x:1",  # listed, in another spelling
        "[0:0::1]:5000/x:1",  # listed, in another spelling
        "127.0.0.1:5000/x:1",
    ],
)
async def test_public_and_listed_registries_are_allowed(repo_tag: str) -> None:
    reach = RegistryReach(
        ["localhost:5000", "[::1]:5000", "127.0.0.1:5000"],
        resolve=resolver({"public.example.org": ["93.184.216.34", "2606:2800:220:1::1"]}),
    )
    await reach.check(parse_reference(repo_tag), field="repo_tag")


@pytest.mark.parametrize("repo_tag", ["127.0.0.1:5001/x:1", "127.0.0.1/x:1", "localhost/x:1"])
async def test_a_listed_host_and_port_allows_that_port_only(repo_tag: str) -> None:
    reach = RegistryReach(["127.0.0.1:5000", "localhost:5000"], resolve=resolver({}))
    with pytest.raises(RegistryNotAllowed):
        await reach.check(parse_reference(repo_tag), field="repo_tag")


# --- the setting ---


def test_the_setting_is_a_list_in_the_file_and_comma_separated_in_the_environment(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "d.toml"
    config_file.write_text('allowed_registries = ["127.0.0.1:5000", "registry.lab"]\n')
    absent = tmp_path / "absent.toml"

    from_file = load_config({"config": str(config_file)}, {}, default_file=absent)
    from_env = load_config(
        {}, {"DEEPDOCKD_ALLOWED_REGISTRIES": "127.0.0.1:5000, registry.lab"}, default_file=absent
    )
    empty = load_config({}, {"DEEPDOCKD_ALLOWED_REGISTRIES": ""}, default_file=absent)

    assert from_file.allowed_registries == ("127.0.0.1:5000", "registry.lab")
    assert from_env.allowed_registries == ("127.0.0.1:5000", "registry.lab")
    assert empty.allowed_registries == () == Config().allowed_registries


SETTING_RULE = (
    'must be registry hosts, "host" or "host:port" as image references name them (a list in '
    'the config file, as in ["127.0.0.1:5000", "registry.lab"]; comma-separated in the '
    "environment)"
)


@pytest.mark.parametrize(
    ("toml", "env", "shown", "source"),
    [
        (None, "http://registry.lab", "'http://registry.lab'", "DEEPDOCKD_ALLOWED_REGISTRIES"),
        (None, "127.0.0.1:5000,,x.lab", "'127.0.0.1:5000,,x.lab'", "DEEPDOCKD_ALLOWED_REGISTRIES"),
        ("allowed_registries = [5000]", None, "[5000]", "config file {file}"),
        ('allowed_registries = ["a b"]', None, "['a b']", "config file {file}"),
    ],
)
def test_a_bad_list_stops_the_start_naming_setting_value_and_source(
    tmp_path: Path, toml: str | None, env: str | None, shown: str, source: str
) -> None:
    config_file = tmp_path / "d.toml"
    config_file.write_text((toml or "") + "\n")
    environ = {"DEEPDOCKD_ALLOWED_REGISTRIES": env} if env is not None else {}

    with pytest.raises(ConfigError) as caught:
        load_config({"config": str(config_file)}, environ)

    assert str(caught.value) == (
        f"allowed_registries: {shown} {SETTING_RULE} (from {source.format(file=config_file)})"
    )

"""Registry reach: a pull goes only to a public registry or to one the admin listed in
``allowed_registries``, so a reference cannot make the host's Docker knock on the host's own
ports and private networks; and a pull's error is told in our words, never in what the
registry (or whatever else answered) sent back, nor by kind where the registry may have sent
the pull elsewhere (a redirect, a token realm): what answered there is never told apart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from deepdockd.api.app import create_app
from deepdockd.config import Config, ConfigError, load_config
from deepdockd.docker import RegistryFailed, RegistryNotReached, docker_error, failed_at
from deepdockd.images.pull_errors import logged_pull_error
from deepdockd.images.registries import RULE, RegistryNotAllowed, RegistryReach
from deepdockd.references import parse_reference

from tests.support.api import Client, ClientFactory
from tests.support.daemon import RunningDaemon, http_json
from tests.support.rig import PRIVATE_REGISTRY_ADDR, REGISTRY_ADDR, Rig

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


# The one answer for a pull that failed anywhere but at the registry's own request.
PULL_FAILED = (
    "the pull of {ref} from registry {registry} failed (no such repository or tag, credentials "
    "refused, or another failure); the daemon's log has Docker's reason"
)

BAD_ANSWERS = {
    # A web server's error page, with the marker as its reason phrase too. Docker names no URL
    # for these, so they could have come from wherever the registry sent the pull (see the
    # redirect tests below): they are the one answer, not "gave a bad answer".
    "500 page": (lambda request: http(f"500 {MARKER}", PAGE), 502, "pull_failed", PULL_FAILED),
    "404 page": (lambda request: http("404 Not Found", PAGE), 502, "pull_failed", PULL_FAILED),
    "200 page": (lambda request: http("200 OK", PAGE), 502, "pull_failed", PULL_FAILED),
    # An SSH server's greeting: Go names the registry's own request, which got no HTTP.
    "not HTTP": (
        lambda request: f"SSH-2.0-OpenSSH_9.2p1 {MARKER}\r\n".encode(),
        502, "pull_failed",
        "registry {registry} gave a bad answer to the pull of {ref}: an answer that is not HTTP",
    ),
    # "manifest unknown" reads the same from the registry and from another registry that it
    # redirected the manifest to: the one answer too.
    "registry error": (registry_error, 502, "pull_failed", PULL_FAILED),
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


# --- what a registry sends a pull to is never told apart ---

# The redirecting registry's image: a config and one layer (not a tar: no pull of it succeeds).
CONFIG = json.dumps(
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
).encode()
LAYER = b"not a tar"


def digest(content: bytes) -> str:
    return f"sha256:{hashlib.sha256(content).hexdigest()}"


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": len(CONFIG),
            "digest": digest(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": len(LAYER),
                "digest": digest(LAYER),
            }
        ],
    }
)
# Where each hop is sent: a path of the rig's registry that it does not have (the same path
# for every target, as an attacker who does not know what listens there would send).
HOPS = {
    "ping": "/v2/",
    "manifest": "/v2/deepdockd-test/no-such-repo/manifests/v1",
    "token realm": "/token",
    "config blob": f"/v2/deepdockd-test/no-such-repo/blobs/{digest(CONFIG)}",
}


def answer(status: str, body: str = "", **headers: str) -> bytes:
    data = body.encode()
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n"
    head += "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode() + data


def redirecting(hop: str, to: list[str]) -> Callable[[bytes], bytes]:
    """A registry that serves its image, but sends one ``hop`` of the pull to ``to[0]``
    (``host:port``): a 307 for the ping, the manifest or the config blob, or the realm of the
    Bearer challenge of its ping."""

    def reply(request: bytes) -> bytes:
        method, _, rest = request.decode(errors="replace").partition(" ")
        path = rest.partition(" ")[0]
        elsewhere = f"http://{to[0]}{HOPS[hop]}"
        redirect = answer("307 Temporary Redirect", Location=elsewhere)
        v2 = {"Docker_Distribution_API_Version": "registry/2.0"}
        if path == "/v2/":
            if hop == "token realm":
                challenge = f'Bearer realm="{elsewhere}",service="deepdockd-test"'
                return answer("401 Unauthorized", "{}", **v2, WWW_Authenticate=challenge)
            return redirect if hop == "ping" else answer("200 OK", "{}", **v2)
        if "/manifests/" in path:
            if hop == "manifest":
                return redirect
            media_type = "application/vnd.docker.distribution.manifest.v2+json"
            return answer("200 OK", MANIFEST if method == "GET" else "", Content_Type=media_type)
        if path.endswith(digest(CONFIG)):
            return redirect if hop == "config blob" else answer("200 OK", CONFIG.decode())
        if path.endswith(digest(LAYER)):
            return answer("200 OK", LAYER.decode())
        return answer("400 Bad Request")  # Docker's first try, TLS, before plain HTTP

    return reply


def closed_port() -> str:
    """A loopback port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def wants_basic_auth(request: bytes) -> bytes:
    return answer("401 Unauthorized", PAGE, WWW_Authenticate='Basic realm="x"')


@pytest.mark.parametrize("hop", HOPS)
async def test_what_a_registry_sends_a_pull_to_is_never_told_apart(
    client_allowing: ClientAllowing, rig: Rig, caplog: pytest.LogCaptureFixture, hop: str
) -> None:
    # An allowed registry sends one hop of the pull to a port of the host: Docker follows,
    # and what answered there (nothing, a web page, a 401, another registry) must not show.
    caplog.set_level(logging.INFO)
    to: list[str] = []
    async with (
        listener(lambda request: http("404 Not Found", PAGE)) as web_page,
        listener(wants_basic_auth) as basic_auth,
        listener(redirecting(hop, to)) as registry,
    ):
        client = await client_allowing(registry.address)
        reference = f"{registry.address}/deepdockd-test/x:1"
        targets = {
            "nothing": closed_port(),
            "a web page": web_page.address,
            "a 401": basic_auth.address,
            "a registry without it": REGISTRY_ADDR,
            "a registry that wants credentials": PRIVATE_REGISTRY_ADDR,
        }
        answers = {}
        for name, target in targets.items():
            to[:] = [target]
            response = await client.post("/images", json={"repo_tag": reference})
            answers[name] = (response.status, await response.read())
            assert not rig.image_exists(reference)

    expected = {
        "error": {
            "code": "pull_failed",
            "message": PULL_FAILED.format(ref=reference, registry=registry.address),
            "details": {"reference": reference, "registry": registry.address},
        }
    }
    assert {name: (status, json.loads(raw)) for name, (status, raw) in answers.items()} == {
        name: (502, expected) for name in targets
    }
    assert not any(MARKER in raw.decode() for _, raw in answers.values())
    # Docker's own words, which tell them apart, are in the daemon's log for the admin.
    assert f"dial tcp {targets['nothing']}: connect: connection refused" in caplog.text


async def test_the_registrys_own_failures_keep_their_kind(
    client_allowing: ClientAllowing, rig: Rig
) -> None:
    # Docker names the registry's own request as the one that failed: nothing listens there,
    # or it wants credentials (its ping's challenge) and none were sent.
    nothing = closed_port()
    async with listener(wants_basic_auth) as basic_auth:
        client = await client_allowing(nothing, basic_auth.address)
        refused = await client.post("/images", json={"repo_tag": f"{nothing}/x:1"})
        wants = await client.post("/images", json={"repo_tag": f"{basic_auth.address}/x:1"})

        assert (refused.status, await refused.json()) == (
            502,
            {
                "error": {
                    "code": "registry_unreachable",
                    "message": f"cannot reach registry {nothing} to pull {nothing}/x:1: "
                    "connection refused",
                    "details": {"reference": f"{nothing}/x:1", "registry": nothing},
                }
            },
        )
        assert (wants.status, await wants.json()) == (
            502,
            {
                "error": {
                    "code": "registry_auth_failed",
                    "message": f"registry {basic_auth.address} wants credentials for "
                    f'{basic_auth.address}/x:1 (send "auth")',
                    "details": {
                        "reference": f"{basic_auth.address}/x:1",
                        "registry": basic_auth.address,
                    },
                }
            },
        )


# --- which failures are the registry's own, from Docker's words (no dockerd) ---

# Docker 20.10's words, as the rig's dockerd sent them (ports shortened to 5000, 5001 and
# 40000 for the registry, the rig's private registry and another port), and words a hostile
# registry or what it redirects to could make Docker write.
FAILED_AT = [
    # The registry's own requests.
    ('Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused',
     "127.0.0.1:5000"),
    ('Get "https://no-such-host.invalid/v2/": dial tcp: lookup no-such-host.invalid on '
     "10.255.255.53:53: no such host", "no-such-host.invalid"),
    ('Head "http://127.0.0.1:5001/v2/deepdockd-test/x/manifests/v1": no basic auth credentials',
     "127.0.0.1:5001"),
    ('Get "http://127.0.0.1:5000/v2/": malformed HTTP response "SSH-2.0-OpenSSH_9.2p1"',
     "127.0.0.1:5000"),
    ('Get "http://[::1]:5000/v2/": dial tcp [::1]:5000: connect: connection refused',
     "[::1]:5000"),
    # A redirect: Go names the URL it was sent to.
    ('Head "http://127.0.0.1:40000/v2/x/manifests/1": dial tcp 127.0.0.1:40000: connect: '
     "connection refused", "127.0.0.1:40000"),
    # A token realm elsewhere: the last link is the realm's.
    ('Head "http://127.0.0.1:5000/v2/x/manifests/1": Get "http://127.0.0.1:40000/token?'
     'scope=repository%3Ax%3Apull&service=s": dial tcp 127.0.0.1:40000: connect: connection '
     "refused", "127.0.0.1:40000"),
    # An answer's words after the registry's link: the realm's 401, or its web page.
    ('Head "http://127.0.0.1:5000/v2/x/manifests/1": unauthorized: authentication required',
     None),
    ('Head "http://127.0.0.1:5000/v2/x/manifests/1": error parsing HTTP 404 response body: '
     "invalid character '<' looking for beginning of value: \"<html>Get \\\"http://127.0.0.1:"
     '5000/v2/\\": dial tcp 127.0.0.1:5000: connect: connection refused</html>"', None),
    # A blob redirected elsewhere: no URL at all.
    ("error pulling image configuration: download failed after attempts=6: dial tcp "
     "127.0.0.1:40000: connect: connection refused", None),
    # Words that name the registry, inside a reason phrase the answer chose.
    ('received unexpected HTTP status: 500 Get "http://127.0.0.1:5000/v2/": dial tcp '
     "127.0.0.1:5000: connect: connection refused", None),
    ("manifest for 127.0.0.1:5000/x:1 not found: manifest unknown: manifest unknown", None),
]  # fmt: skip


@pytest.mark.parametrize(("message", "where"), FAILED_AT)
def test_the_place_that_failed_is_read_only_from_gos_own_words(
    message: str, where: str | None
) -> None:
    error = docker_error(500, message, registry=True)

    assert failed_at(message) == where
    assert isinstance(error, RegistryFailed)
    assert error.failed_at == where


# (reference, Docker's status and words, credentials sent) -> (code, message)
KINDS = [
    # Docker Hub sends pulls only to its own servers: every kind is told.
    (("nosuchrepo:1", 404, "pull access denied for nosuchrepo, repository does not exist or may "
      "require 'docker login': denied: requested access to the resource is denied", False),
     ("not_found", 'nosuchrepo:1 was not found in registry docker.io, or it is private (send '
      '"auth" with credentials for it)')),
    (("docker.io/library/busybox:1", 500, 'Get "https://registry-1.docker.io/v2/": dial tcp: '
      "lookup registry-1.docker.io on 10.0.0.1:53: no such host", False),
     ("registry_unreachable", "cannot reach registry docker.io to pull "
      "docker.io/library/busybox:1: no such host")),
    # Another registry's own request, in any spelling of its name.
    (("Registry.Lab/x:1", 500, 'Get "https://registry.lab/v2/": x509: certificate signed by '
      "unknown authority", False),
     ("registry_unreachable", "cannot reach registry Registry.Lab to pull Registry.Lab/x:1: its "
      "TLS certificate is not trusted")),
    # The same words about another port, or none at all: the one answer.
    (("registry.lab/x:1", 500, 'Get "https://registry.lab:8443/v2/": x509: certificate signed by '
      "unknown authority", False), ("pull_failed", PULL_FAILED)),
    (("registry.lab/x:1", 404, "manifest for registry.lab/x:1 not found: manifest unknown: "
      "manifest unknown", False), ("pull_failed", PULL_FAILED)),
    (("registry.lab/x:1", 500, "unauthorized: authentication required", True),
     ("pull_failed", PULL_FAILED)),
]  # fmt: skip


def test_a_pull_that_stalls_is_the_one_answer_too() -> None:
    # deepdockd's own limit (no progress for 5 minutes) names no place: a registry could send
    # the pull to a port that accepts and never answers as well as stall itself.
    reference = parse_reference("registry.lab/x:1")
    why = "no progress for 300 s"

    error = logged_pull_error(reference, RegistryNotReached(0, why, why), with_credentials=False)

    assert (error.code, error.message) == (
        "pull_failed",
        PULL_FAILED.format(ref="registry.lab/x:1", registry="registry.lab"),
    )


@pytest.mark.parametrize(("failure", "told"), KINDS)
def test_only_the_registrys_own_failures_are_told_by_kind(
    failure: tuple[str, int, str, bool], told: tuple[str, str]
) -> None:
    repo_tag, status, words, with_credentials = failure
    reference = parse_reference(repo_tag)
    error = logged_pull_error(
        reference, docker_error(status, words, registry=True), with_credentials=with_credentials
    )
    registry = reference.domain or "docker.io"
    code, message = told
    assert (error.code, error.message) == (code, message.format(ref=repo_tag, registry=registry))
    assert error.details == {"reference": repo_tag, "registry": registry}


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

"""Services reached with their owner's rights: the ports a create publishes sit on loopback,
and their owner (or an admin) reaches them through deepdockd's proxy (HTTP and WebSocket,
with a token or a browser's session cookie) or `deepdock forward` (ssh -L); another user
reaches nothing. A real web service in a container (tests/support/web_app.py), real curl,
real ssh."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests.support.api import ClientFactory
from tests.support.rig import DEBIAN_WEBAPP_IMAGE, WEBAPP_PORT, Rig
from tests.support.users import People, users_tokens
from tests.support.web_app import PAGE

DEEPDOCK = Path(sys.executable).parent / "deepdock"
# A published port of the container where nothing listens.
SILENT_PORT = 9090


@dataclass
class Service:
    people: People
    name: str  # alice's container, running the web app
    namespace: str
    store: TokenStore

    def url(self, port: int = WEBAPP_PORT, rest: str = "") -> str:
        return f"/containers/{self.name}/proxy/{port}/{rest}"

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.people.tokens[who]}"}

    async def get(self, path: str, **headers: str) -> tuple[int, str, aiohttp.ClientResponse]:
        response = await self.people.client.get(path, headers=headers)
        return response.status, await response.text(), response


@pytest.fixture
async def service(
    aiohttp_client: ClientFactory,
    config: Config,
    ssh_ports: tuple[int, int],
    service_ports: tuple[int, int],
    namespace: str,
    cleanup: None,
) -> Service:
    """A daemon with auth on, and alice's container running the web app on 8080 (and 9090
    published, with nothing on it)."""
    secured = Config(
        **{
            **config.__dict__,
            "auth": True,
            "ssh_port_range": ssh_ports,
            "service_port_range": service_ports,
        }
    )
    store = TokenStore(secured.state_dir)
    tokens = users_tokens(store)
    client = await aiohttp_client(create_app(secured))
    client.session.cookie_jar.clear()
    people = People(client, tokens)
    name = f"nb-{uuid.uuid4().hex[:6]}"
    status, answer = await people.call(
        "alice",
        "POST",
        "/containers/create",
        {
            "name": name,
            "image": DEBIAN_WEBAPP_IMAGE,
            "user_name": "alice",
            "password": "pw",
            "ports": [WEBAPP_PORT, SILENT_PORT],
        },
    )
    assert status == 201, answer
    service = Service(people, name, namespace, store)
    await _wait_for_the_app(service)
    return service


async def _wait_for_the_app(service: Service) -> None:
    for _ in range(100):
        status, _, _ = await service.get(service.url(), **service.auth("alice"))
        if status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the web app never answered through the proxy (last: {status})")


async def test_the_service_is_published_on_loopback_and_ssh_on_the_lan(
    service: Service, rig: Rig
) -> None:
    inspected = json.loads(rig.docker("inspect", service.name))[0]
    bindings = inspected["HostConfig"]["PortBindings"]

    assert bindings["22/tcp"][0]["HostIp"] == "0.0.0.0"
    assert bindings[f"{WEBAPP_PORT}/tcp"][0]["HostIp"] == "127.0.0.1"
    assert bindings[f"{SILENT_PORT}/tcp"][0]["HostIp"] == "127.0.0.1"
    # Not on the host's other addresses: from outside loopback, nothing answers.
    host_port = int(bindings[f"{WEBAPP_PORT}/tcp"][0]["HostPort"])
    assert not _connects(_host_address(), host_port)


async def test_the_owner_and_the_admins_reach_the_service_and_no_one_else(
    service: Service,
) -> None:
    page = service.url()
    for who in ("alice", "admin"):
        status, text, _ = await service.get(page, **service.auth(who))
        assert (status, '<h1 id="title">test service</h1>' in text) == (200, True), who

    bob_status, bob_text, _ = await service.get(page, **service.auth("bob"))
    absent_status, absent_text, _ = await service.get(
        "/containers/no-such-box/proxy/8080/", **service.auth("bob")
    )
    anonymous, anonymous_text, response = await service.get(page)

    # Another user's container is as absent as one that does not exist.
    assert (bob_status, absent_status) == (404, 404)
    assert json.loads(bob_text)["error"]["message"].replace(service.name, "X") == json.loads(
        absent_text
    )["error"]["message"].replace("no-such-box", "X")
    assert anonymous == 401
    assert json.loads(anonymous_text)["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="deepdockd"'


async def test_a_websocket_is_relayed_both_ways_with_its_subprotocol(service: Service) -> None:
    client = service.people.client
    url = service.url(rest="ws")
    async with client.ws_connect(url, headers=service.auth("alice"), protocols=["chat.v1"]) as ws:
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello ✓")
        assert await ws.receive_str(timeout=10) == "hello ✓"
        blob = os.urandom(300_000)
        await ws.send_bytes(blob)
        assert await ws.receive_bytes(timeout=10) == blob

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(url, headers=service.auth("bob"))
    assert refused.value.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as anonymous:
        await client.ws_connect(url)
    assert anonymous.value.status == 401


async def test_bodies_methods_and_queries_pass_and_deepdockds_secrets_do_not(
    service: Service,
) -> None:
    client = service.people.client
    # Sent and passed on exactly as written: no decoding, no re-quoting.
    target = service.url(rest="echo?a=1&b=%2F&c=%20")
    posted = await client.put(
        URL(target, encoded=True),
        data=io.BytesIO(b"x" * 3_000_000),
        headers=service.auth("alice"),
    )
    echoed = await posted.json()
    assert (posted.status, echoed["method"], echoed["target"]) == (
        200, "PUT", target
    )  # fmt: skip
    assert len(echoed["body"]) == 3_000_000  # more than max_body_size: the body is streamed

    status, text, _ = await service.get(
        service.url(rest="headers"), Cookie="theirs=1", **service.auth("alice")
    )
    seen = json.loads(text)
    assert status == 200
    assert "authorization" not in seen  # the token authenticated to deepdockd, not to it
    assert seen["cookie"] == ["theirs=1"]
    assert seen["x-forwarded-proto"] == ["http"]


async def test_a_session_cookie_stands_for_the_token_on_that_containers_path_only(
    service: Service,
) -> None:
    client = service.people.client
    opened = await client.post(
        f"/containers/{service.name}/proxy-session", headers=service.auth("alice")
    )
    answer = await opened.json()
    assert opened.status == 201, answer
    client.session.cookie_jar.clear()  # each request below sends the cookies it names
    assert answer == {
        "urls": {
            str(WEBAPP_PORT): service.url(),
            str(SILENT_PORT): service.url(SILENT_PORT),
        },
        "expires_in": 43200,
    }
    cookie_name = f"deepdockd_proxy_{service.namespace}"
    [set_cookie] = opened.headers.getall("Set-Cookie")
    morsel = SimpleCookie(set_cookie)[cookie_name]
    assert morsel["path"] == f"/containers/{service.name}/proxy/"
    assert (morsel["httponly"], morsel["samesite"], morsel["secure"]) == (True, "Strict", "")
    cookie = f"{cookie_name}={morsel.value}"

    # The cookie alone opens the page and the WebSocket; the service sees neither it nor a
    # token, and gets its own Authorization header (Jupyter's "token …").
    status, text, _ = await service.get(service.url(), Cookie=cookie)
    assert (status, "test service" in text) == (200, True)
    status, text, _ = await service.get(
        service.url(rest="headers"),
        Cookie=f"{cookie}; theirs=2",
        Authorization="token jupyters-own",
    )
    seen = json.loads(text)
    assert (seen["cookie"], seen["authorization"]) == (["theirs=2"], ["token jupyters-own"])
    async with client.ws_connect(service.url(rest="ws"), headers={"Cookie": cookie}) as ws:
        await ws.send_str("by cookie")
        assert await ws.receive_str(timeout=10) == "by cookie"

    # A service cannot set (or toss) deepdockd's cookie; its own pass.
    _, _, response = await service.get(
        service.url(rest=f"setcookie?name={cookie_name}&name=theirs"), Cookie=cookie
    )
    assert [c.split("=")[0] for c in response.headers.getall("Set-Cookie")] == ["theirs"]

    # Nowhere else: not another container's proxy, not the API.
    elsewhere, _, _ = await service.get("/containers/other/proxy/8080/", Cookie=cookie)
    api, _, _ = await service.get(f"/containers/{service.name}", Cookie=cookie)
    forged, forged_text, _ = await service.get(service.url(), Cookie=f"{cookie_name}=forged")
    assert (elsewhere, api, forged) == (401, 401, 401)
    assert json.loads(forged_text)["error"]["message"] == (
        "the proxy session has ended, or is not for this container: open the service from "
        "the dashboard again"
    )

    # Behind a TLS-terminating proxy, the cookie is Secure.
    over_tls = await client.post(
        f"/containers/{service.name}/proxy-session",
        headers={**service.auth("alice"), "X-Forwarded-Proto": "https"},
    )
    assert SimpleCookie(over_tls.headers["Set-Cookie"])[cookie_name]["secure"] is True
    client.session.cookie_jar.clear()

    # Its token revoked, the session ends with it.
    service.store.revoke("alice")
    revoked, _, _ = await service.get(service.url(), Cookie=cookie)
    assert revoked == 401


async def test_what_the_proxy_answers_itself_names_the_cause(service: Service) -> None:
    alice = service.auth("alice")
    unpublished = await service.get(service.url(7777), **alice)
    silent = await service.get(service.url(SILENT_PORT), **alice)
    assert (unpublished[0], json.loads(unpublished[1])["error"]["message"]) == (
        404,
        f"container '{service.name}' publishes no port 7777 (its ports: {WEBAPP_PORT}, "
        f'{SILENT_PORT}); a create\'s "ports" names the ports the proxy reaches',
    )
    assert (silent[0], json.loads(silent[1])["error"]) == (
        502,
        {
            "code": "service_unreachable",
            "message": f"nothing answers on port {SILENT_PORT} of container '{service.name}': "
            "connection refused (is the service up, and listening on "
            "0.0.0.0 rather than 127.0.0.1 inside the container?)",
            "details": {},
        },
    )

    status, _ = await service.people.call("alice", "POST", f"/containers/{service.name}/stop")
    assert status == 200
    stopped = await service.get(service.url(), **alice)
    assert (stopped[0], json.loads(stopped[1])["error"]["code"]) == (409, "container_not_running")


async def test_curl_reaches_the_service_with_the_token_and_not_without(
    service: Service, tmp_path: Path
) -> None:
    url = str(service.people.client.make_url(service.url()))
    with_token = await _run(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
        "-H", f"Authorization: Bearer {service.people.tokens['alice']}", url,
    )  # fmt: skip
    without = await _run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert (with_token, without) == ("200", "401")

    # curl's own ways: HEAD, and an upload past 1 MiB, which it sends after
    # "Expect: 100-continue" (deepdockd answers that; the service never waits for it).
    head = await _run(
        "curl", "-sS", "-I", "-H", f"Authorization: Bearer {service.people.tokens['alice']}", url
    )  # fmt: skip
    head_lines = head.splitlines()
    assert head_lines[0].startswith("HTTP/1.1 200"), head
    assert f"content-length: {len(PAGE.encode())}" in head.lower()  # the service's own length
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"y" * 2_000_000)
    posted = await _run(
        "curl", "-sS", "-X", "POST", "--data-binary", f"@{upload}",
        "-H", f"Authorization: Bearer {service.people.tokens['alice']}",
        str(service.people.client.make_url(service.url(rest="echo"))),
    )  # fmt: skip
    echoed = json.loads(posted)
    assert (echoed["method"], len(echoed["body"])) == ("POST", 2_000_000)


async def test_deepdock_forward_reaches_the_service_through_ssh(
    service: Service, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    await _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id"))
    env = {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "DEEPDOCK_URL": str(service.people.client.make_url("")).rstrip("/"),
        "DEEPDOCK_TOKEN": service.people.tokens["alice"],
    }
    name = f"fw-{uuid.uuid4().hex[:6]}"
    await _run(
        str(DEEPDOCK), "create", name, "--image", DEBIAN_WEBAPP_IMAGE, "--user", "alice",
        "--key", str(home / ".ssh" / "id.pub"), env=env,
    )  # fmt: skip
    local = _free_port()
    forward = await asyncio.create_subprocess_exec(
        str(DEEPDOCK), "forward", name, str(WEBAPP_PORT), str(local),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert forward.stderr is not None
        said = await asyncio.wait_for(forward.stderr.readline(), 30)
        assert said.decode() == (
            f"forwarding http://127.0.0.1:{local}/ to port {WEBAPP_PORT} of {name}; "
            "Ctrl-C stops it\n"
        )
        page = await _get_until_served(f"http://127.0.0.1:{local}/", forward)
        assert "test service" in page
    finally:
        forward.terminate()
        await forward.wait()


async def _get_until_served(url: str, process: asyncio.subprocess.Process) -> str:
    async with aiohttp.ClientSession() as session:
        for _ in range(150):
            if process.returncode is not None:
                assert process.stderr is not None
                raise AssertionError(f"the forward ended: {await process.stderr.read()!r}")
            try:
                async with session.get(url) as response:
                    return await response.text()
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
    raise AssertionError(f"nothing served on {url}")


async def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, (argv, out, err)
    return out.decode()


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _host_address() -> str:
    """The host's own address on its default route (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        return str(probe.getsockname()[0])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

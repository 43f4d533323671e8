"""Docker calls that cannot starve each other: one user holding every stream they may hold
(log follows, and pulls from a registry that never answers) leaves another user's lists,
creates, SSH logins, ``/healthz`` and streams as quick as ever; the first user's next stream
is a 429 that names the cap. Run as the noisy user would: many real streams through the API,
against the rig's real dockerd."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp

from deepdockd.api.app import create_app
from deepdockd.config import Config
from deepdockd.tokens import TokenStore

from tests.support.api import Client, ClientFactory, body
from tests.support.silent_registry import silent_registry
from tests.support.ssh import ssh
from tests.support.users import users_tokens

# As many streams as aiodocker's one pool held (100 connections) before streams had a pool
# of their own: at this cap, a user who holds them all took every connection from the others.
CAP = 100
PULLS = 5
FOLLOWS = CAP - PULLS
# What "answers in time" allows a quick call while the streams are held.
QUICK_S = 3.0


async def wait_for(condition: Any, *, within_s: float, what: str) -> None:
    ends = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < ends, f"not within {within_s:g} s: {what}"
        await asyncio.sleep(0.1)


async def timed(call: Any) -> tuple[float, aiohttp.ClientResponse]:
    started = time.monotonic()
    response = await call
    return time.monotonic() - started, response


def too_many_streams(cap: int) -> dict[str, Any]:
    return {
        "error": {
            "code": "too_many_streams",
            "message": (
                f"you hold {cap} streams (log follows, /events, pulls in flight), the most "
                f"one user may hold at once (max_streams_per_user = {cap}); close one first"
            ),
            "details": {"max_streams_per_user": cap},
        }
    }


async def test_a_user_at_the_stream_cap_starves_no_one_and_is_refused_the_next(
    aiohttp_client: ClientFactory, config: Config, ssh_ports: tuple[int, int], cleanup: None
) -> None:
    async with silent_registry() as registry:
        secured = dataclasses.replace(
            config,
            auth=True,
            ssh_port_range=ssh_ports,
            allowed_registries=(*config.allowed_registries, registry.address),
            max_streams_per_user=CAP,
        )
        tokens = users_tokens(TokenStore(secured.state_dir))
        client: Client = await aiohttp_client(create_app(secured))
        alice = {"Authorization": f"Bearer {tokens['alice']}"}
        bob = {"Authorization": f"Bearer {tokens['bob']}"}
        made = await client.post("/containers/create", json=body("noisy"), headers=alice)
        assert made.status == 201, await made.text()

        # The noisy user's own HTTP client, with no pool limit of its own.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as noisy:
            follows = []
            for _ in range(FOLLOWS):
                follow = await noisy.get(
                    client.make_url("/containers/noisy/logs"),
                    params={"follow": "true"},
                    headers=alice,
                )
                assert follow.status == 200
                follows.append(follow)
            pulls = [
                asyncio.create_task(
                    noisy.post(
                        client.make_url("/images"),
                        json={"repo_tag": f"{registry.address}/never:{i}"},
                        headers=alice,
                    )
                )
                for i in range(PULLS)
            ]
            # A pull is stuck once Docker asked the registry for its manifest.
            await wait_for(
                lambda: len(registry.asked) >= PULLS,
                within_s=60,
                what=f"{PULLS} pulls waiting on the silent registry",
            )
            assert not any(pull.done() for pull in pulls)

            health_s, health = await timed(client.get("/healthz"))
            listed_s, listed = await timed(client.get("/containers", headers=bob))
            create_s, created = await timed(
                client.post("/containers/create", json=body("quiet"), headers=bob)
            )
            answer = await created.json()
            login = await asyncio.to_thread(ssh, answer["ssh-port"], "alice", "pw-quiet", "id -un")

            assert (health.status, listed.status) == (200, 200), await health.text()
            assert created.status == 201, answer
            assert health_s < QUICK_S, health_s
            assert listed_s < QUICK_S, listed_s
            assert create_s < 30, create_s
            assert login.stdout.strip() == "alice", login.stderr

            # The noisy user's next stream of any kind is refused, naming the cap...
            refused = [
                await noisy.get(
                    client.make_url("/containers/noisy/logs"),
                    params={"follow": "true"},
                    headers=alice,
                ),
                await noisy.get(client.make_url("/events"), headers=alice),
                await noisy.post(
                    client.make_url("/images"),
                    json={"repo_tag": f"{registry.address}/never:more"},
                    headers=alice,
                ),
            ]
            for response in refused:
                assert (response.status, await response.json()) == (429, too_many_streams(CAP))
            # ...while the other user's streams still open.
            events = await noisy.get(client.make_url("/events"), headers=bob)
            bobs_follow = await noisy.get(
                client.make_url("/containers/quiet/logs"), params={"follow": "true"}, headers=bob
            )
            assert (events.status, bobs_follow.status) == (200, 200)
            assert await asyncio.wait_for(events.content.readline(), QUICK_S) == (
                b": deepdockd events\n"
            )
            for response in (*follows, events, bobs_follow):
                response.close()
            for pull in pulls:
                pull.cancel()
            await asyncio.gather(*pulls, return_exceptions=True)

"""deepdockd's API as a test calls it in-process: pytest-aiohttp's client, and the create of a
container that most tests begin with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.rig import DEBIAN_SSH_IMAGE

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


def body(name: str, **extra: Any) -> dict[str, Any]:
    """A create's body: the Debian image with sshd, alice, and a password of the name's own."""
    return {
        "name": name,
        "image": DEBIAN_SSH_IMAGE,
        "user_name": "alice",
        "password": "pw-" + name,
    } | extra


async def create(client: Client, **fields: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post("/containers/create", json=fields)
    return response.status, await response.json()


async def created(client: Client, **fields: Any) -> dict[str, Any]:
    """A create that must succeed: its answer."""
    status, answer = await create(client, **fields)
    assert status == 201, answer
    return answer

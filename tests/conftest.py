"""Shared fixtures: the rig (private dockerd, registry, images), configs and clients."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from deepdockd.app import create_app
from deepdockd.config import Config

from rig import Rig

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    """The private Docker engine and registry, up for the whole run and stopped at its end."""
    the_rig = Rig.from_env()
    try:
        the_rig.start()
        yield the_rig
    finally:
        the_rig.stop()


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own, so no two tests see each other's containers."""
    return f"ddtest-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def config(rig: Rig, tmp_path: Path, namespace: str) -> Config:
    return Config(docker_host=rig.docker_host, state_dir=tmp_path / "state", namespace=namespace)


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, config: Config
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(create_app(config))


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port

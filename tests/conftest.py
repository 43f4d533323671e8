"""Shared fixtures: the rig (private dockerd, registry, images), configs and clients."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from deepdockd.app import create_app
from deepdockd.config import Config

from rig import REGISTRY_ADDR, Rig

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


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


@pytest.fixture
def registry_image(rig: Rig) -> Iterator[Callable[..., str]]:
    """Factory: push a new image of random content to a rig registry and remove it from the
    engine, so that pulling it downloads real layers. Returns ``registry/repo:tag``."""
    made: list[str] = []

    def make(
        *, size_mb: int = 1, registry: str = REGISTRY_ADDR, tags: tuple[str, ...] = ("v1",)
    ) -> str:
        repository = f"{registry}/deepdockd-test/rand-{uuid.uuid4().hex[:10]}"
        references = [f"{repository}:{tag}" for tag in tags]
        rig.docker("import", "-", references[0], input=random_layer_tar(size_mb))
        for reference in references[1:]:
            rig.docker("tag", references[0], reference)
        for reference in references:
            rig.docker("push", reference)
        rig.docker("rmi", *references)
        made.extend(references)
        return references[0]

    yield make
    for reference in made:
        if rig.image_exists(reference):
            rig.docker("rmi", "--force", reference)


def random_layer_tar(size_mb: int) -> bytes:
    """A tar of one file of random bytes: a layer no other image shares."""
    payload = os.urandom(size_mb * 1024 * 1024)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("random.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()

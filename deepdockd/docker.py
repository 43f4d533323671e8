"""The one door to the Docker engine: every aiodocker call goes through :class:`Docker`.

aiodocker hands back raw JSON and raises its own ``DockerError`` (status 900 when the socket
does not answer). Here both are turned into the project's dataclasses and errors, so nothing
above this module imports aiodocker or sees its exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiodocker
import aiohttp

from deepdockd.errors import ApiError, ServiceUnavailable

# aiodocker's status for "could not connect to the socket".
_NO_CONNECTION = 900

# A quick call (version, list, inspect) that takes longer than this means the engine is stuck.
QUICK_CALL_TIMEOUT_S = 10.0


class DockerUnavailable(ServiceUnavailable):
    code = "docker_unavailable"


class DockerFailed(ApiError):
    """Docker answered with an error that no service turned into a clearer one."""

    status = 502
    code = "docker_error"


@dataclass(frozen=True)
class DockerVersion:
    version: str
    api_version: str
    os: str
    arch: str


class Docker:
    """An aiodocker client for one Docker address, opened and closed by the app."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aiodocker.Docker | None = None

    async def open(self) -> None:
        # Created here, not in __init__: aiohttp sessions belong to a running loop.
        self._client = aiodocker.Docker(url=self.url)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            raise RuntimeError("Docker client used before open()")
        return self._client

    async def version(self) -> DockerVersion:
        async with self.translate_errors():
            data = await self.client.version()
        return DockerVersion(
            version=str(data.get("Version", "")),
            api_version=str(data.get("ApiVersion", "")),
            os=str(data.get("Os", "")),
            arch=str(data.get("Arch", "")),
        )

    @asynccontextmanager
    async def translate_errors(
        self, *, timeout_s: float | None = QUICK_CALL_TIMEOUT_S
    ) -> AsyncIterator[None]:
        """Run a block of Docker calls; an unreachable or stuck engine becomes
        :class:`DockerUnavailable`, any other Docker error :class:`DockerFailed`."""
        try:
            async with asyncio.timeout(timeout_s):
                yield
        except TimeoutError:
            raise DockerUnavailable(
                f"Docker at {self.url} did not answer within {timeout_s:g} s"
            ) from None
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise DockerUnavailable(
                    f"Docker is not reachable at {self.url}: {_connection_reason(exc)}"
                ) from None
            raise DockerFailed(
                f"Docker answered {exc.status}: {exc.message}",
                details={"docker_status": exc.status},
            ) from None
        except aiohttp.ClientError as exc:
            # A connection that breaks mid-answer (dockerd stopping) is not a DockerError.
            raise DockerUnavailable(f"Docker at {self.url} dropped the connection: {exc}") from None


def _connection_reason(exc: aiodocker.DockerError) -> str:
    # aiodocker's message is "Cannot connect to Docker Engine via URL [reason]"; keep the reason.
    message = exc.message
    if message.endswith("]") and "[" in message:
        return message[message.rindex("[") + 1 : -1]
    return message

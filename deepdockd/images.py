"""Images: list, pull (shared between concurrent callers, detached from any one client) and
remove."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from deepdockd.docker import Docker, DockerFailed, Image, PullProgress
from deepdockd.errors import ApiError, BadGateway, Conflict, InvalidInput, NotFound
from deepdockd.references import ImageReference, looks_like_image_id, parse_reference

log = logging.getLogger(__name__)

# Docker's messages for a registry that refused or wanted credentials (distribution 2.x and
# Docker Hub).
_AUTH_FAILURES = ("unauthorized", "authentication required", "no basic auth credentials")
# Go's network errors as Docker passes them on (net, crypto/tls, net/http): the registry could
# not be reached at all. Anything else came from a registry that answered, or from Docker.
_UNREACHABLE = (
    "dial tcp",
    "no such host",
    "server misbehaving",
    "name resolution",
    "connection refused",
    "connection reset",
    "network is unreachable",
    "no route to host",
    "timeout",
    "deadline exceeded",
    "tls:",
    "x509:",
    "server gave http response to https client",
)


class RegistryAuthFailed(BadGateway):
    code = "registry_auth_failed"


class RegistryUnreachable(BadGateway):
    code = "registry_unreachable"


class PullFailed(BadGateway):
    """The registry answered, but the pull did not succeed: a layer it cannot serve, content
    that does not match its digest, an engine that could not store it."""

    code = "pull_failed"


@dataclass(frozen=True)
class Credentials:
    """Registry credentials for one pull; held in memory for that pull only."""

    username: str
    password: str
    serveraddress: str | None = None

    def __repr__(self) -> str:  # never let a password reach a log line or a traceback
        return f"Credentials(username={self.username!r}, password=***)"

    def as_docker_auth(self) -> dict[str, str]:
        auth = {"username": self.username, "password": self.password}
        if self.serveraddress:
            auth["serveraddress"] = self.serveraddress
        return auth


@dataclass(frozen=True)
class PullResult:
    reference: str
    image: Image


class _Pull:
    """One Docker pull and everyone waiting on it. It runs in a task of its own, so a client
    that goes away neither cancels it nor leaves it half done."""

    def __init__(self) -> None:
        self.listeners: list[asyncio.Queue[PullProgress | PullResult | ApiError]] = []
        self.task: asyncio.Task[None] | None = None

    def listen(self) -> asyncio.Queue[PullProgress | PullResult | ApiError]:
        queue: asyncio.Queue[PullProgress | PullResult | ApiError] = asyncio.Queue()
        self.listeners.append(queue)
        return queue

    def tell(self, item: PullProgress | PullResult | ApiError) -> None:
        for queue in self.listeners:
            queue.put_nowait(item)


class ImageService:
    def __init__(self, docker: Docker) -> None:
        self._docker = docker
        self._pulls: dict[str, _Pull] = {}

    async def list_images(self) -> list[Image]:
        return await self._docker.list_images()

    async def pull(
        self, repo_tag: str, credentials: Credentials | None = None
    ) -> AsyncGenerator[PullProgress | PullResult]:
        """Progress events, then the result; raises the pull's error. Concurrent pulls of
        the same reference without credentials share one Docker pull."""
        reference = parse_image_reference(repo_tag, field="repo_tag")
        key = str(reference)
        pull = self._pulls.get(key) if credentials is None else None
        if pull is None:
            pull = _Pull()
            if credentials is None:
                self._pulls[key] = pull
            pull.task = asyncio.create_task(
                self._run_pull(pull, reference, credentials), name=f"pull {key}"
            )
        queue = pull.listen()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, ApiError):
                    raise item
                yield item
                if isinstance(item, PullResult):
                    return
        finally:
            # A caller that went away (a streaming client that hung up) stops listening; the
            # pull goes on for the others.
            pull.listeners.remove(queue)

    async def _run_pull(
        self, pull: _Pull, reference: ImageReference, credentials: Credentials | None
    ) -> None:
        key = str(reference)
        log.info("pulling %s", key)
        try:
            tag_or_digest = reference.digest or reference.tag or "latest"
            repository = reference.repository
            if credentials is not None and reference.domain is None:
                repository = "docker.io/" + repository  # aiodocker wants a registry host with auth
            async for event in self._docker.pull_image(
                repository,
                tag_or_digest,
                auth=credentials.as_docker_auth() if credentials else None,
            ):
                pull.tell(event)
            image = await self._docker.inspect_image(key)
            if image is None:
                raise DockerFailed(404, f"{key} was pulled but Docker does not list it")
            log.info("pulled %s as %s", key, image.short_id)
            pull.tell(PullResult(reference=key, image=image))
        except DockerFailed as exc:
            error = _pull_error(key, exc, with_credentials=credentials is not None)
            log.warning("pull of %s failed: %s", key, error.message)
            pull.tell(error)
        except ApiError as exc:
            log.warning("pull of %s failed: %s", key, exc.message)
            pull.tell(exc)
        except Exception:
            log.exception("pull of %s failed", key)
            pull.tell(ApiError(f"pull of {key} failed; the daemon's log has the details"))
        finally:
            if self._pulls.get(key) is pull:
                del self._pulls[key]

    async def close(self) -> None:
        """Cancel the pulls in flight (the daemon is stopping)."""
        tasks = [p.task for p in self._pulls.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def remove(self, image_ref: str, *, force: bool) -> list[dict[str, str]]:
        if not looks_like_image_id(image_ref):
            parse_image_reference(image_ref, field="image_ref")
        image = await self._docker.inspect_image(image_ref)
        if image is None:
            raise NotFound(f"no image {image_ref!r} on this host", details={"image_ref": image_ref})
        users = [c for c in await self._docker.list_containers() if c.image_id == image.id]
        if users and not force:
            names = sorted(c.name for c in users)
            raise Conflict(
                f"image {image_ref!r} is used by container(s) {', '.join(names)}; remove them "
                "first, or ask again with ?force=true",
                details={"containers": names},
            )
        try:
            return await self._docker.remove_image(image_ref, force=force)
        except DockerFailed as exc:
            if exc.docker_status == 409:
                raise Conflict(exc.docker_message, details={"image_ref": image_ref}) from None
            if exc.docker_status == 404:
                raise NotFound(f"no image {image_ref!r} on this host") from None
            raise


def parse_image_reference(text: str, *, field: str) -> ImageReference:
    try:
        return parse_reference(text)
    except ValueError as exc:
        raise InvalidInput(
            f"{field}: {text!r} is not an image reference Docker accepts: it {exc}",
            details={"field": field},
        ) from None


def _pull_error(key: str, exc: DockerFailed, *, with_credentials: bool) -> ApiError:
    message = exc.docker_message
    details: Mapping[str, object] = {"reference": key, "docker_message": message}
    if any(text in message.lower() for text in _AUTH_FAILURES):
        if with_credentials:
            why = f"the registry refused the credentials for {key}"
        else:
            why = f'the registry wants credentials for {key} (send "auth")'
        return RegistryAuthFailed(f"{why}: {message}", details=details)
    if exc.docker_status == 404 or "not found" in message or "does not exist" in message:
        return NotFound(f"{key} was not found in its registry: {message}", details=details)
    if any(text in message.lower() for text in _UNREACHABLE):
        return RegistryUnreachable(
            f"cannot pull {key} from its registry: {message}", details=details
        )
    return PullFailed(f"the pull of {key} failed: {message}", details=details)

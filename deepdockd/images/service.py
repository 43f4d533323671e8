"""Images: list, pull (shared between concurrent callers, detached from any one client) and
remove; and what a create runs.

Two rules make images safe to share between users (image_records.py keeps what Docker does
not):

- A tag is global on a Docker host, so a user's pull may not re-point a tag that others rely
  on: one another user's container was created from, or one an admin pulled. Such a pull goes
  ahead only when the registry still serves the image the tag names here (then it is pulled
  by digest, so a registry that moves the tag meanwhile moves nothing). Admins may re-point
  any tag; containers run the image id their create resolved, so none of them changes.
- An image a user pulled with credentials is private to the users who pulled it so (and the
  admins): to anyone else it is absent, exactly as an image the host does not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace

from deepdockd import labels
from deepdockd.docker import (
    Docker,
    DockerConflict,
    DockerFailed,
    DockerNotFound,
    Image,
    ImageRemoval,
    LayerFailed,
    PullProgress,
    RegistryBadAnswer,
    RegistryDenied,
    RegistryNotFound,
    RegistryNotReached,
    RegistryUnauthorized,
)
from deepdockd.errors import ApiError, BadGateway, Conflict, Forbidden, InvalidInput, NotFound
from deepdockd.images.records import ImageRecords
from deepdockd.images.registries import RegistryReach, registry_host
from deepdockd.references import ImageReference, looks_like_image_id, parse_reference
from deepdockd.tokens import Caller

log = logging.getLogger(__name__)


class RegistryAuthFailed(BadGateway):
    code = "registry_auth_failed"


class RegistryUnreachable(BadGateway):
    code = "registry_unreachable"


class PullFailed(BadGateway):
    """The registry answered, but the pull did not succeed: a layer it cannot serve, content
    that does not match its digest, an engine that could not store it."""

    code = "pull_failed"


class TagInUse(Forbidden):
    """A user's pull would re-point a tag that others rely on."""

    code = "tag_in_use"


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


@dataclass(frozen=True)
class _PrivatePull:
    """A pull with credentials in flight: until it is recorded, the image it brings is hidden
    from other users like the private image it will be."""

    reference: str
    user: str
    images_before: frozenset[str]  # the ids on the host when it began


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
    def __init__(
        self,
        docker: Docker,
        reach: RegistryReach | None = None,
        *,
        records: ImageRecords,
        namespace: str,
    ) -> None:
        self._docker = docker
        self._reach = reach if reach is not None else RegistryReach()
        self._records = records
        self._namespace = namespace
        self._pulls: dict[str, _Pull] = {}
        self._private_pulls: list[_PrivatePull] = []
        # Image ids that a pull without credentials (or an admin's) brought while this daemon
        # ran: public, whatever a later pull with credentials brings them as.
        self._pulled_publicly: set[str] = set()

    async def list_images(self, caller: Caller) -> list[Image]:
        """The images the caller may see: all but other users' private ones."""
        return [i for i in await self._docker.list_images() if self._may_use(i, caller)]

    async def image_to_run(self, image_ref: str, caller: Caller) -> Image:
        """The image a create runs, resolved to its id now, once: the one ``image_ref`` names
        on the host, else the one a pull of it brings. An image the caller may not use is one
        the host lacks, so the answer is the same as for a missing image: the pull's error,
        or, for an image id (never pulled), 404."""
        parse_image_reference(image_ref, field="image")
        image = await self._docker.inspect_image(image_ref)
        if image is not None and self._may_use(image, caller):
            return image
        if is_image_id(image_ref):
            raise NotFound(f"no image {image_ref!r} on this host", details={"image": image_ref})
        log.info("image %s is not on this host: pulling it first", image_ref)
        pulled = None
        async for item in self.pull(image_ref, caller=caller, field="image"):
            if isinstance(item, PullResult):
                pulled = item.image
        if pulled is None or not self._may_use(pulled, caller):
            raise NotFound(f"no image {image_ref!r} on this host", details={"image": image_ref})
        return pulled

    async def pull(
        self,
        repo_tag: str,
        credentials: Credentials | None = None,
        *,
        caller: Caller,
        field: str = "repo_tag",
    ) -> AsyncGenerator[PullProgress | PullResult]:
        """Progress events, then the result; raises the pull's error. Concurrent pulls of
        the same reference without credentials share one Docker pull. ``field`` names the
        request's field in a refusal."""
        reference = parse_image_reference(repo_tag, field=field)
        await self._reach.check(reference, field=field)
        source = await self._pull_source(reference, credentials, caller)
        key = str(reference)
        shared = credentials is None and source == reference
        pull = self._pulls.get(key) if shared else None
        if pull is None:
            pull = _Pull()
            if shared:
                self._pulls[key] = pull
            private = None
            if credentials is not None and not caller.is_admin:
                before = frozenset(i.id for i in await self._docker.list_images())
                private = _PrivatePull(key, caller.user, before)
                self._private_pulls.append(private)
            pull.task = asyncio.create_task(
                self._run_pull(pull, reference, source, credentials, caller, private),
                name=f"pull {source}",
            )
        queue = pull.listen()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, ApiError):
                    raise item
                if isinstance(item, PullResult) and caller.is_admin and source.digest is None:
                    # An admin who joined another's pull of a tag pulled it too.
                    self._records.mark_admin_pulled(key, item.image.id)
                yield item
                if isinstance(item, PullResult):
                    return
        finally:
            # A caller that went away (a streaming client that hung up) stops listening; the
            # pull goes on for the others.
            pull.listeners.remove(queue)

    async def _run_pull(
        self,
        pull: _Pull,
        reference: ImageReference,
        source: ImageReference,
        credentials: Credentials | None,
        caller: Caller,
        private: _PrivatePull | None,
    ) -> None:
        key = str(reference)
        log.info("pulling %s", key if source == reference else f"{key} as {source}")
        try:
            tag_or_digest = source.digest or source.tag or "latest"
            repository = source.repository
            if credentials is not None and source.domain is None:
                repository = "docker.io/" + repository  # aiodocker wants a registry host with auth
            async for event in self._docker.pull_image(
                repository,
                tag_or_digest,
                auth=credentials.as_docker_auth() if credentials else None,
            ):
                pull.tell(event)
            image = await self._docker.inspect_image(str(source))
            if image is None:
                raise RegistryNotFound(404, f"{source} was pulled but Docker does not list it")
            self._record_pull(image, reference, caller, private)
            log.info("pulled %s as %s", key, image.short_id)
            pull.tell(PullResult(reference=key, image=image))
        except DockerFailed as exc:
            pull.tell(_logged_pull_error(reference, exc, with_credentials=credentials is not None))
        except ApiError as exc:
            log.warning("pull of %s failed: %s", key, exc.message)
            pull.tell(exc)
        except Exception:
            log.exception("pull of %s failed", key)
            pull.tell(ApiError(f"pull of {key} failed; the daemon's log has the details"))
        finally:
            if self._pulls.get(key) is pull:
                del self._pulls[key]
            if private is not None:
                self._private_pulls.remove(private)

    def _record_pull(
        self,
        image: Image,
        reference: ImageReference,
        caller: Caller,
        private: _PrivatePull | None,
    ) -> None:
        """Who may use what a pull brought. With a user's credentials: private to them, unless
        it was a public image before (a pull with credentials never hides what others use).
        Without credentials the registry serves it to anyone, so it is public; so is what an
        admin pulls (that is how a lab shares images from a private registry)."""
        if private is not None:
            was_public = (
                image.id in private.images_before and not self._records.owners(image.id)
            ) or image.id in self._pulled_publicly
            if not was_public:
                self._records.add_owner(image.id, private.user, private.reference)
            return
        self._pulled_publicly.add(image.id)
        self._records.make_public(image.id)
        if caller.is_admin and reference.digest is None:
            self._records.mark_admin_pulled(str(reference), image.id)

    async def _pull_source(
        self, reference: ImageReference, credentials: Credentials | None, caller: Caller
    ) -> ImageReference:
        """What Docker is to pull for ``reference``: the reference itself, unless it is a tag
        that others rely on and the caller is no admin. Then the registry is asked, without
        pulling, which image it serves under the tag now: the one the tag names here is
        pulled by its digest, which leaves the tag as it is; another is refused (TagInUse)."""
        if caller.is_admin or reference.digest is not None:
            return reference  # admins may re-point; a pull by digest re-points no tag
        key = str(reference)
        here = await self._docker.inspect_image(key)
        if here is None:
            return reference  # a new tag on this host: anyone may pull it
        why = await self._why_others_rely_on(key, here, caller)
        if why is None:
            return reference
        registry = registry_host(reference)
        try:
            digest = await self._docker.registry_digest(
                key,
                registry=registry,
                auth=credentials.as_docker_auth() if credentials is not None else None,
            )
        except DockerFailed as exc:
            # The same error the pull would have met there.
            raise _logged_pull_error(
                reference, exc, with_credentials=credentials is not None
            ) from None
        if any(d.rpartition("@")[2] == digest for d in here.digests):
            return replace(reference, tag=None, digest=digest)
        by_digest = f"{reference.repository}@{digest}"
        log.info("refused a pull of %s by %s: %s", key, caller.user, why)
        raise TagInUse(
            f"{key} is a tag {why}, and registry {registry} now serves another image under "
            "it: your pull would change what the tag runs for everyone. Pull that image by "
            f"digest ({by_digest}) or under a tag of your own, or ask an admin to pull {key}",
            details={"reference": key, "registry": registry, "digest": digest},
        )

    async def _why_others_rely_on(self, key: str, here: Image, caller: Caller) -> str | None:
        if self._records.admin_pulled(key, here.id):
            return "an admin pulled"
        containers = await self._docker.list_containers(
            filters=labels.namespace_filter(self._namespace)
        )
        for container in containers:
            asked = container.labels.get(labels.IMAGE) or container.image
            if container.labels.get(labels.OWNER) != caller.user and _names(asked, key):
                return "another user's container was created from"
        return None

    def _may_use(self, image: Image, caller: Caller) -> bool:
        """Whether ``caller`` may see and use ``image`` (see ImageRecords.may_use); an image
        that another user's pull with credentials is bringing right now counts as theirs."""
        if caller.is_admin:
            return True
        names = {*image.tags, *image.digests}
        for private in self._private_pulls:
            if (
                private.reference in names
                and image.id not in private.images_before
                and private.user != caller.user
            ):
                return False
        return self._records.may_use(image.id, caller)

    async def close(self) -> None:
        """Cancel the pulls in flight (the daemon is stopping)."""
        tasks = [p.task for p in self._pulls.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def remove(self, image_ref: str, caller: Caller, *, force: bool) -> ImageRemoval:
        """Admins only. Another user's private image is absent to a user, as a missing one."""
        if not looks_like_image_id(image_ref):
            parse_image_reference(image_ref, field="image_ref")
        image = await self._docker.inspect_image(image_ref)
        if image is None or not self._may_use(image, caller):
            raise NotFound(f"no image {image_ref!r} on this host", details={"image_ref": image_ref})
        if not caller.is_admin:
            raise Forbidden("only admins may remove images: other users' containers may need them")
        users = [c for c in await self._docker.list_containers() if c.image_id == image.id]
        if users and not force:
            names = sorted(c.name for c in users)
            raise Conflict(
                f"image {image_ref!r} is used by container(s) {', '.join(names)}; remove them "
                "first, or ask again with ?force=true",
                details={"containers": names},
            )
        try:
            removal = await self._docker.remove_image(image_ref, force=force)
        except DockerConflict as exc:
            raise Conflict(exc.docker_message, details={"image_ref": image_ref}) from None
        except DockerNotFound:
            raise NotFound(f"no image {image_ref!r} on this host") from None
        self._pulled_publicly.difference_update(removal.deleted)
        self._records.forget(image_ids=list(removal.deleted), tags=list(removal.untagged))
        return removal


def is_image_id(text: str) -> bool:
    """An image id as Docker writes it (``sha256:`` and hex), or 64 hex digits, which no
    repository may be named: never something to pull."""
    return looks_like_image_id(text) and (text.startswith("sha256:") or len(text) == 64)


def _names(text: str, key: str) -> bool:
    """Whether the reference ``text`` (as a create asked for it) names ``key``."""
    try:
        return str(parse_reference(text)) == key
    except ValueError:
        return False


def parse_image_reference(text: str, *, field: str) -> ImageReference:
    try:
        return parse_reference(text)
    except ValueError as exc:
        raise InvalidInput(
            f"{field}: {text!r} is not an image reference Docker accepts: it {exc}",
            details={"field": field},
        ) from None


def _logged_pull_error(
    reference: ImageReference, exc: DockerFailed, *, with_credentials: bool
) -> ApiError:
    """The pull's error in our words, for the caller; Docker's own words go to the log only,
    for the admin (as a repr: they may hold another server's lines)."""
    error = _pull_error(reference, exc, with_credentials=with_credentials)
    log.warning(
        "pull of %s failed: %s; Docker answered %d: %r",
        reference, error.message, exc.docker_status, exc.docker_message,
    )  # fmt: skip
    return error


def _pull_error(
    reference: ImageReference, exc: DockerFailed, *, with_credentials: bool
) -> ApiError:
    """The error a person sees, in our words, with the registry named, chosen by the kind of
    RegistryFailed that docker.py raised. Docker's message can carry what a registry, or
    whatever else listens on the host and port a reference names, sent back (a web server's
    whole 404 page, an SSH banner), so no part of it is ever shown."""
    key, registry = str(reference), registry_host(reference)
    details = {"reference": key, "registry": registry}
    if isinstance(exc, RegistryBadAnswer):
        return PullFailed(
            f"registry {registry} gave a bad answer to the pull of {key}: {exc.reason}",
            details=details,
        )
    if isinstance(exc, RegistryDenied):
        return NotFound(
            f"{key} was not found in registry {registry}, or it is private "
            '(send "auth" with credentials for it)',
            details=details,
        )
    if isinstance(exc, RegistryUnauthorized):
        if with_credentials:
            return RegistryAuthFailed(
                f"registry {registry} refused the credentials for {key}", details=details
            )
        return RegistryAuthFailed(
            f'registry {registry} wants credentials for {key} (send "auth")', details=details
        )
    if isinstance(exc, RegistryNotFound):
        return NotFound(
            f"{key} was not found in registry {registry}: no such repository or tag",
            details=details,
        )
    if isinstance(exc, RegistryNotReached):
        return RegistryUnreachable(
            f"cannot reach registry {registry} to pull {key}: {exc.reason}", details=details
        )
    if isinstance(exc, LayerFailed):
        return PullFailed(
            f"the pull of {key} from registry {registry} failed: {exc.reason}", details=details
        )
    return PullFailed(
        f"the pull of {key} from registry {registry} failed; the daemon's log has Docker's reason",
        details=details,
    )

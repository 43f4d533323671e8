"""Images: list, pull (shared between concurrent callers, detached from any one client) and
remove; and what a create runs.

Two rules make images safe to share between users (records.py keeps what Docker does not):

- A tag is global on a Docker host, so a user's pull may create a tag the host lacks, and
  move only a tag that this same user set last through deepdockd and that no other user's
  container was created from. Every tag that was on the host first, and every tag an admin
  set, is the admins' to move. A pull of a tag the caller may not move goes ahead only when
  the registry still serves the image the tag names here (then it is pulled by digest, so a
  registry that moves the tag meanwhile moves nothing). Containers run the image id their
  create resolved, so a moved tag changes none of them.
- An image a user pulled with credentials is private to the users whom the registry let pull
  it (and the admins): to anyone else it is absent, exactly as an image the host does not
  have. Another user is let in only when the registry serves that image's manifest to them,
  asked with their credentials (kubelet's rule for cached private images): Docker completes a
  pull by digest from its own content even after the registry refused, so its word is not
  enough. A pull without credentials never makes a private image public.
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
    PullProgress,
    RegistryNotFound,
)
from deepdockd.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound
from deepdockd.images.pull_errors import logged_pull_error
from deepdockd.images.records import ImageRecords, TagRecord
from deepdockd.images.registries import RegistryReach, registry_host
from deepdockd.references import ImageReference, looks_like_image_id, parse_reference
from deepdockd.tokens import Caller

log = logging.getLogger(__name__)


class TagInUse(Forbidden):
    """A user's pull would move a tag that is not theirs to move."""

    code = "tag_in_use"


class TagTaken(Conflict):
    """A user's commit would move a tag that is not theirs to move."""

    code = "tag_taken"


# Why a user may not move a tag, and the rule that says so (the 403 names both).
_ON_THE_HOST_FIRST = (
    "that was on this host before deepdockd recorded who set it",
    "only an admin may move it",
)
_AN_ADMIN_SET = ("an admin set", "only an admin may move it")
_ANOTHER_USER_SET = (
    "another user set",
    "only the user who set it last, or an admin, may move it",
)
_ANOTHER_USERS_CONTAINER = (
    "another user's container was created from",
    "your pull would change what it runs for them",
)


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
                if isinstance(item, PullResult):
                    await self._may_have(item, reference, credentials, caller, source)
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
            self._record_pull(
                image, reference, source, caller, private, with_credentials=credentials is not None
            )
            log.info("pulled %s as %s", key, image.short_id)
            pull.tell(PullResult(reference=key, image=image))
        except DockerFailed as exc:
            pull.tell(logged_pull_error(reference, exc, with_credentials=credentials is not None))
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
        source: ImageReference,
        caller: Caller,
        private: _PrivatePull | None,
        *,
        with_credentials: bool,
    ) -> None:
        """Who may use what a pull brought, and who set the tag it named. With a user's
        credentials: private to them, unless it was a public image before (a pull with
        credentials never hides what others use) or another user's private image (then the
        registry is asked about this user: :meth:`_may_have`). Without credentials it is
        public, unless it is a private image already: Docker may have completed the pull from
        its own content, so such a pull never makes a private image public. What an admin
        pulls with credentials is public (that is how a lab shares a private registry's
        images)."""
        owners = self._records.owners(image.id)
        if private is not None:
            was_public = (
                image.id in private.images_before and not owners
            ) or image.id in self._pulled_publicly
            if not was_public and (not owners or private.user in owners):
                self._records.add_owner(image.id, private.user, private.reference)
        elif caller.is_admin and with_credentials:
            self._pulled_publicly.add(image.id)
            self._records.make_public(image.id)
        elif not owners:
            self._pulled_publicly.add(image.id)
        if source == reference and reference.digest is None:  # the pull set the tag
            self._records.set_tag(str(reference), image.id, by=_setter(caller))

    async def _may_have(
        self,
        result: PullResult,
        reference: ImageReference,
        credentials: Credentials | None,
        caller: Caller,
        source: ImageReference,
    ) -> None:
        """After a pull, for each caller waiting on it: an admin who joined another's pull of
        a tag set it too; a user may have what it brought only if they may use it, or the
        registry vouches for them (:meth:`_vouch`); else the pull's error, or the answer of
        a missing tag."""
        image = result.image
        if caller.is_admin:
            if source == reference and reference.digest is None:
                self._records.set_tag(str(reference), image.id, by=None)
            return
        if self._may_use(image, caller) or await self._vouch(reference, image, credentials, caller):
            return
        registry = registry_host(reference)
        raise NotFound(
            f"{reference} was not found in registry {registry}: no such repository or tag",
            details={"reference": str(reference), "registry": registry},
        )

    async def _vouch(
        self,
        reference: ImageReference,
        image: Image,
        credentials: Credentials | None,
        caller: Caller,
    ) -> bool:
        """Whether the registry serves ``image`` under ``reference`` to ``caller`` (asked
        with their credentials, or none): then it is theirs too. A registry that refuses them
        raises the pull's own error, the answer an image the host lacks would get."""
        digest = await self._registry_digest(reference, credentials)
        if not any(d.rpartition("@")[2] == digest for d in image.digests):
            return False  # the registry serves another image under the tag now
        self._records.add_owner(image.id, caller.user, str(reference))
        log.info(
            "registry %s serves private image %s to %s: they may use it",
            registry_host(reference), image.short_id, caller.user,
        )  # fmt: skip
        return True

    async def _registry_digest(
        self, reference: ImageReference, credentials: Credentials | None
    ) -> str:
        """The digest the registry serves under ``reference`` now, without pulling; its
        refusal is the error the pull would have met."""
        try:
            return await self._docker.registry_digest(
                str(reference),
                registry=registry_host(reference),
                auth=credentials.as_docker_auth() if credentials is not None else None,
            )
        except DockerFailed as exc:
            raise logged_pull_error(
                reference, exc, with_credentials=credentials is not None
            ) from None

    async def _pull_source(
        self, reference: ImageReference, credentials: Credentials | None, caller: Caller
    ) -> ImageReference:
        """What Docker is to pull for ``reference``: the reference itself, unless a user
        asks for what the host has already. Another user's private image needs the
        registry's word (:meth:`_vouch`). A tag the caller may not move is checked with the
        registry, without pulling: the image it names here is pulled by its digest, which
        leaves the tag as it is; another is refused (TagInUse, naming the rule)."""
        key = str(reference)
        here = await self._docker.inspect_image(key)
        self._records.check()  # a record that cannot be read refuses before anything moves
        if caller.is_admin:
            return reference  # admins may move any tag and use any image
        if here is None:
            return reference  # new on this host: anyone may pull it
        if not self._may_use(here, caller):
            await self._vouch(reference, here, credentials, caller)
        if reference.digest is not None:
            return reference  # a pull by digest moves no tag
        rule = await self._why_not_theirs(key, here, caller)
        if rule is None:
            return reference
        registry = registry_host(reference)
        digest = await self._registry_digest(reference, credentials)
        if any(d.rpartition("@")[2] == digest for d in here.digests):
            return replace(reference, tag=None, digest=digest)
        why, only = rule
        log.info("refused a pull of %s by %s: a tag %s", key, caller.user, why)
        raise TagInUse(
            f"{key} is a tag {why}, and registry {registry} now serves another image under "
            f"it: {only}. Pull that image by digest ({reference.repository}@{digest}) or "
            f"under a tag of your own, or ask an admin to pull {key}",
            details={"reference": key, "registry": registry, "digest": digest},
        )

    async def _why_not_theirs(
        self, key: str, here: Image, caller: Caller
    ) -> tuple[str, str] | None:
        """Why the user ``caller`` may not move the tag ``key`` (which names ``here``), and
        the rule; None when they may: they set it last, and no other user's container was
        created from it."""
        record: TagRecord | None = self._records.tag(key, here.id)
        if record is None:
            return _ON_THE_HOST_FIRST
        if record.set_by is None:
            return _AN_ADMIN_SET
        if record.set_by != caller.user:
            return _ANOTHER_USER_SET
        containers = await self._docker.list_containers(
            filters=labels.namespace_filter(self._namespace)
        )
        for container in containers:
            asked = container.labels.get(labels.IMAGE) or container.image
            if container.labels.get(labels.OWNER) != caller.user and _names(asked, key):
                return _ANOTHER_USERS_CONTAINER
        return None

    async def commit_target(self, tag: str, caller: Caller) -> ImageReference:
        """The tag a commit is to set, checked as a pull's reference is (``tag`` named in a
        422). A tag the user may not move (another user's, the admins', one that was on the
        host first, one another user's container was created from) is a 409 naming it and
        the rule; an admin may move any (as with a pull). Nothing is changed here."""
        reference = parse_image_reference(tag, field="tag")
        if reference.digest is not None:
            raise InvalidInput(
                f"tag: {tag!r} names a digest; a commit sets a tag (name or name:tag)",
                details={"field": "tag"},
            )
        key = str(reference)
        here = await self._docker.inspect_image(key)
        self._records.check()  # a record that cannot be read refuses before anything moves
        if here is None or caller.is_admin:
            return reference
        rule = await self._why_not_theirs(key, here, caller)
        if rule is not None:
            why, only = rule
            raise TagTaken(
                f"{key} is a tag {why}: {only}, so a commit may not move it; commit under a "
                "tag of your own",
                details={"tag": key},
            )
        return reference

    def record_commit(self, image_id: str, reference: ImageReference, caller: Caller) -> None:
        """A commit made ``image_id`` and tagged it ``reference``: the caller's, like an image
        they pulled with credentials (an admin's is everyone's, like an admin's pull), and the
        tag one they set."""
        if not caller.is_admin:
            self._records.add_owner(image_id, caller.user, str(reference))
        self._records.set_tag(str(reference), image_id, by=_setter(caller))

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


def _setter(caller: Caller) -> str | None:
    """Who a tag's record says set it: the user, or None for an admin."""
    return None if caller.is_admin else caller.user


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

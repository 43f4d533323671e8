"""What a user's name holds in a namespace, and the stop of their containers: a user's end of
life (``deepdockd token revoke --stop``, ``deepdockd user remove``) and the check before a
name is given out again (``deepdockd token add``).

A user's name is an identity: whoever holds a token of that name owns the containers, the home
volumes and the private images recorded under it, and may move the tags it set last. So what
a name still holds is said when its token goes, and a new token of the name is refused while
it holds anything, unless the admin says that the new holder is to have it (``--inherit``).

It reads Docker's labels and the image records, and stops containers: it never removes one,
nor a volume, nor an image.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from deepdockd import labels
from deepdockd.config import Config
from deepdockd.containers.homes import HOME_KIND
from deepdockd.docker import ContainerSummary, Docker, DockerNotFound
from deepdockd.errors import ApiError
from deepdockd.images.records import ImageRecords

# The states in which a container holds its GPUs and answers SSH (allocation.py's).
_LIVE_STATES = frozenset({"running", "restarting", "paused"})


@dataclass(frozen=True)
class Holdings:
    """What ``user``'s name holds in ``namespace``, each as it is now."""

    user: str
    namespace: str
    containers: tuple[tuple[str, str], ...] = ()  # (name, state)
    home_volumes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, mounted by)
    private_images: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (short id, tags)
    tags: tuple[str, ...] = ()  # tags of other images that the user set last: theirs to move

    @property
    def empty(self) -> bool:
        return not (self.containers or self.home_volumes or self.private_images or self.tags)

    def lines(self) -> list[str]:
        """One line a thing, as the admin reads it."""
        found = [f"container {name} ({state})" for name, state in self.containers]
        for name, users in self.home_volumes:
            found.append(f"home volume {name}" + _aside("mounted by ", users))
        for short_id, tags in self.private_images:
            found.append(f"private image {short_id}" + _aside("", tags))
        found.extend(f"tag {tag} (set by {self.user}, who may move it)" for tag in self.tags)
        return found


@dataclass(frozen=True)
class Stops:
    stopped: tuple[str, ...]  # the names of the containers stopped
    failed: Mapping[str, str]  # name -> why its stop failed


class UserHoldings:
    """A user's holdings in the config's namespace, read from Docker and the image records."""

    def __init__(self, docker: Docker, config: Config) -> None:
        self._docker = docker
        self._namespace = config.namespace
        self._images = ImageRecords(config.state_dir)

    async def of(self, user: str) -> Holdings:
        """What the name holds now. Raises the project's errors (Docker unreachable, the
        image records unreadable): what cannot be read is not taken for nothing."""
        owned = [f"{labels.NAMESPACE}={self._namespace}", f"{labels.OWNER}={user}"]
        containers, volumes, images = await asyncio.gather(
            self._containers(user),
            self._docker.list_volumes(filters={"label": [*owned, f"{labels.KIND}={HOME_KIND}"]}),
            self._docker.list_images(),
        )
        mounted_by: dict[str, list[str]] = {}
        for container in containers:
            for volume in container.volumes:  # stopped ones too: they hold it as well
                mounted_by.setdefault(volume, []).append(container.name)
        private = [i for i in images if user in self._images.owners(i.id)]
        tags = [
            tag
            for image in images
            if image not in private
            for tag in image.tags
            if (record := self._images.tag(tag, image.id)) and record.set_by == user
        ]
        return Holdings(
            user=user,
            namespace=self._namespace,
            containers=tuple(sorted((c.name, c.state) for c in containers)),
            home_volumes=tuple(
                sorted((v.name, tuple(sorted(mounted_by.get(v.name, ())))) for v in volumes)
            ),
            private_images=tuple(sorted((i.short_id, tuple(sorted(i.tags))) for i in private)),
            tags=tuple(sorted(tags)),
        )

    async def stop_containers(self, user: str) -> Stops:
        """Stop every container of the name that runs (or restarts, or is paused): its SSH
        logins end and its GPUs are free. A stop, never a removal."""
        live = [c for c in await self._containers(user) if c.state in _LIVE_STATES]
        results = await asyncio.gather(
            *(self._docker.stop_container(c.id) for c in live), return_exceptions=True
        )
        stopped, failed = [], {}
        for container, result in zip(live, results, strict=True):
            if isinstance(result, DockerNotFound):
                continue  # removed meanwhile: nothing left to stop
            if isinstance(result, ApiError):
                failed[container.name] = result.message
            elif isinstance(result, BaseException):
                raise result
            else:
                stopped.append(container.name)
        return Stops(tuple(sorted(stopped)), failed)

    async def _containers(self, user: str) -> list[ContainerSummary]:
        owned = [f"{labels.NAMESPACE}={self._namespace}", f"{labels.OWNER}={user}"]
        return await self._docker.list_containers(filters={"label": owned})


def _aside(lead: str, items: tuple[str, ...]) -> str:
    return f" ({lead}{', '.join(items)})" if items else ""

"""Home volumes: one Docker named volume per (owner, user name) of a namespace, mounted at the
user's home in every container that owner makes with that user name, so that the work in ``~``
outlives any container. Each has a uid of its own, chosen once and kept in its labels: the
user gets that uid in every image, so the files stay theirs whatever the image.

Nothing here removes a volume unasked: only ``DELETE /volumes/{name}`` does.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

from deepdockd import labels
from deepdockd.config import Config
from deepdockd.docker import Docker, DockerConflict, DockerNotFound, VolumeSummary
from deepdockd.errors import Conflict, NotFound
from deepdockd.tokens import Caller

HOME_KIND = "home"
# Above the accounts images bring (Debian's first user is 1000; CUDA and Jupyter images ship
# one at 1000 too), so a home's uid rarely meets an account of the image.
FIRST_UID = 10000


@dataclass(frozen=True)
class HomeVolume:
    name: str
    owner: str
    user_name: str
    uid: int
    created: str
    containers: tuple[str, ...] = ()  # the namespace's containers that mount it, any state
    namespace: str = ""

    @property
    def labels(self) -> dict[str, str]:
        return {
            labels.NAMESPACE: self.namespace,
            labels.KIND: HOME_KIND,
            labels.OWNER: self.owner,
            labels.SSH_USER: self.user_name,
            labels.UID: str(self.uid),
        }


class HomeVolumes:
    def __init__(self, docker: Docker, config: Config) -> None:
        self._docker = docker
        self._config = config
        # Held while a new volume's uid is chosen and the volume made.
        self._choosing = asyncio.Lock()

    def name_for(self, owner: str, user_name: str) -> str:
        """``<namespace>-home-<owner>.<user_name>``: user names have no '.', so no two
        pairs share a name."""
        return f"{self._config.namespace}-home-{owner}.{user_name}"

    async def ensure(self, owner: str, user_name: str) -> HomeVolume:
        """The pair's volume, made now (with the lowest uid no home volume of this Docker
        host has) if it does not exist yet."""
        name = self.name_for(owner, user_name)
        existing = await self._docker.volume(name)  # one quick call, as a create usually finds
        if existing is not None:
            return self._checked(existing, owner, user_name)
        async with self._choosing:
            every_home = {"label": [f"{labels.KIND}={HOME_KIND}"]}
            homes = await self._docker.list_volumes(filters=every_home)
            for volume in homes:
                if volume.name == name:
                    return self._checked(volume, owner, user_name)
            taken = {_uid(v) for v in homes}
            uid = next(u for u in range(FIRST_UID, FIRST_UID + len(taken) + 1) if u not in taken)
            home = HomeVolume(
                name=name,
                owner=owner,
                user_name=user_name,
                uid=uid,
                created="",
                namespace=self._config.namespace,
            )
            await self._docker.create_volume(name, labels=home.labels)
        return home

    def _checked(self, volume: VolumeSummary, owner: str, user_name: str) -> HomeVolume:
        home = _home(volume)
        mine = (
            volume.labels.get(labels.NAMESPACE) == self._config.namespace
            and home.owner == owner
            and home.user_name == user_name
            and home.uid > 0
        )
        if not mine:  # made by hand, or by another daemon: not ours to mount
            raise Conflict(
                f"a volume named {volume.name!r} exists but is not {owner}'s home for "
                f"{user_name}; choose another user_name or ask an admin",
                details={"volume": volume.name},
            )
        return home

    async def list_all(self, caller: Caller) -> list[HomeVolume]:
        """The caller's home volumes (an admin's: the namespace's), each with the names of
        the containers that mount it."""
        wanted = [f"{labels.NAMESPACE}={self._config.namespace}", f"{labels.KIND}={HOME_KIND}"]
        if not caller.is_admin:
            wanted.append(f"{labels.OWNER}={caller.user}")
        volumes, users = await asyncio.gather(
            self._docker.list_volumes(filters={"label": wanted}), self._users()
        )
        return sorted(
            (_home(v, tuple(users.get(v.name, ()))) for v in volumes), key=lambda h: h.name
        )

    async def remove(self, name: str, caller: Caller) -> None:
        """Remove it, if the caller may see it and no container mounts it."""
        home = next((h for h in await self.list_all(caller) if h.name == name), None)
        if home is None:
            raise NotFound(f"no volume {name!r}", details={"name": name})
        if home.containers:
            raise _in_use(name, list(home.containers))
        try:
            await self._docker.remove_volume(name)
        except DockerConflict:  # a container made since, or one not of ours
            raise _in_use(name, list((await self._users()).get(name, ()))) from None
        except DockerNotFound:
            raise NotFound(f"no volume {name!r}", details={"name": name}) from None

    async def _users(self) -> dict[str, list[str]]:
        """Volume name -> the names of the namespace's containers that mount it."""
        containers = await self._docker.list_containers(
            filters=labels.namespace_filter(self._config.namespace)
        )
        users: dict[str, list[str]] = defaultdict(list)
        for container in containers:
            for volume in container.volumes:
                users[volume].append(container.name)
        return users


def _in_use(name: str, containers: list[str]) -> Conflict:
    which = ", ".join(repr(c) for c in sorted(containers)) or "a container"
    return Conflict(
        f"volume {name!r} is in use by {which}; remove the container first",
        details={"name": name, "containers": sorted(containers)},
    )


def _uid(volume: VolumeSummary) -> int:
    text = volume.labels.get(labels.UID, "")
    return int(text) if text.isdecimal() else 0


def _home(volume: VolumeSummary, containers: tuple[str, ...] = ()) -> HomeVolume:
    return HomeVolume(
        name=volume.name,
        owner=volume.labels.get(labels.OWNER, ""),
        user_name=volume.labels.get(labels.SSH_USER, ""),
        uid=_uid(volume),
        created=volume.created,
        containers=containers,
        namespace=volume.labels.get(labels.NAMESPACE, ""),
    )

"""Commit a container to an image of its owner's (``POST /containers/{name}/commit``).

Docker's commit copies the container's writable layer; mounts are not in it: the home volume,
the bootstrap's inputs (``/.deepdockd-in``, a read-only mount of the host), the bundled SSH
server and ``/.deepdockd`` (a tmpfs: the host key, the password's hash until it is set, the
env files). What the bootstrap leaves on the container's disk is moved aside into that tmpfs
for the commit and put back after it, whatever happens (:data:`_SCRIPT`): the user's hash in
``/etc/shadow`` (the image gets ``*``, so password logins fail until it is back), the
sessions' environment (``/.deepdockd-session-env``, ``/etc/profile.d/deepdockd-env.sh``).
A container whose bootstrap's files are on its disk (made before ``/.deepdockd`` was a tmpfs,
or with its inputs copied in) is refused (409 ``commit_unsupported``).

The image gets the command, user and Env of the image the container was created from, not
the bootstrap's, and deepdockd's container labels emptied (a container made by hand from it
must not look like ours); it is the caller's, as an image they pulled with credentials
(images/service.py), and its own layer counts toward their disk quota (containers/disk.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from deepdockd import labels
from deepdockd.containers.model import ContainerNotRunning
from deepdockd.containers.service import ContainerService
from deepdockd.docker import Docker, DockerFailed, Image, ImageConfig
from deepdockd.errors import ApiError, Conflict
from deepdockd.fairshare.quotas import check_disk
from deepdockd.images.service import ImageService
from deepdockd.references import ImageReference
from deepdockd.tokens import Caller

log = logging.getLogger(__name__)

# Run as root in the container by /bin/sh: "hide USER" before the commit, "restore" after.
# Exit 10: /.deepdockd is not a tmpfs; 11: /.deepdockd-in is not a mount; 12: a commit of
# it is under way; 13: moving a file aside failed. The system's programs only (the
# container's Env has the system's PATH: containers/bootstrap.py).
_SCRIPT = r"""
set -u
save=/.deepdockd/commit
aside="/.deepdockd-session-env /etc/profile.d/deepdockd-env.sh"
mounted() { awk -v at="$1" -v type="$2" '$2 == at && (type == "" || $3 == type) { found = 1 }
    END { exit !found }' /proc/mounts; }
if [ "$1" = hide ]; then
    mounted /.deepdockd tmpfs || exit 10
    mounted /.deepdockd-in "" || exit 11
    mkdir -m 0700 "$save" 2>/dev/null || exit 12
    n=0
    for path in $aside; do
        n=$((n + 1))
        if [ -e "$path" ] || [ -L "$path" ]; then
            cp -P -p "$path" "$save/$n" && rm -f "$path" || exit 13
        fi
    done
    if [ -f /etc/shadow ]; then
        cat /etc/shadow > "$save/shadow" &&
            awk -F: -v OFS=: -v name="$2" '$1 == name { $2 = "*" } { print }' \
                "$save/shadow" > "$save/shadow.new" &&
            cat "$save/shadow.new" > /etc/shadow || exit 13
    fi
    exit 0
fi
[ -d "$save" ] || exit 0
status=0
if [ -f "$save/shadow" ]; then cat "$save/shadow" > /etc/shadow || status=1; fi
n=0
for path in $aside; do
    n=$((n + 1))
    if [ -e "$save/$n" ] || [ -L "$save/$n" ]; then
        rm -f "$path" && cp -P -p "$save/$n" "$path" || status=1
    fi
done
[ "$status" != 0 ] || rm -rf "$save"
exit "$status"
"""

_REFUSALS = {
    10: "it was made before deepdockd kept /.deepdockd (its host key, the env files) in "
    "memory, so they are on its disk and would go into the image: create a new container "
    "(your home keeps your files) and commit that",
    11: "its bootstrap's files were copied into it (Docker over TCP, userns-remap or "
    "mount_host_files = false), with its host key, and would go into the image",
    12: "another commit of it is under way: try again when it has ended",
}


class CommitUnsupported(Conflict):
    code = "commit_unsupported"


async def commit(
    containers: ContainerService,
    images: ImageService,
    docker: Docker,
    name: str,
    caller: Caller,
    *,
    tag: str,
    message: str = "",
    pause: bool = True,
    namespace: str,
) -> Image:
    """The image of ``name``'s file system, tagged ``tag``; the owner's or an admin's only
    (another user's container is absent, a 404). A tag the caller may not move is a 409 and
    changes nothing; a caller over their disk quota is refused as a create is."""
    container = await containers.get(name, caller)
    reference = await images.commit_target(tag, caller)
    limits, use, disk_mb = await containers.quota(caller.user, caller)
    check_disk(caller.user, limits, disk_mb, use.all)
    state = await docker.container_state(container.id)
    status = "removed" if state is None else state.status
    if status != "running":
        raise ContainerNotRunning(
            f"container {name!r} is {status}, not running: only a running container can be "
            "committed (start or unpause it first)",
            details={"name": name, "state": status},
        )
    # Shielded: a client that goes away must not leave the container's password locked.
    task = asyncio.create_task(
        _commit(images, docker, container.id, container.ssh_user, name, caller,
                reference, message, pause, namespace),
        name=f"commit {name}",
    )  # fmt: skip
    return await asyncio.shield(task)


async def _commit(
    images: ImageService,
    docker: Docker,
    container_id: str,
    user_name: str,
    name: str,
    caller: Caller,
    reference: ImageReference,
    message: str,
    pause: bool,
    namespace: str,
) -> Image:
    config = await _image_config(docker, container_id, caller, namespace)
    try:
        hidden = await docker.exec_run(
            container_id, ["/bin/sh", "-c", _SCRIPT, "sh", "hide", user_name]
        )
    except BaseException:
        await _restore(docker, container_id, name)  # it may have moved some files
        raise
    if hidden.exit_code in _REFUSALS:
        # Nothing was moved (or another commit's files were: they stay where it put them).
        raise CommitUnsupported(
            f"container {name!r} cannot be committed: {_REFUSALS[hidden.exit_code]}",
            details={"name": name},
        )
    try:
        if hidden.exit_code != 0:
            log.error(
                "commit of %s: moving files aside failed (%s): %s",
                name,
                hidden.exit_code,
                hidden.output.strip(),
            )
            raise ApiError(f"the commit of {name!r} failed; the daemon's log has the details")
        image_id = await docker.commit_container(container_id, config, message=message, pause=pause)
    finally:
        await _restore(docker, container_id, name)
    try:
        # Again: the tag may have been set by someone else while Docker copied.
        reference = await images.commit_target(str(reference), caller)
        await docker.tag_image(image_id, reference.repository, reference.tag or "latest")
        images.record_commit(image_id, reference, caller)
    except BaseException:
        with contextlib.suppress(ApiError):
            await docker.remove_image(image_id, force=False)
        raise
    # As GET /images lists it (Docker's list and its inspect write "created" differently).
    image = next((i for i in await docker.list_images() if i.id == image_id), None)
    if image is None:
        raise ApiError(f"the image committed from {name!r} is gone")
    log.info("%s committed container %s as %s (%s)", caller.user, name, reference, image.short_id)
    return image


async def _restore(docker: Docker, container_id: str, name: str) -> None:
    """Put back what the commit moved aside; a failure is logged (the password stays locked
    until the container is made again), never hidden behind the commit's own answer."""
    try:
        restored = await docker.exec_run(container_id, ["/bin/sh", "-c", _SCRIPT, "sh", "restore"])
    except DockerFailed as exc:
        log.error("commit of %s: putting its files back failed: %s", name, exc.message)
        return
    if restored.exit_code != 0:
        log.error("commit of %s: putting its files back failed: %s", name, restored.output.strip())


async def _image_config(
    docker: Docker, container_id: str, caller: Caller, namespace: str
) -> ImageConfig:
    """The new image's config: the command, user and Env of the image the container was
    created from (Docker would keep the bootstrap's), deepdockd's labels emptied (Docker keeps
    every label the config leaves out) but for who committed it."""
    summary = await docker.container_summary(container_id)
    if summary is None:
        raise Conflict(f"container {container_id} is gone", details={})
    base = await docker.inspect_image(summary.labels.get(labels.IMAGE_ID) or summary.image_id)
    if base is None:
        raise Conflict(
            "the image the container was created from is gone, so its command is not known",
            details={},
        )
    ours = {key: "" for key in summary.labels if key.startswith(labels.PREFIX)}
    return ImageConfig(
        entrypoint=base.entrypoint,
        # Docker fills an empty Cmd from the container's (the bootstrap's arguments).
        cmd=base.cmd or (() if base.entrypoint else ("/bin/sh",)),
        user=base.user,
        env=base.env,
        labels={**ours, labels.COMMITTED_BY: caller.user, labels.COMMITTED_IN: namespace},
    )

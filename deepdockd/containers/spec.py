"""The container spec: what a create asks Docker to make for a request. The image's command
behind the bootstrap, the labels that make it ours, the published ports, mounts, limits,
capabilities, GPUs and log rotation are all decided here, in one :class:`ContainerSpec`;
docker.py writes it as Docker's JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from deepdockd import labels
from deepdockd.clock import iso
from deepdockd.config import Config
from deepdockd.containers.allocation import SSH_CONTAINER_PORT, Gpu
from deepdockd.containers.bootstrap import BOOTSTRAP_DIR, INPUT_DIR, root_environment
from deepdockd.containers.homes import HomeVolume
from deepdockd.containers.model import CreateRequest
from deepdockd.containers.resources import Resources
from deepdockd.containers.ssh_server import BUNDLE_DIR
from deepdockd.docker import BindMount, ContainerSpec, Image, Limits, LogRotation, VolumeMount
from deepdockd.fairshare.records import Lease
from deepdockd.shared_mounts import SharedMount

# The only capabilities root has in a container: Docker's default set less NET_RAW (raw
# frames: forged ARP replies), MKNOD, SETFCAP, SETPCAP and NET_BIND_SERVICE (Docker >= 20.10
# lets any process bind a container's low ports). Each kept one was measured
# (docs/security.md#capabilities): without it, on Debian with OpenSSH,
CONTAINER_CAPABILITIES = (
    "CHOWN",  # useradd and dpkg fail: they give files to users and groups
    "DAC_OVERRIDE",  # apt fails, and root cannot write into a user's home (the bootstrap)
    "FOWNER",  # the bootstrap cannot chmod the user's ~/.ssh; apt and sudo's chmod fail
    "FSETID",  # dpkg silently drops setgid bits (openssh-client's ssh-agent lost its)
    "KILL",  # root (sudo) cannot signal another user's processes
    "SETGID",  # sshd's privilege separation, apt's sandbox user, su and sudo fail
    "SETUID",
    "SYS_CHROOT",  # sshd's pre-login child cannot chroot: every login is refused
    # sshd built with Linux audit (Debian's, Ubuntu's, RHEL's) writes a login record for every
    # session with a terminal and ends the session when the kernel refuses it: without this,
    # `ssh host` (interactive) is closed at once; only commands without a terminal work.
    "AUDIT_WRITE",
)


@dataclass(frozen=True)
class Setup:
    """What a create chose for its container before Docker makes it."""

    image: Image
    gpus: list[Gpu]
    ssh_port: int
    ports: dict[int, int]  # container port -> host port
    resources: Resources
    home: HomeVolume | None
    lease: Lease
    # The bundled SSH server's directory on this host, mounted read-only at BUNDLE_DIR; None:
    # none (ssh_server "image"), or copied in with the bootstrap.
    ssh_server_dir: Path | None = None
    # The bootstrap's files on this host, mounted read-only at INPUT_DIR, and the token that
    # names them; None: copied in.
    bootstrap: tuple[str, Path] | None = None


def container_spec(
    request: CreateRequest, setup: Setup, config: Config, *, network: str | None
) -> ContainerSpec:
    """The container Docker is to make for ``request`` with what the create chose, on the
    owner's ``network`` (None: Docker's default bridge)."""
    # Neither the request's env nor the image's is the container's: root's bootstrap and
    # every docker exec would inherit them (PATH, LD_PRELOAD). Both travel in the bootstrap
    # tar, for the image's command and the user's sessions only.
    env = list(root_environment(setup.image.env))
    image, gpus, port, resources = setup.image, setup.gpus, setup.ssh_port, setup.resources
    if not gpus:
        # An image whose default is "all GPUs" (NVIDIA's CUDA images) must see none.
        env.append("NVIDIA_VISIBLE_DEVICES=void")
    # The bootstrap runs the image's own command beside sshd, as the image's user.
    command = [*image.entrypoint, *(image.cmd if request.command is None else request.command)]
    return ContainerSpec(
        name=request.name,
        image_id=image.id,
        entrypoint=("/bin/sh", f"{INPUT_DIR}/bootstrap.sh"),
        cmd=(image.user, "--", *command),
        # The bootstrap is root's; it runs the command as the image's User itself.
        user="0",
        env=tuple(env),
        hostname=request.name[:63],
        labels={
            labels.NAMESPACE: config.namespace,
            labels.OWNER: request.owner,
            labels.SSH_USER: request.user_name,
            labels.SSH_PORT: str(port),
            labels.GPU_INDICES: ",".join(str(g.id) for g in gpus),
            labels.GPU_UUIDS: ",".join(g.uuid for g in gpus if g.uuid),
            labels.CREATED: _now_rfc3339_ns(),
            labels.IMAGE: request.image,
            labels.IMAGE_ID: image.id,
            labels.SSH_HOST_KEYS: request.host_key.public.public_key,
            labels.PORTS: labels.format_ports(setup.ports),
            labels.MEMORY_MB: "" if resources.memory_mb is None else str(resources.memory_mb),
            labels.CPUS: "" if resources.cpus is None else f"{resources.cpus:g}",
            labels.SHM_SIZE_MB: str(resources.shm_size_mb),
            labels.HOME_VOLUME: setup.home.name if setup.home else "",
            labels.LEASE_EXPIRES: iso(setup.lease.expires_at) or "",
            labels.IDLE_RECLAIM: "true" if request.idle_reclaim else "false",
            **({labels.BOOTSTRAP: setup.bootstrap[0]} if setup.bootstrap else {}),
        },
        # The SSH login is for the LAN; the services are for their owner, through the proxy
        # or an SSH forward (docs/security.md#services), so loopback unless the admin says.
        published_ports={
            SSH_CONTAINER_PORT: (config.ssh_bind_address, port),
            **{
                inside: (config.service_bind_address, outside)
                for inside, outside in setup.ports.items()
            },
        },
        mounts=_mounts(request, setup, config.shared_mounts),
        limits=Limits(
            shm_size_mib=resources.shm_size_mb,
            memory_mib=resources.memory_mb,
            cpus=resources.cpus,
            pids=resources.pids_limit,
        ),
        capabilities=CONTAINER_CAPABILITIES,
        # One container's output cannot fill the host's disk.
        log_rotation=LogRotation(max_size=config.log_max_size, max_files=config.log_max_file),
        network=network,
        # A MIG slice by its "MIG-..." UUID: NVIDIA_VISIBLE_DEVICES=MIG-... in the container.
        gpu_device_ids=tuple(g.uuid or str(g.id) for g in gpus),
        init=True,
        restart_unless_stopped=True,
        # The bootstrap's copies (host key, the password's hash until it is set, the env
        # files) live in memory, root's alone: never on the container's disk, so never in a
        # commit of it (containers/commit.py). Docker mounts it noexec: sh reads the script.
        tmpfs={BOOTSTRAP_DIR: "mode=0700,size=16m"},
    )


def _mounts(
    request: CreateRequest, setup: Setup, shared: tuple[SharedMount, ...]
) -> tuple[BindMount | VolumeMount, ...]:
    """The admin's shared host directories, the bootstrap's files and the bundled SSH server
    (read-only: not even root in the container may change what deepdockd gave it, or what
    every container runs) and the user's home volume; never a host path of the request's."""
    mounts: list[BindMount | VolumeMount] = [
        BindMount(source=m.source, target=m.target, read_only=m.read_only) for m in shared
    ]
    if setup.bootstrap is not None:
        source = str(setup.bootstrap[1])
        mounts.append(BindMount(source=source, target=INPUT_DIR, read_only=True))
    if setup.ssh_server_dir is not None:
        source = str(setup.ssh_server_dir)
        mounts.append(BindMount(source=source, target=BUNDLE_DIR, read_only=True))
    home = setup.home
    if home is not None:
        mounts.append(
            VolumeMount(
                volume=home.name,
                target=f"/home/{request.user_name}",
                # Its labels too, should Docker have to make it again (removed meanwhile).
                labels=home.labels,
                # Not the image's /home/<user>: the home is the volume's, whatever the image.
                no_copy=True,
            )
        )
    return tuple(mounts)


def _now_rfc3339_ns() -> str:
    """Now as Docker writes times: RFC 3339 in UTC with nanoseconds."""
    ns = time.time_ns()
    seconds = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{ns % 1_000_000_000:09d}Z"

"""docker.py's two translations, without a dockerd: Docker's error answers into typed errors,
and a ContainerSpec into Docker's JSON.

The answers are Docker's own, status and message: the engine's and the rig registries' ones as
the rig's dockerd 20.10 sent them when provoked through the adapter, the others (newer Docker,
Docker Hub, broken registries, layers) as moby, distribution and Go's net/http write them; ids
are shortened.
"""

from __future__ import annotations

import pytest

from deepdockd.docker import (
    BindMount,
    ContainerSpec,
    DockerConflict,
    DockerFailed,
    DockerNotFound,
    LayerFailed,
    Limits,
    LogRotation,
    PortTaken,
    RegistryBadAnswer,
    RegistryDenied,
    RegistryFailed,
    RegistryNotFound,
    RegistryNotReached,
    RegistryUnauthorized,
    StorageLimitRefused,
    SubnetTaken,
    VolumeMount,
    create_config,
    docker_error,
)

ENGINE_ANSWERS = [
    (404, "No such container: 3f2a0c9d1e7b", DockerNotFound),
    (404, "No such image: deepdockd-test/none:latest", DockerNotFound),
    # A name that happens to hold one of Docker's words is still just a missing image.
    (404, "No such image: overlaps:latest", DockerNotFound),
    (404, "get deepdock-home-alice.alice: no such volume", DockerNotFound),
    (404, "network 3f2a0c9d1e7b not found", DockerNotFound),
    (409, 'Conflict. The container name "/web" is already in use by container "3f2a0c9d1e7b". '
          "You have to remove (or rename) that container to be able to reuse that name.",
     DockerConflict),
    (409, 'conflict: unable to remove repository reference "deepdockd-test/busybox:latest" '
          "(must force) - container e2721a4d5154 is using its referenced image f6baf602fa23",
     DockerConflict),
    (409, "conflict: unable to delete 3f2a0c9d1e7b (must be forced) - image is being used by "
          "stopped container 9b1e2f3a4c5d", DockerConflict),
    (409, "remove deepdock-home-alice.alice: volume is in use - [3f2a0c9d1e7b]", DockerConflict),
    (409, "network with name deepdock-net-alice already exists", DockerConflict),
    (403, "Pool overlaps with other one on this address space", SubnetTaken),
    # Newer Docker:
    (403, "invalid pool request: Pool overlaps with other one on this address space", SubnetTaken),
    (500, "OCI runtime create failed: container_linux.go:380: starting container process caused: "
          'exec: "/bin/sh": stat /bin/sh: no such file or directory: unknown', DockerFailed),
    (500, "could not select device driver \"nvidia\" with capabilities: [[gpu]]", DockerFailed),
    # A StorageOpt size on overlay2 that is not over XFS with pquota (Docker 20.10, the rig).
    (500, "--storage-opt is supported only for overlay over xfs with 'pquota' mount option",
     StorageLimitRefused),
]  # fmt: skip


@pytest.mark.parametrize(("status", "message", "kind"), ENGINE_ANSWERS)
def test_engine_answers(status: int, message: str, kind: type[DockerFailed]) -> None:
    error = docker_error(status, message)
    assert type(error) is kind
    # Whatever the type, the error keeps Docker's answer, and answers a client that no service
    # turned it into a clearer one exactly as before: 502, docker_error.
    assert (error.docker_status, error.docker_message) == (status, message)
    assert (error.status, error.code) == (502, "docker_error")
    assert error.message == f"Docker answered {status}: {message}"


PORT_ANSWERS = [
    # moby's port allocator: another container (or a create in flight) holds the port.
    ("driver failed programming external connectivity on endpoint web (3f2a0c9d1e7b): "
     "Bind for 0.0.0.0:22000 failed: port is already allocated", 22000),
    # Its userland proxy: a process of the host binds the port.
    ("driver failed programming external connectivity on endpoint web (3f2a0c9d1e7b): Error "
     "starting userland proxy: listen tcp4 127.0.0.1:23001: bind: address already in use", 23001),
    # Newer Docker (seen from 29) puts a prefix before the same words.
    ("failed to set up container networking: driver failed programming external connectivity "
     "on endpoint web (3f2a0c9d1e7b): Bind for 0.0.0.0:18081 failed: port is already allocated",
     18081),
    # Newer Docker's port mapper names the host port, then the container's address and port.
    ("failed to set up container networking: driver failed programming external connectivity "
     "on endpoint web (3f2a0c9d1e7b): failed to bind host port for "
     "0.0.0.0:8080:172.17.0.2:80/tcp: address already in use", 8080),
]  # fmt: skip


@pytest.mark.parametrize(("message", "host_port"), PORT_ANSWERS)
def test_port_taken(message: str, host_port: int) -> None:
    error = docker_error(500, message)
    assert isinstance(error, PortTaken)
    assert host_port in error.ports_named
    assert host_port + 1 not in error.ports_named


REGISTRY_ANSWERS = [
    (404, "pull access denied for nosuchrepo, repository does not exist or may require "
          "'docker login': denied: requested access to the resource is denied",
     RegistryDenied, ""),
    (404, "manifest for 127.0.0.1:5000/busybox:nope not found: manifest unknown: manifest "
          "unknown", RegistryNotFound, ""),
    (500, "Get \"http://127.0.0.1:5000/v2/none/manifests/latest\": name unknown: repository name "
          "not known to registry", RegistryNotFound, ""),
    (500, 'Head "http://127.0.0.1:5001/v2/private/manifests/latest": no basic auth credentials',
     RegistryUnauthorized, ""),
    (500, 'Get "http://127.0.0.1:5001/v2/": unauthorized: authentication required',
     RegistryUnauthorized, ""),
    (500, 'Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection refused',
     RegistryNotReached, "connection refused"),
    (500, 'Get "https://nosuch.invalid/v2/": dial tcp: lookup nosuch.invalid on 10.0.0.1:53: no '
          "such host", RegistryNotReached, "no such host"),
    (500, 'Get "https://127.0.0.1:5000/v2/": http: server gave HTTP response to HTTPS client',
     RegistryNotReached, "it answers HTTP, not HTTPS"),
    (500, 'Get "https://registry.lab/v2/": x509: certificate signed by unknown authority',
     RegistryNotReached, "its TLS certificate is not trusted"),
    (500, 'Get "https://registry.lab/v2/": net/http: request canceled while waiting for '
          "connection (Client.Timeout exceeded while awaiting headers)",
     RegistryNotReached, "timed out"),
    # A web server where a registry was expected: its page says "Not Found", and is not read.
    (500, "error parsing HTTP 404 response body: invalid character '<' looking for beginning of "
          'value: "<html><body>Not Found</body></html>"',
     RegistryBadAnswer, "HTTP status 404 with a body that is not a registry's"),
    (500, "received unexpected HTTP status: 503 Service Unavailable",
     RegistryBadAnswer, "unexpected HTTP status 503"),
    (500, "toomanyrequests: You have reached your pull rate limit. You may increase the limit by "
          "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
     RegistryBadAnswer, "too many requests (a rate limit)"),
    (500, 'Get "http://127.0.0.1:2222/v2/": malformed HTTP response "SSH-2.0-OpenSSH_9.2p1"',
     RegistryBadAnswer, "an answer that is not HTTP"),
    # Errors inside the pull's progress stream come with status 0.
    (0, "filesystem layer verification failed for digest sha256:3f2a0c9d1e7b",
     LayerFailed, "a layer's content does not match its digest"),
    (0, "no matching manifest for linux/amd64 in the manifest list entries",
     LayerFailed, "the image has no variant for this host's platform"),
    (0, "write /var/lib/docker/tmp/GetImageBlob123: no space left on device", RegistryFailed, ""),
]  # fmt: skip


@pytest.mark.parametrize(("status", "message", "kind", "reason"), REGISTRY_ANSWERS)
def test_registry_answers(
    status: int, message: str, kind: type[RegistryFailed], reason: str
) -> None:
    error = docker_error(status, message, registry=True)
    assert type(error) is kind
    assert error.reason == reason
    assert (error.docker_status, error.docker_message) == (status, message)


def test_registry_404_without_words_is_not_found() -> None:
    """A pull's 404 is the registry's, whatever Docker said with it."""
    assert type(docker_error(404, "something new", registry=True)) is RegistryNotFound
    assert type(docker_error(404, "something new")) is DockerNotFound


def test_create_config() -> None:
    """The JSON of POST /containers/create, key by key, as deepdockd has always sent it."""
    spec = ContainerSpec(
        name="web",
        image_id="sha256:" + "a" * 64,
        entrypoint=("/bin/sh", "/.deepdockd/bootstrap.sh"),
        cmd=("", "--", "sleep", "infinity"),
        user="0",
        env=("NVIDIA_VISIBLE_DEVICES=void",),
        hostname="web",
        labels={"deepdockd.namespace": "lab"},
        published_ports={22: ("0.0.0.0", 22000), 8888: ("127.0.0.1", 23000)},
        mounts=(
            BindMount(source="/srv/data", target="/data", read_only=True),
            VolumeMount(
                volume="lab-home-alice.alice",
                target="/home/alice",
                labels={"deepdockd.kind": "home"},
                no_copy=True,
            ),
        ),
        limits=Limits(shm_size_mib=64, memory_mib=1024, cpus=1.5, pids=4096),
        capabilities=("CHOWN", "SETUID"),
        log_rotation=LogRotation(max_size="50m", max_files=3),
        network="lab-net-alice",
        gpu_device_ids=("GPU-1234",),
        init=True,
        restart_unless_stopped=True,
        tmpfs={"/.deepdockd": "mode=0700,size=16m"},
    )
    mib = 1024 * 1024
    assert create_config(spec) == {
        "Image": "sha256:" + "a" * 64,
        "Entrypoint": ["/bin/sh", "/.deepdockd/bootstrap.sh"],
        "Cmd": ["", "--", "sleep", "infinity"],
        "User": "0",
        "Env": ["NVIDIA_VISIBLE_DEVICES=void"],
        "Hostname": "web",
        "ExposedPorts": {"22/tcp": {}, "8888/tcp": {}},
        "Labels": {"deepdockd.namespace": "lab"},
        "HostConfig": {
            "Init": True,
            "PortBindings": {
                "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "22000"}],
                "8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": "23000"}],
            },
            "Mounts": [
                {"Type": "bind", "Source": "/srv/data", "Target": "/data", "ReadOnly": True},
                {
                    "Type": "volume",
                    "Source": "lab-home-alice.alice",
                    "Target": "/home/alice",
                    "VolumeOptions": {"NoCopy": True, "Labels": {"deepdockd.kind": "home"}},
                },
            ],
            "ShmSize": 64 * mib,
            "Memory": 1024 * mib,
            "MemorySwap": 1024 * mib,
            "NanoCpus": 1_500_000_000,
            "PidsLimit": 4096,
            "RestartPolicy": {"Name": "unless-stopped"},
            "CapDrop": ["ALL"],
            "CapAdd": ["CHOWN", "SETUID"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "50m", "max-file": "3"}},
            "NetworkMode": "lab-net-alice",
            "Tmpfs": {"/.deepdockd": "mode=0700,size=16m"},
            "DeviceRequests": [
                {"Driver": "nvidia", "DeviceIDs": ["GPU-1234"], "Capabilities": [["gpu"]]}
            ],
        },
    }


def test_create_config_without_limits_gpus_or_network() -> None:
    """What is not asked for is not sent: no limit keys, no DeviceRequests, no NetworkMode."""
    spec = ContainerSpec(
        name="web", image_id="sha256:" + "b" * 64, entrypoint=(), cmd=(), user="0", env=(),
        hostname="web", labels={}, published_ports={22: ("0.0.0.0", 22000)},
        mounts=(), limits=Limits(shm_size_mib=64, memory_mib=None, cpus=None, pids=None),
        capabilities=(), log_rotation=LogRotation(max_size="50m", max_files=3), network=None,
        gpu_device_ids=(), init=True, restart_unless_stopped=True,
    )  # fmt: skip
    host_config = create_config(spec)["HostConfig"]
    assert host_config["ShmSize"] == 64 * 1024 * 1024
    assert not {"Memory", "MemorySwap", "NanoCpus", "PidsLimit"} & host_config.keys()
    assert not {"DeviceRequests", "NetworkMode"} & host_config.keys()

"""The daemon's configuration: defaults < config file < environment < command line.

Every setting has one name. It is a key of the TOML file (``docker_host``), an environment
variable (``DEEPDOCKD_DOCKER_HOST``) and, for the settings people change most, a flag
(``--docker-host``). A bad value is a :class:`ConfigError` that names the setting, the value
and where the value came from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepdockd.quota_settings import NO_QUOTAS, Quotas, parse_quotas
from deepdockd.references import is_registry_host
from deepdockd.shared_mounts import SharedMount, parse_shared_mounts

DEFAULT_CONFIG_FILE = Path("/etc/deepdockd/deepdockd.toml")
ENV_PREFIX = "DEEPDOCKD_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

# Docker's own rule for label-safe names is looser; ours keeps the namespace usable as a
# label value, a container-name prefix and a file name. Matched whole (fullmatch).
_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_DOCKER_SCHEMES = ("unix://", "tcp://", "http://", "https://")
# Outside Docker's own default pools (172.17.0.0/12, 192.168.0.0/16); a host whose networks
# use it sets another.
DEFAULT_NETWORK_POOL = ipaddress.IPv4Network("10.213.0.0/16")


class ConfigError(Exception):
    """A setting that cannot be used; ``str()`` is one line for a person to act on."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    docker_host: str = "unix:///var/run/docker.sock"
    state_dir: Path = Path("/var/lib/deepdockd")
    namespace: str = "deepdock"
    log_level: str = "info"
    log_format: str = "text"
    # On SIGTERM, how long requests in flight may take to finish.
    shutdown_timeout: float = 30.0
    # Bearer tokens on every route but health and documentation. Off only on loopback.
    auth: bool = True
    # The largest request body accepted, in bytes.
    max_body_size: int = 1024 * 1024
    # Seconds a client has to send a request's whole header; a connection that has not by
    # then is closed, so that clients that send half a header cannot hold connections.
    header_timeout: float = 30.0
    # Seconds a kept-alive connection may stay idle between two requests before it is closed.
    keepalive_timeout: float = 15.0
    # Open client connections at most, in all and per client address (an IPv6 client is its
    # /64); one more is closed at once. The file limit must fit them (connections.py).
    max_connections: int = 4096
    max_connections_per_client: int = 256
    # The local socket (docs/security.md#host-users): the same API, each caller the host user
    # the kernel says they are; root and admin_group's members are admins. host_users false:
    # no socket.
    socket: Path = Path("/run/deepdockd/api.sock")
    host_users: bool = True
    admin_group: str = "deepdock-admin"
    # GPU metrics: sample every interval, average each bucket into one point, keep retention.
    gpu_sample_interval: float = 1.0
    gpu_bucket: float = 10.0
    gpu_retention: float = 24 * 3600.0
    # How often to look again for NVML when there is none (a driver loaded later is found).
    gpu_retry_interval: float = 30.0
    # Containers: SSH ports are allocated from this range and published on this address.
    ssh_port_range: tuple[int, int] = (22000, 22999)
    ssh_bind_address: str = "0.0.0.0"
    # How long a create waits for the container's SSH server to greet.
    ssh_ready_timeout: float = 300.0
    # Which SSH server a container runs: "auto" (the image's OpenSSH sshd when it has one,
    # else deepdockd's bundled static server), "bundled" (always ours), "image" (the image's
    # only; an image without sshd fails the create).
    ssh_server: str = "auto"
    # Give containers deepdockd's files (the bootstrap's, the bundled SSH server) as read-only
    # mounts of STATE_DIR (false: copy them into each container, for a Docker whose paths are
    # not this host's: rootless, in a VM). Over TCP they are always copied.
    mount_host_files: bool = True
    # Let two running containers hold the same GPU.
    gpu_sharing: bool = False
    # Registries ("host" or "host:port") that pulls may use although they are loopback,
    # link-local or private addresses; any public registry is allowed (registries.py).
    allowed_registries: tuple[str, ...] = ()
    # Each owner's containers on a bridge network of the owner's own, a /24 of this pool.
    network_isolation: bool = True
    network_pool: ipaddress.IPv4Network = DEFAULT_NETWORK_POOL
    # What containers may reach (docs/security.md#egress): the internet, not link-local, the
    # private ranges or the host's own addresses, unless egress_allow opens a network (and
    # port, TCP and UDP). egress_policy false: deepdockd never touches the firewall.
    egress_policy: bool = True
    egress_allow: tuple[tuple[ipaddress.IPv4Network, int | None], ...] = ()
    # Docker's json-file log of each container: rotated at this size, this many files kept.
    log_max_size: str = "50m"
    log_max_file: int = 3
    # Workspaces: each container's /dev/shm (0: half its memory limit; without one, half the
    # host's RAM, at most 16384 MiB; never above the limit), its memory (None, "auto": a
    # quarter of the host's RAM; 0: no limit) and CPUs (0: no limit), and the ceilings a
    # request may ask up to (0: none).
    default_shm_size_mb: int = 0
    default_memory_mb: int | None = None
    max_memory_mb: int = 0
    default_cpus: float = 0.0
    max_cpus: float = 0.0
    # Processes a container may have at once (0: no limit): a fork bomb stops there.
    pids_limit: int = 16384
    # Host ports for the container ports a create asks to publish ("ports").
    service_port_range: tuple[int, int] = (23000, 23999)
    # ... published on this address: loopback, so that only their owner reaches them, through
    # the proxy or an SSH forward (docs/security.md#services).
    service_bind_address: str = "127.0.0.1"
    # Host directories every container gets: "HOST_PATH:CONTAINER_PATH[:ro|rw]" (ro when
    # left out). Users never name a host path.
    shared_mounts: tuple[SharedMount, ...] = ()
    # Answer container lists from a view kept current by Docker's events (false: ask Docker
    # on every read, as before).
    live_view: bool = True
    # Streams one user may hold at once, admins too: log follows, /events and pulls in flight
    # (0: no cap). One more is a 429 naming the cap. Streams have Docker connections of their
    # own, apart from the quick calls', so this bounds what one user holds of the host's.
    max_streams_per_user: int = 20
    # Fair share (docs/fair-share.md); these six are read again on SIGHUP. Per-user limits
    # ([quotas], 0: none), leases (hours, 0: none), and stopping containers whose GPUs all
    # stayed at or under idle_gpu_utilization percent for idle_gpu_minutes (0: never).
    quotas: Quotas = NO_QUOTAS
    default_lease_hours: float = 0.0
    max_lease_hours: float = 0.0
    idle_gpu_minutes: float = 0.0
    idle_gpu_utilization: float = 5.0
    # How long before a lease ends or an idle stop the user's terminals are told.
    stop_warning_minutes: float = 10.0
    # Disk (docs/fair-share.md#disk): how often Docker's system/df measures the containers'
    # writable layers and the home volumes (seconds; it walks them all, so not often), and a
    # hard limit on each new container's writable layer (GiB, 0: none), which Docker applies
    # only on overlay2 over XFS mounted with pquota.
    disk_usage_interval: float = 60.0
    container_disk_limit_gb: float = 0.0
    # Usage history (docs/usage.md): GPU-hours kept this many days in the state directory's
    # SQLite database, written at most once per flush interval (seconds; a crash loses that).
    usage_retention_days: int = 400
    usage_flush_interval: float = 5.0


# --- parsers: raw value (a TOML value or a string) -> typed value, or ValueError(why) ---


def _whole_number(raw: object, low: int, high: int, why: str) -> int:
    """``raw`` (a TOML integer, or a string of digits) if it is from ``low`` to ``high``."""
    if isinstance(raw, str) and raw.isdecimal():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise ValueError(why)
    return raw


def _parse_host(raw: object) -> str:
    if not isinstance(raw, str) or not raw or any(c.isspace() for c in raw):
        raise ValueError("must be an IP address or a host name")
    return raw


def _parse_port(raw: object) -> int:
    return _whole_number(raw, 1, 65535, "must be a TCP port number from 1 to 65535")


def _parse_docker_host(raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith(_DOCKER_SCHEMES):
        raise ValueError("must be a Docker address such as unix:///var/run/docker.sock")
    if raw.startswith("unix://") and not raw.removeprefix("unix://").startswith("/"):
        raise ValueError("must name an absolute socket path, as in unix:///var/run/docker.sock")
    return raw


def _parse_state_dir(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise ValueError("must be an absolute directory path")
    return Path(raw)


def _parse_socket(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.startswith("/") or raw.endswith("/"):
        raise ValueError("must be the absolute path of the socket file")
    if len(raw.encode()) > 107:  # sun_path holds 108 bytes with the final NUL
        raise ValueError("is longer than the 107 bytes a Unix socket's path may have")
    return Path(raw)


def _parse_group(raw: object) -> str:
    if not isinstance(raw, str) or not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", raw):
        raise ValueError("must be a host group's name (as groupadd takes it)")
    return raw


def _parse_namespace(raw: object) -> str:
    if not isinstance(raw, str) or not _NAMESPACE_RE.fullmatch(raw):
        raise ValueError(
            "must be 1-63 characters of lower-case letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return raw


def _parse_log_level(raw: object) -> str:
    if not isinstance(raw, str) or raw.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return raw.lower()


SSH_SERVERS = ("auto", "bundled", "image")


def _parse_ssh_server(raw: object) -> str:
    if not isinstance(raw, str) or raw.lower() not in SSH_SERVERS:
        raise ValueError(f"must be one of {', '.join(SSH_SERVERS)}")
    return raw.lower()


def _parse_log_format(raw: object) -> str:
    if not isinstance(raw, str) or raw.lower() not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return raw.lower()


def _number(raw: object, low: float, high: float, why: str) -> float:
    """``raw`` (a TOML number, or a string of one) if it is from ``low`` to ``high``."""
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            raw = float(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= high:
        raise ValueError(why)
    return float(raw)


def _parse_seconds(raw: object) -> float:
    return _number(
        raw, 0.001, 2678400, "must be a number of seconds from 0.001 to 2678400 (31 days)"
    )


def _parse_port_range(raw: object) -> tuple[int, int]:
    low, _, high = str(raw).partition("-") if isinstance(raw, str) else ("", "", "")
    if not (low.isdecimal() and high.isdecimal() and 1 <= int(low) <= int(high) <= 65535):
        raise ValueError('must be "LOW-HIGH", two TCP ports with LOW <= HIGH, as in "22000-22999"')
    return int(low), int(high)


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
        return raw.lower() in ("true", "1", "yes")
    raise ValueError("must be true or false")


def _parse_body_size(raw: object) -> int:
    return _whole_number(
        raw, 1024, 64 * 1024 * 1024, "must be a number of bytes from 1024 to 67108864 (64 MiB)"
    )


def _parse_network_pool(raw: object) -> ipaddress.IPv4Network:
    try:
        pool = ipaddress.IPv4Network(raw if isinstance(raw, str) else "")
    except ValueError:
        pool = None
    if pool is None or pool.prefixlen > 24:
        raise ValueError(
            "must be an IPv4 network of /24 or larger (each owner takes a /24), as in 10.213.0.0/16"
        )
    return pool


def _parse_egress_allow(raw: object) -> tuple[tuple[ipaddress.IPv4Network, int | None], ...]:
    # A TOML array in the file; one string, comma-separated, in the environment.
    items = raw
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")] if raw else []
    if not isinstance(items, list):
        items = [None]
    allowed = []
    for item in items:
        address, colon, port = item.partition(":") if isinstance(item, str) else ("", "", "")
        try:
            network = ipaddress.IPv4Network(address)
        except ValueError:
            network = None
        if network is None or (colon and not (port.isdecimal() and 1 <= int(port) <= 65535)):
            raise ValueError(
                'must be IPv4 networks or addresses with an optional port, "CIDR[:PORT]", as '
                'in ["10.1.2.0/24:443", "192.168.5.7"] (comma-separated in the environment)'
            )
        allowed.append((network, int(port) if port else None))
    return tuple(allowed)


def _parse_log_size(raw: object) -> str:
    text = raw.lower() if isinstance(raw, str) else ""
    if not re.fullmatch(r"[1-9][0-9]{0,5}[kmg]", text):
        raise ValueError("must be a size such as 50m: a number, then k, m or g")
    return text


def _parse_log_files(raw: object) -> int:
    return _whole_number(raw, 1, 100, "must be a number of files from 1 to 100")


def _parse_mebibytes(raw: object) -> int:
    return _whole_number(
        raw, 0, 16 * 1024 * 1024, "must be a number of MiB from 0 to 16777216 (0: the default rule)"
    )


def _parse_default_memory(raw: object) -> int | None:
    if raw == "auto":
        return None
    return _whole_number(
        raw, 0, 16 * 1024 * 1024,
        'must be "auto" (a quarter of the host\'s RAM) or a number of MiB from 0 (no limit) '
        "to 16777216",
    )  # fmt: skip


def _parse_cpus(raw: object) -> float:
    return _number(raw, 0, 4096, "must be a number of CPUs from 0 to 4096, as in 7.5 (0: no limit)")


def _parse_connections(raw: object) -> int:
    return _whole_number(raw, 1, 1048576, "must be a number of connections from 1 to 1048576")


def _parse_streams(raw: object) -> int:
    return _whole_number(raw, 0, 1048576, "must be a number of streams from 0 (no cap) to 1048576")


def _parse_pids_limit(raw: object) -> int:
    return _whole_number(
        raw, 0, 4194304, "must be a number of processes from 0 to 4194304 (0: no limit)"
    )


def _parse_hours(raw: object) -> float:
    return _number(raw, 0, 87600, "must be a number of hours from 0 to 87600, as in 0.5 (0: none)")


def _parse_minutes(raw: object) -> float:
    return _number(
        raw, 0, 525600, "must be a number of minutes from 0 to 525600, as in 0.5 (0: none)"
    )


def _parse_gigabytes(raw: object) -> float:
    return _number(raw, 0, 1024 * 1024, "must be a number of GiB from 0 to 1048576 (0: none)")


def _parse_retention_days(raw: object) -> int:
    return _whole_number(raw, 1, 36500, "must be a whole number of days from 1 to 36500")


def _parse_percent(raw: object) -> float:
    return _number(raw, 0, 100, "must be a percentage from 0 to 100")


def _parse_ip_address(raw: object) -> str:
    try:
        return str(ipaddress.ip_address(raw if isinstance(raw, str) else ""))
    except ValueError:
        raise ValueError("must be an IP address, as in 0.0.0.0 or 127.0.0.1") from None


def _parse_registries(raw: object) -> tuple[str, ...]:
    # A TOML array in the file; one string, comma-separated, in the environment.
    items = raw
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")] if raw else []
    if not isinstance(items, list) or not all(
        isinstance(item, str) and is_registry_host(item) for item in items
    ):
        raise ValueError(
            'must be registry hosts, "host" or "host:port" as image references name them '
            '(a list in the config file, as in ["127.0.0.1:5000", "registry.lab"]; '
            "comma-separated in the environment)"
        )
    return tuple(items)


PARSERS: Mapping[str, Callable[[object], Any]] = {
    "host": _parse_host,
    "port": _parse_port,
    "docker_host": _parse_docker_host,
    "state_dir": _parse_state_dir,
    "namespace": _parse_namespace,
    "log_level": _parse_log_level,
    "log_format": _parse_log_format,
    "shutdown_timeout": _parse_seconds,
    "gpu_sample_interval": _parse_seconds,
    "gpu_bucket": _parse_seconds,
    "gpu_retention": _parse_seconds,
    "gpu_retry_interval": _parse_seconds,
    "ssh_port_range": _parse_port_range,
    "ssh_bind_address": _parse_ip_address,
    "ssh_ready_timeout": _parse_seconds,
    "ssh_server": _parse_ssh_server,
    "gpu_sharing": _parse_bool,
    "auth": _parse_bool,
    "max_body_size": _parse_body_size,
    "header_timeout": _parse_seconds,
    "keepalive_timeout": _parse_seconds,
    "max_connections": _parse_connections,
    "max_connections_per_client": _parse_connections,
    "socket": _parse_socket,
    "host_users": _parse_bool,
    "admin_group": _parse_group,
    "allowed_registries": _parse_registries,
    "network_isolation": _parse_bool,
    "network_pool": _parse_network_pool,
    "egress_policy": _parse_bool,
    "egress_allow": _parse_egress_allow,
    "log_max_size": _parse_log_size,
    "log_max_file": _parse_log_files,
    "default_shm_size_mb": _parse_mebibytes,
    "default_memory_mb": _parse_default_memory,
    "max_memory_mb": _parse_mebibytes,
    "default_cpus": _parse_cpus,
    "max_cpus": _parse_cpus,
    "pids_limit": _parse_pids_limit,
    "service_port_range": _parse_port_range,
    "service_bind_address": _parse_ip_address,
    "shared_mounts": parse_shared_mounts,
    "live_view": _parse_bool,
    "mount_host_files": _parse_bool,
    "max_streams_per_user": _parse_streams,
    "quotas": parse_quotas,
    "default_lease_hours": _parse_hours,
    "max_lease_hours": _parse_hours,
    "idle_gpu_minutes": _parse_minutes,
    "idle_gpu_utilization": _parse_percent,
    "stop_warning_minutes": _parse_minutes,
    "disk_usage_interval": _parse_seconds,
    "container_disk_limit_gb": _parse_gigabytes,
    "usage_retention_days": _parse_retention_days,
    "usage_flush_interval": _parse_seconds,
}
assert set(PARSERS) == {f.name for f in dataclasses.fields(Config)}


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def load_config(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str] = os.environ,
    *,
    default_file: Path = DEFAULT_CONFIG_FILE,
) -> Config:
    """Merge the sources, highest first: ``flags`` (setting name -> value or None), the
    environment, the config file, the defaults.

    The file is ``flags["config"]``, else ``$DEEPDOCKD_CONFIG``, else ``default_file`` when
    that exists.
    """
    values: dict[str, Any] = {}
    for key, raw, source in _layers(flags, environ, default_file):
        parse = PARSERS[key]
        try:
            values[key] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{key}: {raw!r} {exc} (from {source})") from None
    config = Config(**values)
    _check_together(config)
    return config


def _check_together(config: Config) -> None:
    """Settings that are each fine alone but not together."""
    if not config.auth and not is_loopback(config.host):
        raise ConfigError(
            f"auth: false is allowed only when the daemon listens on a loopback address "
            f"(127.0.0.1, ::1, localhost); host is {config.host}, so anyone who reaches it "
            "could run containers on this machine"
        )
    if config.gpu_bucket < config.gpu_sample_interval:
        raise ConfigError(
            f"gpu_bucket: {config.gpu_bucket:g} s is shorter than gpu_sample_interval "
            f"({config.gpu_sample_interval:g} s); a bucket averages one or more samples"
        )
    ssh_low, ssh_high = config.ssh_port_range
    service_low, service_high = config.service_port_range
    if service_low <= ssh_high and ssh_low <= service_high:
        raise ConfigError(
            f"service_port_range: {service_low}-{service_high} overlaps ssh_port_range "
            f"({ssh_low}-{ssh_high}); give them separate ranges"
        )
    for ceiling, default, what in (
        ("max_memory_mb", "default_memory_mb", "MiB"),
        ("max_cpus", "default_cpus", "CPUs"),
    ):
        high, value = getattr(config, ceiling), getattr(config, default)
        if high and value is not None and value > high:  # None ("auto") is cut to the ceiling
            raise ConfigError(f"{default}: {value:g} {what} is above {ceiling} ({high:g} {what})")
    if config.max_lease_hours and not 0 < config.default_lease_hours <= config.max_lease_hours:
        raise ConfigError(
            f"default_lease_hours: {config.default_lease_hours:g} is not within max_lease_hours "
            f"({config.max_lease_hours:g}): under a ceiling every container has a lease, so "
            "give a default above 0 and up to the ceiling"
        )
    if config.gpu_retention < config.gpu_bucket:
        raise ConfigError(
            f"gpu_retention: {config.gpu_retention:g} s is shorter than gpu_bucket "
            f"({config.gpu_bucket:g} s); it must keep at least one point"
        )


def _layers(
    flags: Mapping[str, str | None], environ: Mapping[str, str], default_file: Path
) -> list[tuple[str, object, str]]:
    """(key, raw value, source) for every value given, lowest precedence first."""
    layers: list[tuple[str, object, str]] = []
    config_file = _choose_config_file(flags, environ, default_file)
    if config_file is not None:
        layers += [(k, v, f"config file {config_file}") for k, v in _read_toml(config_file)]
    layers += [(k, environ[env_name(k)], env_name(k)) for k in PARSERS if env_name(k) in environ]
    layers += [(k, flags[k], flag_name(k)) for k in PARSERS if flags.get(k) is not None]
    return layers


def _choose_config_file(
    flags: Mapping[str, str | None], environ: Mapping[str, str], default_file: Path
) -> Path | None:
    explicit = flags.get("config") or environ.get(env_name("config"))
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config: {explicit!r} is not a readable file")
        return path
    return default_file if default_file.is_file() else None


def _read_toml(path: Path) -> list[tuple[str, object]]:
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(document) - set(PARSERS))
    if unknown:
        raise ConfigError(
            f"config: unknown key {unknown[0]!r} in {path} (known keys: {', '.join(PARSERS)})"
        )
    return list(document.items())


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

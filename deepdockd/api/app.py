"""The application factory: builds the app, does no I/O."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from deepdockd import labels
from deepdockd.accounting import GpuAccounting
from deepdockd.api.auth import auth_middleware
from deepdockd.api.encoded import EncodedContainers
from deepdockd.api.keys import (
    ACCOUNTING,
    CONFIG,
    CONTAINERS,
    DOCKER,
    ENCODED,
    EXPORTER,
    GPUS,
    IMAGES,
    METRICS,
    POLICY,
    PROXY_SESSIONS,
    REAPER,
    RELAY,
    STATS,
    STREAM_CAPS,
    TOKENS,
    USAGE,
    VIEW,
)
from deepdockd.api.middlewares import audit_middleware, error_middleware
from deepdockd.api.routes import setup_routes
from deepdockd.api.stream_caps import StreamCaps
from deepdockd.config import Config
from deepdockd.containers.disk import DiskMeter
from deepdockd.containers.reaper import Reaper
from deepdockd.containers.service import ContainerService
from deepdockd.containers.view import ContainerView
from deepdockd.docker import Docker
from deepdockd.errors import ApiError
from deepdockd.exporter.service import Exporter
from deepdockd.fairshare.policy import PolicyHolder
from deepdockd.fairshare.records import ContainerRecords
from deepdockd.firewall.keeper import EgressFirewall
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.host_users import AdminAccounts
from deepdockd.images.records import ImageRecords
from deepdockd.images.registries import RegistryReach
from deepdockd.images.service import ImageService
from deepdockd.metrics import MetricsService
from deepdockd.proxy.relay import Relay
from deepdockd.proxy.sessions import ProxySessions
from deepdockd.state_files import StateDirectory
from deepdockd.stats.sampler import ContainerStats
from deepdockd.tokens import TokenStore
from deepdockd.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)


def create_app(
    config: Config, *, docker: Docker | None = None, gpus: GpuSampler | None = None
) -> web.Application:
    """``docker`` and ``gpus`` are seams for tests; None means the real thing, made from
    ``config``."""
    tokens = TokenStore(config.state_dir) if config.auth else None
    docker = docker if docker is not None else Docker(config.docker_host)
    gpus = gpus if gpus is not None else _sampler(config)
    view = ContainerView(docker, config.namespace)
    accounting = GpuAccounting(gpus, view, docker)
    disk = DiskMeter(docker, config.namespace, config.disk_usage_interval)
    usage = UsageRecorder(
        gpus, view, config.state_dir,
        flush_interval_s=config.usage_flush_interval,
        retention_days=config.usage_retention_days,
    )  # fmt: skip
    # Per-container use on the GPU sampler's cadence and buckets (deepdockd/stats/).
    stats = ContainerStats(
        view, docker, interval_s=config.gpu_sample_interval, bucket_s=config.gpu_bucket
    )
    exporter = Exporter(config, gpus, accounting, view, disk=disk, usage=usage, stats=stats)
    sessions = ProxySessions(config.namespace)
    app = web.Application(
        middlewares=[
            exporter.requests.middleware(),
            audit_middleware,
            error_middleware,
            auth_middleware(tokens, config.admin_group if config.host_users else None, sessions),
        ],
        client_max_size=config.max_body_size,
    )
    app[CONFIG] = config
    app[DOCKER] = docker
    app[GPUS] = gpus
    app[VIEW] = view
    app[ACCOUNTING] = accounting
    app[USAGE] = usage
    app[STATS] = stats
    app[ENCODED] = EncodedContainers()
    app[EXPORTER] = exporter
    app[STREAM_CAPS] = StreamCaps(config.max_streams_per_user)
    app[PROXY_SESSIONS] = sessions
    app[RELAY] = Relay(sessions.cookie_name)
    # Docker says whether a state directory without its files is new or lost.
    witness = functools.partial(_namespace_has_containers, docker, config.namespace)
    state = StateDirectory(config.state_dir, witness=witness)
    app[IMAGES] = ImageService(
        app[DOCKER],
        RegistryReach(config.allowed_registries),
        records=ImageRecords(state),
        namespace=config.namespace,
    )
    app[METRICS] = MetricsService(gpus, view, accounting)
    app[POLICY] = PolicyHolder(config)
    app[CONTAINERS] = ContainerService(
        app[DOCKER], app[IMAGES], app[GPUS], config, app[VIEW],
        policy=app[POLICY], records=ContainerRecords(state), disk=disk,
        is_admin=functools.partial(
            _is_admin, tokens, AdminAccounts(config.admin_group) if config.host_users else None
        ),
    )  # fmt: skip
    app[REAPER] = Reaper(app[CONTAINERS], app[VIEW], gpus, app[POLICY], docker)
    if tokens is not None:
        app[TOKENS] = tokens
        app.on_startup.append(functools.partial(_load_tokens, tokens))
    app.cleanup_ctx.append(_docker_client)
    app.cleanup_ctx.append(_firewall)  # before anything else acts on containers
    app.cleanup_ctx.append(_relay)
    app.cleanup_ctx.append(functools.partial(_state_directory, state))
    app.on_startup.append(_files_on_host)
    app.cleanup_ctx.append(_gpu_sampler)
    app.cleanup_ctx.append(_gpu_accounting)
    app.cleanup_ctx.append(_usage_recorder)
    if config.live_view:
        app.cleanup_ctx.append(_container_view)
    app.cleanup_ctx.append(_reaper)
    app.cleanup_ctx.append(_disk_meter)
    app.cleanup_ctx.append(_container_stats)
    setup_routes(app)
    return app


def _sampler(config: Config) -> GpuSampler:
    return GpuSampler(
        interval_s=config.gpu_sample_interval,
        bucket_s=config.gpu_bucket,
        retention_s=config.gpu_retention,
        retry_interval_s=config.gpu_retry_interval,
    )


def _is_admin(tokens: TokenStore | None, accounts: AdminAccounts | None, user: str) -> bool:
    # Auth off: every caller is the anonymous admin. Else an admin's token, or on a host
    # with host users an admin's host account.
    if tokens is None or tokens.role_of(user) == "admin":
        return True
    return accounts is not None and accounts.is_admin(user)


async def _load_tokens(tokens: TokenStore, app: web.Application) -> None:
    # At start, so that a file broken later leaves the daemon the tokens it started with.
    tokens.refresh()


async def _docker_client(app: web.Application) -> AsyncIterator[None]:
    docker = app[DOCKER]
    await docker.open()
    yield
    await app[IMAGES].close()
    await docker.close()


async def _relay(app: web.Application) -> AsyncIterator[None]:
    await app[RELAY].open()
    yield
    await app[RELAY].close()


async def _namespace_has_containers(docker: Docker, namespace: str) -> bool:
    return bool(await docker.list_containers(filters=labels.namespace_filter(namespace)))


async def _state_directory(state: StateDirectory, app: web.Application) -> AsyncIterator[None]:
    # Settled before the reaper and the first request where Docker answers within 2 s; else
    # in the background, and meanwhile each absent state file is refused.
    task = None
    try:
        async with asyncio.timeout(2):
            await state.settle()
    except (ApiError, TimeoutError):
        task = asyncio.create_task(state.keep_settling(), name="state-directory")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _files_on_host(app: web.Application) -> None:
    # The bundled SSH server, written before the first create; the bootstrap directories of
    # containers removed behind deepdockd's back, swept.
    containers = app[CONTAINERS]
    await containers.ssh_server.directory()
    try:
        await containers.bootstrap_inputs.sweep_unnamed()
    except ApiError as exc:  # Docker away: swept at the next start
        log.warning("bootstrap directories not swept: %s", exc.message)


async def _container_view(app: web.Application) -> AsyncIterator[None]:
    view = app[VIEW]
    await view.start()
    yield
    await view.stop()


async def _gpu_sampler(app: web.Application) -> AsyncIterator[None]:
    sampler = app[GPUS]
    await sampler.start()
    yield
    await sampler.stop()


async def _gpu_accounting(app: web.Application) -> AsyncIterator[None]:
    accounting = app[ACCOUNTING]
    await accounting.start()
    yield
    await accounting.stop()


async def _usage_recorder(app: web.Application) -> AsyncIterator[None]:
    usage = app[USAGE]
    await usage.start()
    yield
    await usage.stop()


async def _reaper(app: web.Application) -> AsyncIterator[None]:
    reaper = app[REAPER]
    await reaper.start()
    yield
    await reaper.stop()


async def _disk_meter(app: web.Application) -> AsyncIterator[None]:
    meter = app[CONTAINERS].disk
    await meter.start()
    yield
    await meter.stop()


async def _container_stats(app: web.Application) -> AsyncIterator[None]:
    stats = app[STATS]
    await stats.start()
    yield
    await stats.stop()


async def _firewall(app: web.Application) -> AsyncIterator[None]:
    # The egress policy (docs/security.md#egress): in place before the first request, kept
    # while the daemon runs, and left in place when it stops.
    docker = app[DOCKER]

    async def default_bridge() -> list[str]:
        networks = await docker.list_networks(filters={"name": ["bridge"]})
        return [subnet for n in networks if n.name == "bridge" for subnet in n.subnets]

    firewall = EgressFirewall(app[CONFIG], default_bridge=default_bridge)
    await firewall.start()
    yield
    await firewall.stop()

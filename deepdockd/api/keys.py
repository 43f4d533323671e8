"""Every typed key of the application's and the requests' state, in a module of their own so
that any part of the HTTP layer can import them without import cycles."""

from aiohttp import web

from deepdockd.accounting import GpuAccounting
from deepdockd.api.encoded import EncodedContainers
from deepdockd.api.stream_caps import StreamCaps
from deepdockd.config import Config
from deepdockd.containers.reaper import Reaper
from deepdockd.containers.service import ContainerService
from deepdockd.containers.view import ContainerView
from deepdockd.docker import Docker
from deepdockd.exporter.service import Exporter
from deepdockd.fairshare.policy import PolicyHolder
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.images.service import ImageService
from deepdockd.metrics import MetricsService
from deepdockd.proxy.relay import Relay
from deepdockd.proxy.sessions import ProxySessions
from deepdockd.stats.sampler import ContainerStats
from deepdockd.tokens import Caller, TokenStore
from deepdockd.usage.recorder import UsageRecorder

# The application's state.
CONFIG = web.AppKey("config", Config)
DOCKER = web.AppKey("docker", Docker)
IMAGES = web.AppKey("images", ImageService)
GPUS = web.AppKey("gpus", GpuSampler)
METRICS = web.AppKey("metrics", MetricsService)
CONTAINERS = web.AppKey("containers", ContainerService)
VIEW = web.AppKey("view", ContainerView)
ACCOUNTING = web.AppKey("accounting", GpuAccounting)
ENCODED = web.AppKey("encoded", EncodedContainers)
EXPORTER = web.AppKey("exporter", Exporter)
POLICY = web.AppKey("policy", PolicyHolder)
REAPER = web.AppKey("reaper", Reaper)
STREAM_CAPS = web.AppKey("stream_caps", StreamCaps)
PROXY_SESSIONS = web.AppKey("proxy_sessions", ProxySessions)
RELAY = web.AppKey("relay", Relay)
USAGE = web.AppKey("usage", UsageRecorder)
STATS = web.AppKey("stats", ContainerStats)
# Only where auth is on.
TOKENS = web.AppKey("tokens", TokenStore)

# A request's state.
# Where authentication puts the Caller.
REQUEST_CALLER = web.RequestKey("caller", Caller)
# True where the kernel named the caller (the local socket, no token), not a token.
REQUEST_BY_PEER = web.RequestKey("by_peer", bool)
# True where a proxy session's cookie stood in for the token (handlers/proxy.py).
REQUEST_BY_COOKIE = web.RequestKey("by_cookie", bool)
# Where authentication puts the user's name, for the access log.
REQUEST_USER = web.RequestKey("user", str)
# Where a handler names what a request acted on, where the path does not say it.
AUDIT_TARGET = web.RequestKey("audit_target", str)

"""Typed keys of the application's state, in a module of their own so that handlers and
services can import them without import cycles."""

from aiohttp import web

from deepdockd.accounting import GpuAccounting
from deepdockd.config import Config
from deepdockd.containers.service import ContainerService
from deepdockd.containers.view import ContainerView
from deepdockd.docker import Docker
from deepdockd.exporter.service import Exporter
from deepdockd.fairshare.policy import PolicyHolder
from deepdockd.fairshare.reaper import Reaper
from deepdockd.gpu.sampler import GpuSampler
from deepdockd.images.service import ImageService
from deepdockd.metrics import MetricsService

CONFIG = web.AppKey("config", Config)
DOCKER = web.AppKey("docker", Docker)
IMAGES = web.AppKey("images", ImageService)
GPUS = web.AppKey("gpus", GpuSampler)
METRICS = web.AppKey("metrics", MetricsService)
CONTAINERS = web.AppKey("containers", ContainerService)
VIEW = web.AppKey("view", ContainerView)
ACCOUNTING = web.AppKey("accounting", GpuAccounting)
EXPORTER = web.AppKey("exporter", Exporter)
POLICY = web.AppKey("policy", PolicyHolder)
REAPER = web.AppKey("reaper", Reaper)

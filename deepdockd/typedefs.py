"""Typed keys of the application's state, in a module of their own so that handlers and
services can import them without import cycles."""

from aiohttp import web

from deepdockd.config import Config
from deepdockd.docker import Docker
from deepdockd.images import ImageService

CONFIG = web.AppKey("config", Config)
DOCKER = web.AppKey("docker", Docker)
IMAGES = web.AppKey("images", ImageService)

"""Serving: listen, tell systemd we are ready, ping its watchdog, and on SIGTERM or SIGINT
stop accepting, let the requests in flight finish (up to shutdown_timeout), stop the sampler
and close Docker's client before exiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from deepdockd import __version__, systemd
from deepdockd.app import create_app
from deepdockd.config import Config
from deepdockd.logs import ACCESS_LOGGER, AccessLogger

log = logging.getLogger("deepdockd")


async def serve(config: Config) -> None:
    """Serve until SIGTERM or SIGINT; OSError when the address cannot be listened on."""
    runner = web.AppRunner(
        create_app(config),
        access_log_class=AccessLogger,
        access_log=logging.getLogger(ACCESS_LOGGER),
        shutdown_timeout=config.shutdown_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        log.info(
            "deepdockd %s listening on http://%s:%d, Docker at %s, namespace %r",
            __version__, config.host, config.port, config.docker_host, config.namespace,
        )  # fmt: skip
        systemd.notify(f"READY=1\nSTATUS=serving on {config.host}:{config.port}")
        await _until_stopped()
        log.info("stopping: finishing the requests in flight (up to %g s)", config.shutdown_timeout)
        systemd.notify("STOPPING=1")
    finally:
        await runner.cleanup()
    log.info("stopped")


async def _until_stopped() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    interval = systemd.watchdog_interval()
    watchdog = (
        asyncio.create_task(systemd.ping_watchdog(interval), name="watchdog") if interval else None
    )
    try:
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

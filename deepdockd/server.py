"""Serving: listen, tell systemd we are ready, ping its watchdog, and on SIGTERM or SIGINT
stop accepting, let the requests in flight finish (up to shutdown_timeout), stop the sampler
and close Docker's client before exiting. SIGHUP reloads the config's fair-share settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from deepdockd import __version__, connections, local_socket, systemd
from deepdockd.api.access_log import ACCESS_LOGGER, AccessLogger
from deepdockd.api.app import create_app
from deepdockd.api.keys import CONFIG, POLICY, VIEW
from deepdockd.config import Config, ConfigError
from deepdockd.fairshare.policy import Policy

log = logging.getLogger("deepdockd")

# When shutdown_timeout runs out, the requests still in flight are cancelled, and get this
# long to undo what they half did (a create removes its container) while Docker's client is
# still open. It also bounds aiohttp's own wait for answers still being written.
CANCEL_GRACE_S = 5.0


class RequestsInFlight:
    """The tasks of the requests being handled, so that a stop can wait for them and, when
    shutdown_timeout runs out, cancel them and wait for their clean-up."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[object], str] = {}  # task -> "METHOD /path"

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs each request in a task of its own
        self._tasks[task] = f"{request.method} {request.path}"
        try:
            return await handler(request)
        finally:
            del self._tasks[task]

    async def finish(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the requests in flight (and any that come on an open
        connection meanwhile); then cancel the rest, and wait CANCEL_GRACE_S for them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())
        if not self._tasks:
            return
        late = dict(self._tasks)
        log.warning(
            "shutdown_timeout (%g s) ran out: cancelling %d request(s) still in flight: %s",
            timeout_s, len(late), ", ".join(sorted(late.values())),
        )  # fmt: skip
        for task in late:
            task.cancel()
        _, stuck = await asyncio.wait(late, timeout=CANCEL_GRACE_S)
        if stuck:
            log.error(
                "%d cancelled request(s) did not end within %g s: %s",
                len(stuck), CANCEL_GRACE_S, ", ".join(sorted(late[t] for t in stuck)),
            )  # fmt: skip


async def serve(config: Config, *, reload: Callable[[], Config] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; OSError when the address cannot be listened on.
    ``reload`` loads the config again, on SIGHUP."""
    app = create_app(config)
    in_flight = RequestsInFlight()
    deadlines = connections.Connections(
        config.header_timeout, config.max_connections, config.max_connections_per_client
    )
    # Outermost, so that they see every request: first the requests in flight, then the
    # header clock.
    app.middlewares.insert(0, deadlines.middleware)
    app.middlewares.insert(0, in_flight.middleware)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger(ACCESS_LOGGER),
        shutdown_timeout=CANCEL_GRACE_S,
        keepalive_timeout=config.keepalive_timeout,  # aiohttp's own: an hour by default
    )
    await runner.setup()
    assert runner.server is not None  # setup made it
    listeners: list[asyncio.Server] = []
    try:
        listeners.append(
            await asyncio.get_running_loop().create_server(
                deadlines.protocol_factory(runner.server), config.host, config.port
            )
        )
        if config.host_users:
            listeners.append(
                await local_socket.listen(config.socket, deadlines.protocol_factory(runner.server))
            )
        log.info(
            "deepdockd %s listening on http://%s:%d%s, Docker at %s, namespace %r",
            __version__, config.host, config.port,
            f" and {config.socket} (host users)" if config.host_users else "",
            config.docker_host, config.namespace,
        )  # fmt: skip
        systemd.notify(f"READY=1\nSTATUS=serving on {config.host}:{config.port}")
        await _until_stopped(lambda: reload_config(app, reload) if reload else None)
        log.info("stopping: finishing the requests in flight (up to %g s)", config.shutdown_timeout)
        systemd.notify("STOPPING=1")
        for listener in listeners:
            listener.close()  # no new connections
        runner.server.pre_shutdown()  # idle keep-alive connections close; no new requests
        app[VIEW].end_streams()  # event streams end now; they never would by themselves
        await in_flight.finish(config.shutdown_timeout)
    finally:
        for listener in listeners:
            listener.close()
        if len(listeners) > 1:
            local_socket.remove(config.socket)
        await runner.cleanup()
    log.info("stopped")


def reload_config(app: web.Application, load: Callable[[], Config]) -> None:
    """Load the config again and apply its fair-share settings; a config that fails to load
    is logged, and the one loaded before stays."""
    try:
        new = load()
    except ConfigError as exc:
        log.error("config reload failed, keeping the config loaded before: %s", exc)
        return
    changed = app[POLICY].replace(new)
    log.info("config reloaded: %s", ", ".join(changed) + " changed" if changed else "no change")
    live = {f.name for f in dataclasses.fields(Policy)}
    running = app[CONFIG]
    later = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in live and getattr(new, f.name) != getattr(running, f.name)
    ]
    if later:
        log.warning(
            "config reload: %s changed, which takes effect only at the next restart",
            ", ".join(later),
        )


async def _until_stopped(on_hangup: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
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
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

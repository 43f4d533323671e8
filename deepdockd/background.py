"""The background tasks the services run while the daemon does (the sampler, the view, the
accounting, the reaper, the disk meter): each is cancelled at the stop and awaited, so that
nothing of it runs on after its service is gone."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel the tasks (None: not started) and return once each has ended."""
    started = [task for task in tasks if task is not None]
    for task in started:
        task.cancel()
    for task in started:
        with contextlib.suppress(asyncio.CancelledError):
            await task

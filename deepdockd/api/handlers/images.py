"""Images: list, pull (one answer, or NDJSON progress: handlers/streams.py) and remove."""

from __future__ import annotations

import contextlib

from aiohttp import web

from deepdockd.api import answers
from deepdockd.api.auth import caller_of
from deepdockd.api.handlers.streams import NDJSON, stream_pull
from deepdockd.api.keys import AUDIT_TARGET, IMAGES, STREAM_CAPS
from deepdockd.api.query import bool_query
from deepdockd.api.schemas import PullImageSchema, load_body
from deepdockd.errors import ApiError
from deepdockd.images.service import Credentials, PullResult, parse_image_reference


async def list_images(request: web.Request) -> web.Response:
    images = await request.app[IMAGES].list_images(caller_of(request))
    return web.json_response({"count": len(images), "images": [answers.image(i) for i in images]})


async def pull_image(request: web.Request) -> web.StreamResponse:
    """The seed's answer at the end; or, for ``Accept: application/x-ndjson``, one line per
    progress event and then that answer (or an error object) as the last line. The pull is
    one of the caller's streams while it is in flight (429 at their cap)."""
    body = await load_body(request, PullImageSchema())
    parse_image_reference(body["repo_tag"], field="repo_tag")  # the audit names valid input only
    request[AUDIT_TARGET] = body["repo_tag"]
    credentials = Credentials(**body["auth"]) if "auth" in body else None
    caller = caller_of(request)
    with request.app[STREAM_CAPS].hold(caller):
        events = request.app[IMAGES].pull(body["repo_tag"], credentials, caller=caller)
        async with contextlib.aclosing(events):
            if NDJSON in request.headers.get("Accept", ""):
                return await stream_pull(request, events)
            async for item in events:
                if isinstance(item, PullResult):
                    return web.json_response(answers.pull_result(item))
    raise ApiError("the pull ended without a result")


async def delete_image(request: web.Request) -> web.Response:
    image_ref = request.match_info["image_ref"]
    force = bool_query(request, "force")
    removal = await request.app[IMAGES].remove(image_ref, caller_of(request), force=force)
    return web.json_response(
        {
            "message": f"Image '{image_ref}' removed successfully.",
            "untagged": list(removal.untagged),
            "deleted": list(removal.deleted),
        }
    )

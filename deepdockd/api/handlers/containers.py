"""Containers and what belongs to their owners: the life cycle, leases, home volumes and
quotas."""

from __future__ import annotations

from aiohttp import web

from deepdockd.api import answers
from deepdockd.api.auth import caller_of
from deepdockd.api.keys import (
    ACCOUNTING,
    AUDIT_TARGET,
    CONFIG,
    CONTAINERS,
    DOCKER,
    ENCODED,
    IMAGES,
    STATS,
    VIEW,
)
from deepdockd.api.query import bool_query, user_query
from deepdockd.api.schemas import (
    CommitContainerSchema,
    CreateContainerSchema,
    ExtendLeaseSchema,
    load_body,
)
from deepdockd.containers import commit, pausing
from deepdockd.containers.phases import PhaseClock
from deepdockd.containers.service import CreateRequest


async def list_containers(request: web.Request) -> web.Response:
    service = request.app[CONTAINERS]
    containers = await service.list_all(caller_of(request))
    body = request.app[ENCODED].list_body(
        containers, request.app[ACCOUNTING], service.disk, existing=service.descriptions.ids(),
        stats=request.app[STATS],
    )  # fmt: skip
    return web.Response(body=body, content_type="application/json")


async def get_container(request: web.Request) -> web.Response:
    service = request.app[CONTAINERS]
    container = await service.get(request.match_info["name"], caller_of(request))
    return web.json_response(
        answers.container(container, request.app[ACCOUNTING], service.disk, request.app[STATS])
    )


async def create_container(request: web.Request) -> web.Response:
    body = await load_body(request, CreateContainerSchema())
    request[AUDIT_TARGET] = body["name"]
    caller = caller_of(request)
    clock = PhaseClock()
    container = await request.app[CONTAINERS].create(
        CreateRequest(**body, owner=caller.user), caller, clock
    )
    headers = {"Server-Timing": clock.server_timing()}
    return web.json_response(answers.created(container), status=201, headers=headers)


async def start_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CONTAINERS].start(name, caller_of(request))
    return web.json_response({"message": f"container '{name}' started"})


async def stop_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CONTAINERS].stop(name, caller_of(request))
    return web.json_response({"message": f"container '{name}' stopped"})


async def restart_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[CONTAINERS].restart(name, caller_of(request))
    return web.json_response({"message": f"container '{name}' restarted"})


async def pause_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    app = request.app
    await pausing.pause(app[CONTAINERS], app[DOCKER], app[VIEW], name, caller_of(request))
    return web.json_response({"message": f"container '{name}' paused"})


async def unpause_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    app = request.app
    await pausing.unpause(app[CONTAINERS], app[DOCKER], app[VIEW], name, caller_of(request))
    return web.json_response({"message": f"container '{name}' unpaused"})


async def commit_container(request: web.Request) -> web.Response:
    body = await load_body(request, CommitContainerSchema())
    app = request.app
    image = await commit.commit(
        app[CONTAINERS], app[IMAGES], app[DOCKER], request.match_info["name"],
        caller_of(request), tag=body["tag"], message=body.get("message", ""),
        pause=body.get("pause", True), namespace=app[CONFIG].namespace,
    )  # fmt: skip
    return web.json_response(answers.image(image), status=201)


async def extend_lease(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await load_body(request, ExtendLeaseSchema())
    container = await request.app[CONTAINERS].extend(name, body["lease_hours"], caller_of(request))
    return web.json_response(answers.lease(name, container))


async def delete_container(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    force = bool_query(request, "force")
    await request.app[CONTAINERS].remove(name, caller_of(request), force=force)
    return web.json_response({"message": f"container '{name}' removed"})


async def list_volumes(request: web.Request) -> web.Response:
    service = request.app[CONTAINERS]
    homes = await service.homes.list_all(caller_of(request))
    return web.json_response({"volumes": [answers.volume(h, service.disk) for h in homes]})


async def delete_volume(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    request[AUDIT_TARGET] = name
    await request.app[CONTAINERS].homes.remove(name, caller_of(request))
    return web.json_response({"message": f"volume '{name}' removed"})


async def get_quota(request: web.Request) -> web.Response:
    caller = caller_of(request)
    user = user_query(request, "user", default=caller.user)
    limits, use, disk_mb = await request.app[CONTAINERS].quota(user, caller)
    return web.json_response(
        {
            "user": user,
            "limits": limits.as_answer(),
            # disk_mb: as last measured (null until then), every disk_usage_interval.
            "used": {**use.as_answer(), "disk_mb": disk_mb},
            "caller": {"user": caller.user, "role": caller.role},
        }
    )

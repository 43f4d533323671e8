"""Request bodies: marshmallow schemas that refuse unknown fields, and one loader that turns
their complaints into a 422 naming each field."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from deepdockd.errors import BadRequest, InvalidInput


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class RegistryAuthSchema(StrictSchema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=256))
    password = fields.String(required=True, validate=validate.Length(min=1, max=4096))
    serveraddress = fields.String(validate=validate.Length(min=1, max=256))


class PullImageSchema(StrictSchema):
    repo_tag = fields.String(required=True, validate=validate.Length(min=1, max=512))
    auth = fields.Nested(RegistryAuthSchema)


# Docker's rule for container names.
CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$"
# A Linux user name that useradd accepts everywhere (POSIX portable, lower case).
USER_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"
# Accounts every image has, or that would give a login to something other than the user.
SYSTEM_USERS = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "_apt",
        "sshd",
        "messagebus",
        "systemd-network",
        "systemd-resolve",
        "systemd-timesync",
        "operator",
        "adm",
        "halt",
        "shutdown",
        "ftp",
        "postfix",
        "nogroup",
    ]
)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _no_line_breaks(value: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValidationError("must not contain a line break or a NUL character")


def _not_a_system_user(value: str) -> None:
    if value in SYSTEM_USERS:
        raise ValidationError(f"{value!r} is a system account; choose a personal user name")


def _env_names(env: dict[str, str]) -> None:
    for name in env:
        if name.startswith("NVIDIA_"):
            raise ValidationError(f"{name} is set by deepdockd from gpu_ids")


def _unique(values: list[int]) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValidationError(f"lists GPU {', '.join(map(str, repeated))} more than once")


class CreateContainerSchema(StrictSchema):
    name = fields.String(
        required=True,
        validate=validate.Regexp(
            CONTAINER_NAME,
            error="must be 2-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ),
    )
    image = fields.String(required=True, validate=validate.Length(min=1, max=512))
    user_name = fields.String(
        required=True,
        validate=[
            validate.Regexp(
                USER_NAME,
                error="must be a Linux user name: up to 32 lower-case letters, digits, '_' or "
                "'-', starting with a letter or '_'",
            ),
            _not_a_system_user,
        ],
    )
    password = fields.String(
        required=True, validate=[validate.Length(min=1, max=1024), _no_line_breaks]
    )
    # For the user's sessions only (never for the container's root processes), so names that
    # change how programs load (LD_PRELOAD, PATH) are theirs to set. The bootstrap gets them as
    # NAME=value lines: a value with a line break could smuggle in another name.
    env = fields.Dict(
        keys=fields.String(
            validate=validate.Regexp(
                ENV_NAME, error="must be a variable name ([A-Za-z_][A-Za-z0-9_]*)"
            )
        ),
        values=fields.String(validate=[validate.Length(max=32768), _no_line_breaks]),
        validate=[validate.Length(max=256), _env_names],
        load_default=dict,
    )
    gpu_ids = fields.List(
        fields.Integer(strict=True, validate=validate.Range(min=0)),
        validate=[validate.Length(max=64), _unique],
        load_default=list,
    )


async def load_body(request: web.Request, schema: Schema) -> dict[str, Any]:
    """The request's JSON body, checked by ``schema``; 400 for a body that is not JSON, 422
    naming every field that is wrong."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    try:
        loaded: dict[str, Any] = schema.load(body)
    except ValidationError as exc:
        problems = _flatten(exc.messages)
        message = "; ".join(f"{field}: {why}" for field, why in problems.items())
        raise InvalidInput(message, details={"fields": problems}) from None
    return loaded


def _flatten(messages: Any, prefix: str = "") -> dict[str, str]:
    """{"auth": {"password": ["Missing data…"]}} -> {"auth.password": "Missing data…"}"""
    if isinstance(messages, dict):
        flat: dict[str, str] = {}
        for key, value in messages.items():
            name = "body" if key == "_schema" else f"{prefix}{key}"
            flat.update(_flatten(value, f"{name}."))
        return flat
    text = " ".join(messages) if isinstance(messages, list) else str(messages)
    return {prefix.rstrip(".") or "body": text}

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

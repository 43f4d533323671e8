"""Request bodies: marshmallow schemas that refuse unknown fields, and one loader that reads
the JSON (refusing what nests or counts past any use) and turns the schemas' complaints into
a 422 naming each field."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from deepdockd.containers.sshkeys import check_user_key
from deepdockd.errors import BadRequest, InvalidInput
from deepdockd.labels import GpuId

# JSON past any use: our bodies nest two levels deep and hold GPU indices. Python's own
# limits (a RecursionError about 1,000 levels down, a ValueError past 4,300 digits) would
# surface as a 500 with a traceback; these make a 400 that says what was wrong.
MAX_BODY_DEPTH = 32
MAX_NUMBER_DIGITS = 100


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class FullMatch(validate.Validator):
    r"""Like ``validate.Regexp``, but the whole value must match: Regexp uses ``re.match``,
    whose ``$`` also matches before a trailing newline, so ``"root\n"`` would pass."""

    def __init__(self, pattern: str, *, error: str) -> None:
        self.regex = re.compile(pattern)
        self.message = error

    def _repr_args(self) -> str:
        return f"regex={self.regex!r}"

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self.message)
        return value


class JsonNumber(fields.Float):
    """A JSON number (not a string that reads as one, not true/false)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Not a valid number.")
        return float(super()._deserialize(value, attr, data, **kwargs))


if TYPE_CHECKING:  # marshmallow's Field is generic from 4.0 on; the floor, 3.20, is not
    _GpuIdBase = fields.Field[GpuId]
else:
    _GpuIdBase = fields.Field


class GpuIdField(_GpuIdBase):
    """A GPU of gpu_ids: its NVML index (1, or "1"), or a MIG slice of it ("1:0")."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> GpuId:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return GpuId(value)
        if isinstance(value, str) and len(value) <= 16:
            try:
                return GpuId.parse(value)
            except ValueError:
                pass
        raise ValidationError(
            f'{value!r:.40} is not a GPU: give its index (1, or "1") or a MIG slice of it '
            '("1:0", as GET /gpus lists them)'
        )


class RegistryAuthSchema(StrictSchema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=256))
    password = fields.String(required=True, validate=validate.Length(min=1, max=4096))
    serveraddress = fields.String(validate=validate.Length(min=1, max=256))


class PullImageSchema(StrictSchema):
    repo_tag = fields.String(required=True, validate=validate.Length(min=1, max=512))
    auth = fields.Nested(RegistryAuthSchema)


# The patterns are written as openapi.yaml has them (where `$` ends the input) and applied
# with FullMatch. Docker's rule for container names:
CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$"
# A Linux user name that useradd accepts everywhere (POSIX portable, lower case):
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


# The longest password every SSH server a container may run checks: the bundled Dropbear
# checks none over 100 bytes (DROPBEAR_MAX_PASSWORD_LEN in its sysoptions.h: it keeps the
# crypt shorter than its 250 ms failure delay, so that the time of a refusal does not tell
# which user names exist), so a longer one could never log in there. (musl's crypt takes 256
# bytes, OpenSSH 1,024.)
PASSWORD_MAX_BYTES = 100


def _password_fits_every_ssh_server(value: str) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > PASSWORD_MAX_BYTES:
        raise ValidationError(
            f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8 (this one is {size}): the "
            "bundled SSH server checks no longer password"
        )


def _not_a_system_user(value: str) -> None:
    if value in SYSTEM_USERS:
        raise ValidationError(f"{value!r} is a system account; choose a personal user name")


def _env_names(env: dict[str, str]) -> None:
    for name in env:
        if name.startswith("NVIDIA_"):
            raise ValidationError(f"{name} is set by deepdockd from gpu_ids")


def _ssh_key(value: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValidationError("must be one line: a key per list item")
    try:
        check_user_key(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _no_nul(value: str) -> None:
    if "\0" in value:
        raise ValidationError("must not contain a NUL character")


def _not_ssh_port(values: list[int]) -> None:
    if 22 in values:
        raise ValidationError("22 is the container's SSH port, published already as ssh-port")


def _repeated(values: list[int]) -> str:
    # One pass: marshmallow runs this beside Length(max=…), on a list as long as a body holds.
    return ", ".join(str(v) for v in sorted(v for v, n in Counter(values).items() if n > 1))


def _unique_gpus(values: list[GpuId]) -> None:
    if repeated := ", ".join(sorted({str(v) for v, n in Counter(values).items() if n > 1})):
        raise ValidationError(f"lists GPU {repeated} more than once")


def _unique_ports(values: list[int]) -> None:
    if repeated := _repeated(values):
        raise ValidationError(f"lists port {repeated} more than once")


class CreateContainerSchema(StrictSchema):
    name = fields.String(
        required=True,
        validate=FullMatch(
            CONTAINER_NAME,
            error="must be 2-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ),
    )
    image = fields.String(required=True, validate=validate.Length(min=1, max=512))
    user_name = fields.String(
        required=True,
        validate=[
            FullMatch(
                USER_NAME,
                error="must be a Linux user name: up to 32 lower-case letters, digits, '_' or "
                "'-', starting with a letter or '_'",
            ),
            _not_a_system_user,
        ],
    )
    # Optional when ssh_keys are given: then the account has no password at all.
    password = fields.String(
        validate=[validate.Length(min=1), _no_line_breaks, _password_fits_every_ssh_server]
    )
    ssh_keys = fields.List(
        fields.String(validate=[validate.Length(min=1, max=16384), _ssh_key]),
        validate=validate.Length(max=32),
        load_default=list,
    )
    persistent_home = fields.Boolean(load_default=True)
    # Replaces the image's Cmd; the image's Entrypoint stays, as with `docker run IMAGE CMD…`.
    command = fields.List(
        fields.String(validate=[validate.Length(max=32768), _no_nul]),
        validate=validate.Length(min=1, max=256),
    )
    shm_size_mb = fields.Integer(strict=True, validate=validate.Range(min=1, max=1024 * 1024))
    # Docker's smallest memory limit is 6 MiB.
    memory_mb = fields.Integer(strict=True, validate=validate.Range(min=6, max=16 * 1024 * 1024))
    cpus = JsonNumber(allow_nan=False, validate=validate.Range(min=0.01, max=4096))
    ports = fields.List(
        fields.Integer(strict=True, validate=validate.Range(min=1, max=65535)),
        validate=[validate.Length(max=16), _unique_ports, _not_ssh_port],
        load_default=list,
    )
    # For the user's sessions only (never for the container's root processes), so names that
    # change how programs load (LD_PRELOAD, PATH) are theirs to set. The bootstrap gets them as
    # NAME=value lines: a value with a line break could smuggle in another name.
    env = fields.Dict(
        keys=fields.String(
            validate=FullMatch(ENV_NAME, error="must be a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        ),
        values=fields.String(validate=[validate.Length(max=32768), _no_line_breaks]),
        validate=[validate.Length(max=256), _env_names],
        load_default=dict,
    )
    gpu_ids = fields.List(
        GpuIdField(),
        validate=[validate.Length(max=64), _unique_gpus],
        load_default=list,
    )

    # Hours until the reaper stops it (0: no lease); absent: the config's default_lease_hours.
    lease_hours = JsonNumber(allow_nan=False, validate=validate.Range(min=0, max=87600))
    # False (admins only): never stopped for idle GPUs.
    idle_reclaim = fields.Boolean(load_default=True)

    @validates_schema
    def _a_way_in(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "password" not in data and not data.get("ssh_keys"):
            raise ValidationError(
                "give a password, ssh_keys, or both: one of them is the way in",
                field_name="password",
            )


class ExtendLeaseSchema(StrictSchema):
    # A new end, this many hours from now (0: no lease), within max_lease_hours.
    lease_hours = JsonNumber(
        required=True, allow_nan=False, validate=validate.Range(min=0, max=87600)
    )


class CommitContainerSchema(StrictSchema):
    # The image's tag, checked as a pull's repo_tag is (images/service.py: commit_target).
    tag = fields.String(required=True, validate=validate.Length(min=1, max=512))
    message = fields.String(validate=[validate.Length(max=1000), _no_nul])
    pause = fields.Boolean(load_default=True)


class MintTokenSchema(StrictSchema):
    name = fields.String(
        required=True,
        validate=FullMatch(
            r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
            error="must be 1-64 letters, digits, '_', '.' or '-', the first a letter or digit",
        ),
    )


async def load_body(request: web.Request, schema: Schema) -> dict[str, Any]:
    """The request's JSON body, checked by ``schema``; 400 for a body that is not JSON (or
    nests deeper than MAX_BODY_DEPTH, or holds a number no one means), 422 naming every field
    that is wrong."""
    try:
        body = await request.json(loads=parse_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except LookupError:  # Content-Type: application/json; charset=NO-SUCH-CODEC
        raise BadRequest(f"the request body's charset {request.charset!r} is unknown") from None
    try:
        loaded: dict[str, Any] = schema.load(body)
    except ValidationError as exc:
        problems = _flatten(exc.messages)
        message = "; ".join(f"{field}: {why}" for field, why in problems.items())
        raise InvalidInput(message, details={"fields": problems}) from None
    return loaded


def parse_json(text: str) -> Any:
    """``json.loads``, strictly: no NaN or Infinity, no number of more than
    MAX_NUMBER_DIGITS digits or beyond a float's range, nothing nested deeper than
    MAX_BODY_DEPTH (BadRequest)."""
    try:
        value = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant
        )
    except RecursionError:  # far deeper than MAX_BODY_DEPTH
        raise _too_deep() from None
    if _depth(value) > MAX_BODY_DEPTH:
        raise _too_deep()
    return value


def _parse_int(literal: str) -> int:
    _check_digits(literal)
    return int(literal)


def _parse_float(literal: str) -> float:
    _check_digits(literal)
    value = float(literal)
    if not math.isfinite(value):
        raise BadRequest(f"a number in the request body is too large: {literal}")
    return value


def _check_digits(literal: str) -> None:
    # Counted only where they could be too many: this runs for every number of the body.
    if len(literal) > MAX_NUMBER_DIGITS and sum(map(str.isdigit, literal)) > MAX_NUMBER_DIGITS:
        raise BadRequest(f"a number in the request body has more than {MAX_NUMBER_DIGITS} digits")


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"the request body is not valid JSON: {name} is not a JSON value")


def _too_deep() -> BadRequest:
    return BadRequest(f"the request body nests deeper than {MAX_BODY_DEPTH} levels")


def _depth(value: Any) -> int:
    """How many arrays and objects deep ``value`` nests (0 for a scalar), counted without
    recursion, and no further than one level past MAX_BODY_DEPTH."""
    deepest = 0
    pending = [(value, 1)]
    while pending and deepest <= MAX_BODY_DEPTH:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


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

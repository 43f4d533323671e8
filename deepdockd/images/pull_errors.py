"""A pull's errors in deepdockd's own words: what a person sees names the registry and what
happened, never what the registry (or whatever else answered) sent back."""

from __future__ import annotations

import logging

from deepdockd.docker import (
    DockerFailed,
    LayerFailed,
    RegistryBadAnswer,
    RegistryDenied,
    RegistryNotFound,
    RegistryNotReached,
    RegistryUnauthorized,
)
from deepdockd.errors import ApiError, BadGateway, NotFound
from deepdockd.images.registries import registry_host
from deepdockd.references import ImageReference

log = logging.getLogger(__name__)


class RegistryAuthFailed(BadGateway):
    code = "registry_auth_failed"


class RegistryUnreachable(BadGateway):
    code = "registry_unreachable"


class PullFailed(BadGateway):
    """The registry answered, but the pull did not succeed: a layer it cannot serve, content
    that does not match its digest, an engine that could not store it."""

    code = "pull_failed"


def logged_pull_error(
    reference: ImageReference, exc: DockerFailed, *, with_credentials: bool
) -> ApiError:
    """The pull's error in our words, for the caller; Docker's own words go to the log only,
    for the admin (as a repr: they may hold another server's lines)."""
    error = _pull_error(reference, exc, with_credentials=with_credentials)
    log.warning(
        "pull of %s failed: %s; Docker answered %d: %r",
        reference, error.message, exc.docker_status, exc.docker_message,
    )  # fmt: skip
    return error


def _pull_error(
    reference: ImageReference, exc: DockerFailed, *, with_credentials: bool
) -> ApiError:
    """The error a person sees, in our words, with the registry named, chosen by the kind of
    RegistryFailed that docker.py raised. Docker's message can carry what a registry, or
    whatever else listens on the host and port a reference names, sent back (a web server's
    whole 404 page, an SSH banner), so no part of it is ever shown."""
    key, registry = str(reference), registry_host(reference)
    details = {"reference": key, "registry": registry}
    if isinstance(exc, RegistryBadAnswer):
        return PullFailed(
            f"registry {registry} gave a bad answer to the pull of {key}: {exc.reason}",
            details=details,
        )
    if isinstance(exc, RegistryDenied):
        return NotFound(
            f"{key} was not found in registry {registry}, or it is private "
            '(send "auth" with credentials for it)',
            details=details,
        )
    if isinstance(exc, RegistryUnauthorized):
        if with_credentials:
            return RegistryAuthFailed(
                f"registry {registry} refused the credentials for {key}", details=details
            )
        return RegistryAuthFailed(
            f'registry {registry} wants credentials for {key} (send "auth")', details=details
        )
    if isinstance(exc, RegistryNotFound):
        return NotFound(
            f"{key} was not found in registry {registry}: no such repository or tag",
            details=details,
        )
    if isinstance(exc, RegistryNotReached):
        return RegistryUnreachable(
            f"cannot reach registry {registry} to pull {key}: {exc.reason}", details=details
        )
    if isinstance(exc, LayerFailed):
        return PullFailed(
            f"the pull of {key} from registry {registry} failed: {exc.reason}", details=details
        )
    return PullFailed(
        f"the pull of {key} from registry {registry} failed; the daemon's log has Docker's reason",
        details=details,
    )

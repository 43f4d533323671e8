"""A pull's errors in deepdockd's own words: what a person sees names the registry and what
happened, never what the registry (or whatever else answered) sent back.

Nor which kind of failure it was, unless the registry itself failed. A registry can send
Docker anywhere: a manifest or a blob redirected to ``http://127.0.0.1:22/``, a token realm
on another port. Docker follows, and the kind of its failure (connection refused, a 401, a
web server's 404, another registry's "manifest unknown") would tell the caller what listens
on the host's ports. So every failure is one answer, :class:`PullFailed`, whatever answered,
except where Docker's message proves the failure was the registry's own request (see
:func:`deepdockd.docker.failed_at`): it could not be reached, it answered something that is
not HTTP, it asked for credentials that were not sent. Docker Hub keeps every kind: it sends
pulls only to its own servers. Docker's own words go to the daemon's log.
"""

from __future__ import annotations

import logging

from deepdockd.docker import (
    DockerFailed,
    LayerFailed,
    RegistryBadAnswer,
    RegistryDenied,
    RegistryFailed,
    RegistryNotFound,
    RegistryNotReached,
    RegistryUnauthorized,
)
from deepdockd.errors import ApiError, BadGateway, NotFound
from deepdockd.images.registries import DOCKER_HUB, registry_host, registry_key
from deepdockd.references import ImageReference

log = logging.getLogger(__name__)

# The names a reference gives Docker Hub (Docker reads index.docker.io as docker.io).
_DOCKER_HUB = frozenset({DOCKER_HUB, "index.docker.io"})


class RegistryAuthFailed(BadGateway):
    code = "registry_auth_failed"


class RegistryUnreachable(BadGateway):
    code = "registry_unreachable"


class PullFailed(BadGateway):
    """The pull did not succeed, and what failed is not told: the registry answered not as a
    registry does, or it has no such image, or refused the credentials, or a layer failed,
    or something failed wherever the registry sent the pull."""

    code = "pull_failed"


def pull_failed(key: str, registry: str) -> str:
    """The one answer for a pull whose failure may not be the registry's own: the same words
    whatever failed, so that they tell nothing about what answered behind a redirect."""
    return (
        f"the pull of {key} from registry {registry} failed (no such repository or tag, "
        "credentials refused, or another failure); the daemon's log has Docker's reason"
    )


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
    whole 404 page, an SSH banner), so no part of it is ever shown; and a failure that may
    have happened elsewhere is told as one (:func:`pull_failed`)."""
    key, registry = str(reference), registry_host(reference)
    details = {"reference": key, "registry": registry}
    if not _the_registrys_own(exc, registry):
        return PullFailed(pull_failed(key, registry), details=details)
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
    return PullFailed(pull_failed(key, registry), details=details)


def _the_registrys_own(exc: DockerFailed, registry: str) -> bool:
    """Whether ``exc`` surely happened at ``registry`` itself, so that its kind may be told:
    Docker Hub's always; another registry's only where Docker names the registry as the
    place whose request failed. A registry chooses where a pull goes next, and so what
    answers there: the kind of a failure anywhere else is not the registry's to tell."""
    if registry_key(registry) in _DOCKER_HUB:
        return True
    where = exc.failed_at if isinstance(exc, RegistryFailed) else None
    return where is not None and registry_key(where) == registry_key(registry)

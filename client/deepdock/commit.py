"""`deepdock commit`: a container's file system as an image of the caller's
(POST /containers/{name}/commit)."""

from __future__ import annotations

import json
import sys
import urllib.parse
from contextlib import AbstractContextManager
from typing import Any, Protocol

import click


class Session(Protocol):
    """cli.py's Session (the click context's object), as this command uses it: cli.py
    imports this module, so this one does not import cli.py."""

    def api(self) -> AbstractContextManager[Any]: ...


@click.command(
    epilog="Examples: deepdock commit train my-env:1; "
    'deepdock commit train lab/alice-env:2 --message "CUDA samples built" --no-pause'
)
@click.argument("name")
@click.argument("tag")
@click.option("--message", "-m", default=None, help="The commit's message (in docker history).")
@click.option(
    "--pause/--no-pause",
    default=True,
    show_default=True,
    help="Freeze the container while the server copies it (a consistent image).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer untouched.")
@click.pass_obj
def commit(
    session: Session, name: str, tag: str, message: str | None, pause: bool, as_json: bool
) -> None:
    """Save container NAME's files as image TAG, yours alone (others do not see it).

    Your home is not in it (it is a volume: a container from the image gets it again), nor
    deepdockd's files, your env or your password's hash. Password logins fail for the moment
    the server copies the container. Create from it with `deepdock create NAME --image TAG`."""
    body: dict[str, Any] = {"tag": tag, "pause": pause}
    if message is not None:
        body["message"] = message
    with session.api() as api:
        answer = api.post(f"/containers/{urllib.parse.quote(name, safe='')}/commit", body)
    if as_json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return
    click.echo(f"{name} committed as {answer['tag']} ({answer['id']}, {answer['size_mb']} MiB)")

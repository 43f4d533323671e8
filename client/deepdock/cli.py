"""The ``deepdock`` commands (click). Each is thin: read its arguments, make one or two API
calls, render. httpx and rich are imported by the commands that need them, not here."""

from __future__ import annotations

import getpass
import json
import re
import shlex
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deepdock import __version__
from deepdock.settings import SERVER_NAME, Server, Settings, SettingsError

if TYPE_CHECKING:
    from deepdock.api import Api

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
JSON_HELP = "Print the API's JSON answer untouched."


# Server text is printed as text: no control characters, so no escape sequences (render.py's
# table, kept here so that an error's line needs no rich).
_CONTROL = dict.fromkeys([*range(32), *range(127, 160)], "?")


class Failed(click.ClickException):
    """An API error or a server out of reach: its one line on stderr, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"deepdock: {self.message.translate(_CONTROL)}", err=True)


class UsageProblem(click.UsageError):
    """No server to talk to, a bad size: exit status 2, as for any bad usage."""

    def show(self, file: Any = None) -> None:
        click.echo(f"deepdock: {self.message}", err=True)


@click.group(
    context_settings=CONTEXT,
    epilog="Example: deepdock login http://gpu1.lab:8000 --name gpu1, then deepdock create "
    "train --image pytorch/pytorch:latest --gpus 0 and deepdock ssh train.",
)
@click.option("--server", "server_name", metavar="NAME", help="The configured server to use.")
@click.version_option(
    __version__, "--version", prog_name="deepdock", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(context: click.Context, server_name: str | None) -> None:
    """deepdock: GPU containers with SSH logins on deepdockd servers, from a terminal.

    Servers and tokens come from `deepdock login` (~/.config/deepdock/config.toml), or from
    DEEPDOCK_URL and DEEPDOCK_TOKEN. On the server itself, with neither, deepdock uses the
    daemon's local socket and needs no token. Read commands take --json for scripts.
    """
    context.obj = Session(server_name)


class Session:
    """The chosen server, and the API client made for it on first use."""

    def __init__(self, server_name: str | None) -> None:
        self.server_name = server_name
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = Settings.load()
            except SettingsError as exc:
                raise UsageProblem(str(exc)) from None
        return self._settings

    def server(self) -> Server:
        try:
            return self.settings.choose(self.server_name)
        except SettingsError as exc:
            raise UsageProblem(str(exc)) from None

    def servers(self) -> list[Server]:
        try:
            return self.settings.all()
        except SettingsError as exc:
            raise UsageProblem(str(exc)) from None

    @contextmanager
    def api(self, server: Server | None = None) -> Iterator[Api]:
        from deepdock.api import Api, ApiFailure

        try:
            with Api(server or self.server()) as api:
                yield api
        except ApiFailure as exc:
            raise Failed(str(exc)) from None


pass_session = click.make_pass_decorator(Session)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help=JSON_HELP)(command)


# --- where and who ---


@cli.command(epilog="Example: deepdock login http://gpu1.lab:8000 --name gpu1")
@click.argument("url")
@click.option("--name", default=None, help="A name for this server (default: its host).")
@pass_session
def login(session: Session, url: str, name: str | None) -> None:
    """Save URL and a token (asked for, not echoed; or a line of stdin) under a server name,
    in a file of mode 0600."""
    from deepdock.api import Api, ApiFailure

    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageProblem(f"{url!r} is not a URL: write it as http://HOST:8000")
    name = name or Server("", url, None).host
    if not SERVER_NAME.fullmatch(name):
        raise UsageProblem(f"{name!r} is not a server name: letters, digits, '_', '.', '-'")
    token = _secret("Token")
    if not token.isascii() or any(c.isspace() for c in token):
        raise UsageProblem("that is not a token: a token is one word of letters, digits, '_'")
    server = Server(name, url, token)
    try:
        with Api(server) as api:
            quota = api.get("/quota")
    except ApiFailure as exc:
        raise Failed(f"not saved: {exc}") from None
    settings = session.settings
    settings.servers[name] = server
    settings.default = settings.default if settings.default in settings.servers else name
    path = settings.save()
    click.echo(f"logged in to {name} ({url}) as {quota['user']}; saved in {path}")


# --- tokens for elsewhere ---


@cli.group(epilog="Example, on the server: deepdock token create laptop")
def token() -> None:
    """Tokens of your own, for your laptop or a script: made on the server (over the
    daemon's local socket), used anywhere with deepdock login."""


@token.command("create", epilog="Example: deepdock token create laptop")
@click.argument("name")
@json_option
@pass_session
def token_create(session: Session, name: str, as_json: bool) -> None:
    """Make a token named NAME and print it, this once."""
    with session.api() as api:
        answer = api.post("/tokens", {"name": name})
    if as_json:
        return _print_json(answer)
    click.echo(answer["token"])
    click.echo(
        f"token '{answer['name']}' ({answer['id']}) for {answer['user']}: shown this once; "
        "use it with deepdock login URL",
        err=True,
    )


@token.command("ls", epilog="Example: deepdock token ls")
@json_option
@pass_session
def token_list(session: Session, as_json: bool) -> None:
    """List your tokens (an admin: everyone's)."""
    with session.api() as api:
        answer = api.get("/tokens")
    if as_json:
        return _print_json(answer)
    from deepdock.render import table

    rows = [[t["id"], t["name"], t["user"], t["role"], t["created"]] for t in answer["tokens"]]
    table(["ID", "NAME", "USER", "ROLE", "CREATED"], rows)


@token.command("revoke", epilog="Example: deepdock token revoke tok_3f9a0c1b2d4e")
@click.argument("token_id", metavar="ID")
@pass_session
def token_revoke(session: Session, token_id: str) -> None:
    """Revoke a token, at once (its ID from deepdock token ls)."""
    with session.api() as api:
        answer = api.delete(f"/tokens/{_q(token_id)}")
    click.echo(answer["message"])


# --- images ---


@cli.command(epilog="Example: deepdock images --json | jq -r '.images[].tag'")
@json_option
@pass_session
def images(session: Session, as_json: bool) -> None:
    """List the images on the server."""
    with session.api() as api:
        answer = api.get("/images")
    if as_json:
        return _print_json(answer)
    from deepdock.render import table

    rows = [[i["tag"], i["id"], f"{i['size_mb']:.0f} MiB", i["created"]] for i in answer["images"]]
    table(["IMAGE", "ID", "SIZE", "CREATED"], rows)


@cli.command(epilog="Example: deepdock pull nvcr.io/nvidia/pytorch:24.05-py3")
@click.argument("reference")
@pass_session
def pull(session: Session, reference: str) -> None:
    """Pull an image, with a progress bar per layer on a terminal.

    Ctrl-C stops watching; the pull goes on on the server."""
    from deepdock.progress import follow_pull

    with session.api() as api:
        try:
            result = follow_pull(api.lines("POST", "/images", json={"repo_tag": reference}))
        except KeyboardInterrupt:
            click.echo("stopped watching: the pull goes on on the server", err=True)
            sys.exit(130)
    if "error" in result:
        raise Failed(result["error"]["message"])
    click.echo(f"{result['message']} ({result['id']}, {result['size_mb']:.0f} MiB)")


@cli.command(epilog="Example: deepdock rmi pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime")
@click.argument("reference")
@click.option("--force", is_flag=True, help="Remove it even if containers were made from it.")
@pass_session
def rmi(session: Session, reference: str, force: bool) -> None:
    """Remove an image."""
    with session.api() as api:
        answer = api.delete(f"/images/{reference}", force="true" if force else None)
    click.echo(answer["message"])


# --- containers ---


@cli.command(
    epilog="Example: deepdock create train --image pytorch/pytorch:latest --gpus 0,1 "
    "--memory 64g --cpus 16 --port 8888 --lease 3d"
)
@click.argument("name")
@click.option("--image", required=True, help="The image to run.")
@click.option(
    "--gpus", default="", metavar="0,1", help="GPU indices or MIG slices (1:0), comma-separated."
)
@click.option("--user", default=None, help="The login's user name (default: yours here).")
@click.option(
    "--key", "keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A public key to log in with (default: the first ~/.ssh/id_*.pub). Repeatable.",
)  # fmt: skip
@click.option("--password", is_flag=True, help="Set a password too (asked for, not echoed).")
@click.option("--port", "ports", multiple=True, type=int, help="A container port to publish.")
@click.option("--memory", default=None, metavar="SIZE", help="Memory limit, as 32g.")
@click.option("--cpus", default=None, type=float, help="CPU limit, as 8 or 7.5.")
@click.option("--shm", default=None, metavar="SIZE", help="/dev/shm size, as 16g.")
@click.option("--lease", default=None, metavar="DURATION", help="Stop it after, as 24h or 3d.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="For the user's sessions.")
@click.option("--command", default=None, help="Replaces the image's command (a shell line).")
@json_option
@pass_session
def create(session: Session, /, name: str, **options: Any) -> None:
    """Create a container with GPUs and an SSH login, and start it."""
    from deepdock import ssh
    from deepdock.units import hours, mebibytes

    keys = list(options["keys"]) or _default_key()
    server = session.server()
    body: dict[str, Any] = {
        "name": name,
        "image": options["image"],
        "user_name": options["user"] or getpass.getuser().lower(),
        "ssh_keys": [_public_key(key) for key in keys],
        "gpu_ids": _indices(options["gpus"]),
        "ports": list(options["ports"]),
        "env": dict(_pair(item) for item in options["env"]),
    }
    try:
        for option, field, convert in (
            ("memory", "memory_mb", mebibytes), ("shm", "shm_size_mb", mebibytes),
            ("lease", "lease_hours", hours),
        ):  # fmt: skip
            if options[option] is not None:
                body[field] = convert(options[option])
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    if options["cpus"] is not None:
        body["cpus"] = options["cpus"]
    if options["command"] is not None:
        try:
            body["command"] = shlex.split(options["command"])
        except ValueError as exc:
            raise UsageProblem(f"--command: {exc}") from None
    if options["password"]:
        body["password"] = _secret("Password", confirm=True)
    if not body["ssh_keys"] and "password" not in body:
        raise UsageProblem("no way in: give --key PUBLIC_KEY_FILE or --password")
    with session.api(server) as api:
        answer = api.post("/containers/create", body)
    for key in keys:  # the first whose private half is here
        if ssh.remember_identity(server, name, key):
            break
    if options["as_json"]:
        return _print_json(answer)
    ends = f"; its lease ends at {answer['expires_at']}" if answer.get("expires_at") else ""
    click.echo(
        f"created {name}: log in with `deepdock ssh {name}` (port {answer['ssh-port']}){ends}"
    )
    if answer.get("ssh_server"):  # which server, and why (an image's sshd may be too old)
        click.echo(f"SSH server: {answer['ssh_server']}")


@cli.command(
    "ls", epilog="Examples: deepdock ls; deepdock ls --all; deepdock ls --json; deepdock ls --watch"
)
@click.option("--all", "everywhere", is_flag=True, help="Every configured server, one table.")
@click.option("--watch", is_flag=True, help="Redraw on every change the server tells of.")
@json_option
@pass_session
def list_containers(session: Session, everywhere: bool, watch: bool, as_json: bool) -> None:
    """List the containers you may see (an admin: everyone's)."""
    from deepdock.render import CONTAINER_COLUMNS, containers_rows, table

    if watch:
        from deepdock.top import watch_list

        return watch_list(session)
    if not everywhere:
        with session.api() as api:
            answer = api.get("/containers")
        if as_json:
            return _print_json(answer)
        return table(CONTAINER_COLUMNS, containers_rows(answer["containers"], None))
    answers = _from_every_server(session, lambda api: api.get("/containers"))
    if as_json:
        return _print_json({"servers": answers})
    rows: list[list[object]] = []
    for name, answer in answers.items():
        if "error" in answer:
            rows.append([name, answer["error"]])
        else:
            rows += containers_rows(answer["containers"], name)
    table(["SERVER", *CONTAINER_COLUMNS], rows)


# What a life-cycle command's --help says beyond its first line.
_LIFE_CYCLE_HELP = {
    "pause": " Its processes freeze until `deepdock unpause`; it keeps its GPUs, ports, quota"
    " and lease, and paused time counts as idle for the server's idle rule.",
    "unpause": " Its processes go on where they were.",
}


def _life_cycle(action: str, done: str) -> None:
    @cli.command(
        action,
        help=f"{action.capitalize()} a container.{_LIFE_CYCLE_HELP.get(action, '')}",
        epilog=f"Example: deepdock {action} train",
    )
    @click.argument("name")
    @pass_session
    def command(session: Session, name: str) -> None:
        with session.api() as api:
            api.post(f"/containers/{_q(name)}/{action}")
        click.echo(f"{name} {done}")


for _action, _done in (
    ("start", "started"),
    ("stop", "stopped"),
    ("restart", "restarted"),
    ("pause", "paused"),
    ("unpause", "unpaused"),
):
    _life_cycle(_action, _done)


@cli.command(epilog="Example: deepdock rm train --force")
@click.argument("name")
@click.option("--force", is_flag=True, help="Stop it first if it runs.")
@pass_session
def rm(session: Session, name: str, force: bool) -> None:
    """Remove a container (its home volume stays: see `deepdock volumes`)."""
    with session.api() as api:
        api.delete(f"/containers/{_q(name)}", force="true" if force else None)
    click.echo(f"{name} removed")


@cli.command(epilog="Example: deepdock logs train -f --tail 100")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Go on printing what it writes.")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
@click.option(
    "--raw", is_flag=True,
    help="Its bytes as written, escape sequences too (else control characters show as '?').",
)  # fmt: skip
@pass_session
def logs(session: Session, name: str, follow: bool, tail: int | None, raw: bool) -> None:
    """Print a container's output: as text, line breaks and tabs kept (--raw: as written)."""
    params = {k: v for k, v in {"follow": "true" if follow else None, "tail": tail}.items() if v}
    # Following, a quiet container may write nothing for hours: no read deadline then.
    from deepdock.api import NO_READ_DEADLINE
    from deepdock.render import clean_output

    timeout: dict[str, Any] = {"timeout": NO_READ_DEADLINE} if follow else {}
    path = f"/containers/{_q(name)}/logs"
    with session.api() as api, api.stream("GET", path, params=params, **timeout) as response:
        try:
            for chunk in response.iter_text():
                sys.stdout.write(chunk if raw else clean_output(chunk))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


@cli.command(epilog="Example: deepdock extend train 24h")
@click.argument("name")
@click.argument("duration")
@pass_session
def extend(session: Session, name: str, duration: str) -> None:
    """Set a container's lease to end DURATION from now (90m, 24h, 3d; 0: no end)."""
    from deepdock.units import hours

    try:
        lease_hours = hours(duration)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    with session.api() as api:
        answer = api.post(f"/containers/{_q(name)}/extend", {"lease_hours": lease_hours})
    click.echo(answer["message"])


@cli.command(epilog="Examples: deepdock quota; deepdock quota --user alice (admins)")
@click.option("--user", default=None, help="Another user's (admins only).")
@json_option
@pass_session
def quota(session: Session, user: str | None, as_json: bool) -> None:
    """Your limits and what you use."""
    with session.api() as api:
        answer = api.get("/quota", user=user)
    if as_json:
        return _print_json(answer)
    from deepdock.render import table

    limits, used = answer["limits"], answer["used"]
    rows = [
        [what, used[key], "none" if limits[limit] is None else limits[limit]]
        for what, key, limit in (
            ("GPUs", "gpus", "max_gpus"), ("containers", "containers", "max_containers"),
            ("memory (MiB)", "memory_mb", "max_memory_mb"), ("CPUs", "cpus", "max_cpus"),
        )
    ]  # fmt: skip
    table([answer["user"].upper(), "USED", "LIMIT"], rows)


@cli.command(epilog="Example: deepdock volumes")
@json_option
@pass_session
def volumes(session: Session, as_json: bool) -> None:
    """List the home volumes (they outlive their containers)."""
    with session.api() as api:
        answer = api.get("/volumes")
    if as_json:
        return _print_json(answer)
    from deepdock.render import table

    rows = [
        [v["name"], v["owner"], v["user_name"], ", ".join(v["containers"]) or "-", v["created"]]
        for v in answer["volumes"]
    ]
    table(["VOLUME", "OWNER", "USER", "USED BY", "CREATED"], rows)


@cli.command(epilog="Example: deepdock rmvol deepdock-home-alice.alice")
@click.argument("name")
@pass_session
def rmvol(session: Session, name: str) -> None:
    """Remove a home volume, and every file in it."""
    with session.api() as api:
        answer = api.delete(f"/volumes/{_q(name)}")
    click.echo(answer.get("message", f"{name} removed"))


# --- ssh ---


@cli.command(
    "ssh",
    context_settings={"ignore_unknown_options": True},
    epilog="Examples: deepdock ssh train; deepdock ssh train -- nvidia-smi",
)
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_session
def ssh_command(session: Session, name: str, command: tuple[str, ...]) -> None:
    """Log in to a container with the system's ssh: its port, user, your key, and its host
    key pinned (no prompt, no warning when a port was someone else's before)."""
    from deepdock import ssh

    server, container = _ssh_target(session, name)
    ssh.pin({ssh.alias(server, name): container.get("ssh_host_keys") or []})
    try:
        ssh.exec_ssh(ssh.ssh_argv(server, container, list(command)))
    except FileNotFoundError:
        raise Failed("no ssh here: install OpenSSH's client (openssh-client)") from None


@cli.command(
    epilog="Examples: deepdock forward notebook 8888; deepdock forward board 6006 16006",
)
@click.argument("name")
@click.argument("port", type=click.IntRange(1, 65535))
@click.argument("local_port", type=click.IntRange(1, 65535), required=False)
@pass_session
def forward(session: Session, name: str, port: int, local_port: int | None) -> None:
    """Reach a service of a container (Jupyter, TensorBoard) on this machine: an ssh -L
    through the container's own login, its host key pinned, until Ctrl-C. LOCAL_PORT is
    PORT when that is free here, else any free one; the URL is printed."""
    from deepdock import ssh

    server, container = _ssh_target(session, name)
    local = local_port if local_port is not None else ssh.free_local_port(port)
    ssh.pin({ssh.alias(server, name): container.get("ssh_host_keys") or []})
    click.echo(
        f"forwarding http://127.0.0.1:{local}/ to port {port} of {name}; Ctrl-C stops it",
        err=True,
    )
    try:
        ssh.exec_ssh(ssh.forward_argv(server, container, local, port))
    except FileNotFoundError:
        raise Failed("no ssh here: install OpenSSH's client (openssh-client)") from None


def _ssh_target(session: Session, name: str) -> tuple[Server, dict[str, Any]]:
    """The server and the container's answer, checked fit for ssh's arguments."""
    from deepdock import ssh

    server = session.server()
    with session.api(server) as api:
        container = api.get(f"/containers/{_q(name)}")
    if container.get("status") != "running" or not container.get("ssh-port"):
        verb = "unpause" if container.get("status") == "paused" else "start"
        raise Failed(
            f"container {name} is {container.get('status')}: {verb} it with deepdock {verb} {name}"
        )
    why = ssh.unfit(container) or (
        None if container["name"] == name else f"its name {container['name']!r} is another's"
    )
    if why:
        raise Failed(f"the server's answer for container {name!r} cannot go to ssh: {why}")
    return server, container


@cli.command(
    "ssh-config",
    epilog="Example: deepdock ssh-config > ~/.ssh/deepdock.conf, with the line "
    "Include ~/.ssh/deepdock.conf at the top of ~/.ssh/config",
)
@click.option("--all", "everywhere", is_flag=True, help="Every configured server.")
@pass_session
def ssh_config(session: Session, everywhere: bool) -> None:
    """Print ssh_config Host blocks for each of your running containers (for ssh NAME, scp,
    rsync, VS Code); with --all, every server's, named SERVER.NAME. Only your own: an
    admin's list holds everyone's, whose names must not become hosts of theirs."""
    from deepdock import ssh

    servers = session.servers() if everywhere else [session.server()]
    pins: dict[str, list[dict[str, Any]]] = {}
    blocks = []
    for server in servers:
        try:
            with session.api(server) as api:
                me = api.get("/quota")["user"]
                listed = api.get("/containers")["containers"]
        except Failed as exc:
            if not everywhere:
                raise
            click.echo(f"deepdock: {server.name} left out: {exc.message}", err=True)
            continue
        for container in listed:
            if container.get("owner") != me or container.get("status") != "running":
                continue
            if not container.get("ssh-port"):
                continue
            why = ssh.unfit(container)
            if why:
                named = ssh.shown(container.get("name"))
                click.echo(f"deepdock: {server.name}: container {named} left out: {why}", err=True)
                continue
            host = f"{server.name}.{container['name']}" if everywhere else container["name"]
            pins[ssh.alias(server, container["name"])] = container.get("ssh_host_keys") or []
            lines = [f"Host {host}"] + [
                f"    {k} {v}" for k, v in ssh.options(server, container).items()
            ]
            blocks.append("\n".join(lines))
    ssh.pin(pins)
    click.echo("\n\n".join(blocks))


# --- GPUs ---


@cli.command(epilog="Example: deepdock gpus --watch")
@click.option("--watch", is_flag=True, help="Redraw every few seconds, until Ctrl-C.")
@click.option(
    "--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.5),
    help="Seconds between redraws.",
)  # fmt: skip
@click.option("--all", "everywhere", is_flag=True, help="Every configured server, one table.")
@json_option
@pass_session
def gpus(session: Session, watch: bool, interval: float, everywhere: bool, as_json: bool) -> None:
    """The GPUs: memory, utilization, power, temperature, the last hour, and who holds each."""
    servers = session.servers() if everywhere else [session.server()]
    if as_json and everywhere:
        return _print_json({"servers": _from_every_server(session, lambda api: api.get("/gpus"))})
    if as_json:
        with session.api(servers[0]) as api:
            return _print_json(api.get("/gpus"))
    from deepdock.render import console

    if not watch:
        return console.print(_gpu_table(session, servers, everywhere))
    from rich.live import Live

    try:
        with Live(_gpu_table(session, servers, everywhere), console=console) as live:
            while True:
                time.sleep(interval)
                live.update(_gpu_table(session, servers, everywhere))
    except KeyboardInterrupt:
        pass


def _gpus_of(api: Api) -> dict[str, Any]:
    """GET /gpus and the last hour of GET /metrics/gpus."""
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"gpus": api.get("/gpus"), "history": api.get("/metrics/gpus", since=since)}


def _gpu_table(session: Session, servers: list[Server], everywhere: bool) -> Any:
    from rich.table import Table

    from deepdock.render import GPU_COLUMNS, gpu_rows

    shown = Table(box=None, header_style="bold", pad_edge=False)
    for column in (["SERVER"] if everywhere else []) + GPU_COLUMNS:
        shown.add_column(column)
    if everywhere:
        answers = _from_every_server(session, _gpus_of)
    else:
        with session.api(servers[0]) as api:
            answers = {servers[0].name: _gpus_of(api)}
    for name, answer in answers.items():
        if "error" in answer:
            shown.add_row(name, answer["error"])
            continue
        for row in gpu_rows(
            answer["gpus"]["gpus"], answer["history"], name if everywhere else None
        ):
            shown.add_row(*(str(cell) for cell in row))
    return shown


# --- helpers ---


def _from_every_server(
    session: Session, call: Callable[[Api], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``call`` on every configured server at once: its answer, or {"error": why}."""
    from deepdock.api import Api, ApiFailure

    def one(server: Server) -> dict[str, Any]:
        try:
            with Api(server) as api:
                return call(api)
        except (ApiFailure, Failed) as exc:
            return {"error": str(exc) if isinstance(exc, ApiFailure) else exc.message}
        except Exception as exc:  # one server's oddity never takes the others' rows away
            return {"error": f"{type(exc).__name__}: {exc}"}

    servers = session.servers()
    with ThreadPoolExecutor(max_workers=min(8, len(servers))) as pool:
        return dict(zip((s.name for s in servers), pool.map(one, servers), strict=True))


def _secret(what: str, *, confirm: bool = False) -> str:
    """Asked for without echo on a terminal; else one line of stdin (a script's pipe)."""
    if sys.stdin.isatty():
        text = click.prompt(what, hide_input=True, confirmation_prompt=confirm, err=True)
    else:
        text = sys.stdin.readline()
    value = str(text).strip()
    if not value:
        raise UsageProblem(f"no {what.lower()} given")
    return value


def _q(name: str) -> str:
    """A name as one path segment: a '?' or '/' typed in it stays part of the name."""
    return urllib.parse.quote(name, safe="")


def _print_json(answer: Any) -> None:
    sys.stdout.write(json.dumps(answer, indent=2) + "\n")


def _public_key(path: Path) -> str:
    """The public key in ``path``; never a private key's text (a slip of `--key id_ed25519`
    must not send it anywhere)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"--key {path}: cannot read it: {exc}") from None
    if "PRIVATE KEY" in text or not re.match(r"(ssh-|ecdsa-|sk-)\S+ [A-Za-z0-9+/]+=*( |$)", text):
        raise UsageProblem(
            f"--key {path}: not an SSH public key; give the .pub file (as {path}.pub)"
            if "PRIVATE KEY" in text
            else f"--key {path}: not an SSH public key (ssh-ed25519 AAAA… comment)"
        )
    return text


def _default_key() -> list[Path]:
    found = sorted((Path.home() / ".ssh").glob("id_*.pub"))
    return found[:1]


def _indices(text: str) -> list[int | str]:
    """GPU indices (0,1) as numbers, MIG slices (1:0, as `deepdock gpus` lists them) as
    strings, which is how the API's gpu_ids takes them."""
    chosen: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        gpu, colon, index = part.partition(":")
        if not part:
            continue
        if not gpu.isdecimal() or (colon and not index.isdecimal()):
            raise UsageProblem(f"--gpus {text!r}: write GPU indices as 0,1 and MIG slices as 1:0")
        chosen.append(part if colon else int(gpu))
    return chosen


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise UsageProblem(f"--env {item!r}: write it as NAME=value")
    return name, value


# Commands with a module of their own.
from deepdock.usage import usage  # noqa: E402

cli.add_command(usage)

from deepdock.commit import commit  # noqa: E402

cli.add_command(commit)

from deepdock.top import top  # noqa: E402

cli.add_command(top)

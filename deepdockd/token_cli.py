"""``deepdockd token add|list|revoke`` and ``deepdockd user remove``: who may call the API,
and a user's end of life.

A new token is printed once; only its hash is kept. Changes take effect in a running daemon
at once (it re-reads the token file when it changes).

A user's name is an identity with a life cycle: added, revoked, removed, never silently
inherited. Revoking a token (``token revoke``) stops the user's API calls; ``--stop`` stops
their containers too (``user remove`` does by default), so their SSH logins end and their GPUs
are free; either way the command says what is left in the name (containers, home volumes,
private images, the tags it set), which nothing removes unasked. A name that still holds any
of it is given a new token only when the admin says ``--inherit``. The command runs on the
host, as the daemon does, and asks the daemon's Docker (``docker_host``, ``namespace`` of the
same config).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from deepdockd.config import Config, ConfigError, load_config
from deepdockd.containers.owners import Holdings, Stops, UserHoldings
from deepdockd.docker import Docker, DockerUnavailable
from deepdockd.errors import ApiError
from deepdockd.tokens import ROLES, TokenError, TokenStore, check_user_name

EXIT_ERROR = 2
REMOVE_HINT = "DELETE /containers/NAME, /volumes/NAME, /images/REF"

T = TypeVar("T")


class Refused(Exception):
    """The command refuses, with this message (the ``deepdockd token:`` prefix is added)."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (for state_dir, docker_host, namespace)")
    parser.add_argument("--state-dir", dest="state_dir", help="the daemon's state directory")
    parser.add_argument("--docker-host", dest="docker_host", help="the daemon's Docker engine")
    parser.add_argument("--namespace", help="the daemon's label namespace")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepdockd token", description=__doc__)
    _common(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="make a token for a new user and print it once")
    add.add_argument("user")
    add.add_argument("--role", choices=ROLES, default="user")
    add.add_argument(
        "--inherit",
        action="store_true",
        help="give the name even though it still owns containers, volumes or private images "
        "(the new token's holder gets them)",
    )
    commands.add_parser(
        "list", help="list the users that have a token, then the tokens host users made (id, name)"
    )
    revoke = commands.add_parser(
        "revoke", help="revoke a user's token, at once, and say what is left in the name"
    )
    revoke.add_argument("user")
    revoke.add_argument(
        "--stop", action="store_true", help="stop the user's containers too (never removes them)"
    )
    return parser.parse_args(argv)


def parse_user_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepdockd user", description=__doc__)
    _common(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    remove = commands.add_parser(
        "remove",
        help="revoke the user's token, stop their containers and say what is left in the name",
    )
    remove.add_argument("user")
    remove.add_argument(
        "--no-stop", dest="stop", action="store_false", help="leave their containers running"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    """``deepdockd token ...``"""
    args = parse_args(argv)
    return _run("deepdockd token", args, environ, _token_command)


def user_main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    """``deepdockd user ...``"""
    args = parse_user_args(argv)
    return _run("deepdockd user", args, environ, _user_command)


def _run(
    prog: str,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    command: Callable[[argparse.Namespace, Config, TokenStore], int],
) -> int:
    # The command says each failure itself, once, with what to do; the log lines of the code
    # it shares with the daemon (the image records' error, say) are the daemon's to write.
    logging.getLogger("deepdockd").addHandler(logging.NullHandler())
    flags = {key: getattr(args, key) for key in ("config", "state_dir", "docker_host", "namespace")}
    try:
        config = load_config(flags, environ)
        store = TokenStore(config.state_dir)
        store.check_modes()
        return command(args, config, store)
    except (ConfigError, TokenError, OSError, Refused) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _token_command(args: argparse.Namespace, config: Config, store: TokenStore) -> int:
    if args.command == "add":
        return _add(args.user, args.role, args.inherit, config, store)
    if args.command == "list":
        for entry in sorted(store.entries(), key=lambda e: e.user):
            print(f"{entry.user}\t{entry.role}\t{entry.created}")
        # The tokens host users made for themselves (deepdock token create), by id and name.
        for token in sorted(store.host_tokens(), key=lambda t: (t.user, t.created)):
            print(f"{token.user}\t{token.role}\t{token.created}\t{token.id}\t{token.name}")
        return 0
    store.revoke(args.user)
    print(f"revoked the token of {args.user}", flush=True)
    return _end_of_life("deepdockd token", args.user, config, stop=args.stop)


def _user_command(args: argparse.Namespace, config: Config, store: TokenStore) -> int:
    check_user_name(args.user)
    if store.has(args.user):
        store.revoke(args.user)
        print(f"revoked the token of {args.user}", flush=True)
    else:
        print(f"{args.user} has no token", flush=True)
    return _end_of_life("deepdockd user", args.user, config, stop=args.stop)


def _add(user: str, role: str, inherit: bool, config: Config, store: TokenStore) -> int:
    store.check_new(user, role)
    try:
        holdings = _ask(config, lambda owners: owners.of(user))
    except ApiError as exc:
        if not inherit:
            mend = "start Docker" if isinstance(exc, DockerUnavailable) else "mend that"
            raise Refused(
                f"cannot tell what {user} still owns: {exc.message}; {mend} and try again, or "
                "add the token with --inherit if whatever the name owns is to be this user's"
            ) from None
        print(f"deepdockd token: cannot tell what {user} inherits: {exc.message}", file=sys.stderr)
    else:
        if not holdings.empty and not inherit:
            raise Refused(
                _listing(f"{user} still owns what a user of that name left", holdings)
                + f"a token for {user} would hand all of it to whoever holds the token: remove "
                f"them first (as an admin: {REMOVE_HINT}), or add the token with --inherit if "
                "they are to be this user's"
            )
        if not holdings.empty:
            print(_listing(f"{user} inherits", holdings), end="", file=sys.stderr)
    token = store.add(user, role)
    print(token)
    print(f"token for {user} ({role}): shown once, keep it secret", file=sys.stderr)
    return 0


def _end_of_life(prog: str, user: str, config: Config, *, stop: bool) -> int:
    """After the token went: stop the user's containers (``stop``), then say what is left."""

    async def stop_and_look(owners: UserHoldings) -> tuple[Stops, Holdings | ApiError]:
        stops = await owners.stop_containers(user) if stop else Stops((), {})
        try:
            return stops, await owners.of(user)
        except ApiError as exc:  # stopped all the same: say so, then why nothing is listed
            return stops, exc

    again = f"deepdockd user remove {user}" + ("" if stop else " --no-stop")
    try:
        stops, holdings = _ask(config, stop_and_look)
    except ApiError as exc:
        what = f"stop {user}'s containers or tell" if stop else "tell"
        print(
            f"{prog}: cannot {what} what is left: {exc.message}; the token is revoked all the "
            f"same: run `{again}` once Docker answers",
            file=sys.stderr,
        )
        return EXIT_ERROR
    for name in stops.stopped:
        print(f"stopped {name}")
    for name, why in stops.failed.items():
        print(f"{prog}: could not stop {name}: {why}", file=sys.stderr)
    if isinstance(holdings, ApiError):
        print(
            f"{prog}: cannot tell what is left in {user}'s name: {holdings.message}; run "
            f"`{again}` once that is mended",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if holdings.empty:
        print(f"nothing is left in {user}'s name (namespace {holdings.namespace})")
    else:
        print(_listing(f"left in {user}'s name", holdings), end="")
        print(
            f"they stay until an admin removes them ({REMOVE_HINT}); until then "
            f"`deepdockd token add {user}` is refused, unless --inherit hands them to the new "
            "token"
        )
    return EXIT_ERROR if stops.failed else 0


def _listing(title: str, holdings: Holdings) -> str:
    return f"{title} (namespace {holdings.namespace}):\n" + "".join(
        f"  {line}\n" for line in holdings.lines()
    )


def _ask(config: Config, question: Callable[[UserHoldings], Awaitable[T]]) -> T:
    """Ask the daemon's Docker, in a loop of the command's own."""

    async def ask() -> T:
        docker = Docker(config.docker_host)
        await docker.open()
        try:
            return await question(UserHoldings(docker, config))
        finally:
            await docker.close()

    return asyncio.run(ask())

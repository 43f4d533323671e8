"""``deepdockd token add|list|revoke``: manage who may call the API.

A new token is printed once; only its hash is kept. Changes take effect in a running daemon
at once (it re-reads the token file when it changes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from deepdockd.config import ConfigError, load_config
from deepdockd.tokens import ROLES, TokenError, TokenStore

EXIT_ERROR = 2


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepdockd token", description=__doc__)
    parser.add_argument("--config", help="TOML config file (for state_dir)")
    parser.add_argument("--state-dir", dest="state_dir", help="the daemon's state directory")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="make a token for a new user and print it once")
    add.add_argument("user")
    add.add_argument("--role", choices=ROLES, default="user")
    commands.add_parser("list", help="list the users that have a token")
    revoke = commands.add_parser("revoke", help="revoke a user's token, at once")
    revoke.add_argument("user")
    return parser.parse_args(argv)


def main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    args = parse_args(argv)
    try:
        config = load_config({"config": args.config, "state_dir": args.state_dir}, environ)
        store = TokenStore(config.state_dir)
        store.check_modes()
        if args.command == "add":
            token = store.add(args.user, args.role)
            print(token)
            print(
                f"token for {args.user} ({args.role}): shown once, keep it secret", file=sys.stderr
            )
        elif args.command == "list":
            for entry in sorted(store.entries(), key=lambda e: e.user):
                print(f"{entry.user}\t{entry.role}\t{entry.created}")
        else:
            store.revoke(args.user)
            print(f"revoked the token of {args.user}", file=sys.stderr)
    except (ConfigError, TokenError, OSError) as exc:
        print(f"deepdockd token: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0

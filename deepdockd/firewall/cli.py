"""``deepdockd firewall remove``: take a namespace's egress policy out of the host's firewall.

deepdockd leaves its rules in place when it stops, so that a daemon that is down never opens
the boundary; uninstalling it (``make uninstall``) or giving up the policy runs this command,
which deletes the namespace's jumps from ``DOCKER-USER`` and ``INPUT`` and its two chains, and
prints each change. It reads the same config as the daemon (for ``namespace``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from deepdockd.config import ConfigError, load_config
from deepdockd.firewall.iptables import IptablesError
from deepdockd.firewall.keeper import remove

EXIT_ERROR = 2


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepdockd firewall", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    remove_command = commands.add_parser(
        "remove", help="delete the namespace's egress rules: its jumps and its chains"
    )
    remove_command.add_argument("--config", help="TOML config file (for namespace)")
    remove_command.add_argument("--namespace", help="the daemon's label namespace")
    return parser.parse_args(argv)


def main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    args = parse_args(argv)
    flags = {"config": args.config, "namespace": args.namespace}
    try:
        config = load_config(flags, environ)
        done = asyncio.run(remove(config.namespace))
    except (ConfigError, IptablesError) as exc:
        print(f"deepdockd firewall: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for change in done:
        print(f"iptables {change}")
    if not done:
        print(f"no egress rules of namespace {config.namespace!r} were in place")
    return 0

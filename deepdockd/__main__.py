"""``deepdockd`` and ``python -m deepdockd``: read the configuration and serve.

This is the only module that reads the environment and the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from deepdockd import __version__, token_cli
from deepdockd.config import (
    DEFAULT_CONFIG_FILE,
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    ConfigError,
    flag_name,
    load_config,
)
from deepdockd.connections import fit_file_limit
from deepdockd.containers.ssh_server import bundled_server
from deepdockd.firewall import cli as firewall_cli
from deepdockd.firewall.keeper import FirewallUnavailable
from deepdockd.local_socket import SocketError
from deepdockd.logs import setup_logging
from deepdockd.server import serve
from deepdockd.tokens import TokenError, TokenStore

# Exit status for a configuration that cannot be used (as for a bad command line).
EXIT_BAD_CONFIG = 2

log = logging.getLogger("deepdockd")

_FLAG_HELP = {
    "config": f"TOML config file (default {DEFAULT_CONFIG_FILE}, used when present)",
    "host": "address to listen on (default 127.0.0.1)",
    "port": "TCP port to listen on (default 8000)",
    "docker_host": "Docker engine address (default unix:///var/run/docker.sock)",
    "state_dir": "directory for the daemon's own files (default /var/lib/deepdockd)",
    "namespace": "label namespace of the containers this daemon manages (default deepdock)",
    "log_level": f"one of {', '.join(LOG_LEVELS)} (default info)",
    "log_format": f"one of {', '.join(LOG_FORMATS)} (default text; json for log shippers)",
}


def parse_args(argv: Sequence[str]) -> dict[str, str | None]:
    parser = argparse.ArgumentParser(
        prog="deepdockd",
        description="Host daemon for shared GPU servers: a REST API for GPU containers "
        "with SSH logins, images and GPU metrics.",
        epilog="Every setting is also an environment variable (DEEPDOCKD_PORT, ...) and a key "
        "of the config file (port = 8000). Precedence: flag > environment > file > default.",
    )
    for key, help_text in _FLAG_HELP.items():
        parser.add_argument(flag_name(key), dest=key, metavar=key.upper(), help=help_text)
    parser.add_argument("--version", action="version", version=_version())
    parser.epilog = (parser.epilog or "") + (
        " Tokens: deepdockd token add|list|revoke; a user's end of life: deepdockd user remove;"
        " the egress rules out of the firewall: deepdockd firewall remove (see --help)."
    )
    return vars(parser.parse_args(argv))


def prepare_state_dir(config: Config) -> None:
    try:
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"state_dir: cannot create {str(config.state_dir)!r}: {exc.strerror}"
        ) from None


def _version() -> str:
    bundle = bundled_server()
    carried = bundle.version if bundle else "none; build it with make ssh-server"
    return f"deepdockd {__version__} (bundled SSH server: {carried})"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["token"]:
        return token_cli.main(arguments[1:])
    if arguments[:1] == ["user"]:
        return token_cli.user_main(arguments[1:])
    if arguments[:1] == ["firewall"]:
        return firewall_cli.main(arguments[1:])
    flags = parse_args(arguments)
    try:
        config = load_config(flags, os.environ)
        prepare_state_dir(config)
        admin_token = TokenStore(config.state_dir).ensure_admin() if config.auth else None
    except (ConfigError, TokenError) as exc:
        print(f"deepdockd: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(config.log_level, config.log_format)
    if admin_token is not None:
        log.warning(
            "first start: made an admin token and wrote it to %s (mode 0600); use it as "
            "Authorization: Bearer TOKEN, and `deepdockd token add USER` for the others",
            admin_token,
        )
    if not config.auth:
        log.warning("auth is off: every caller on %s is an admin", config.host)
    fit_file_limit(config.max_connections)
    try:
        asyncio.run(serve(config, reload=lambda: load_config(flags, os.environ)))
    except SocketError as exc:
        log.error("%s", exc)
        return 1
    except FirewallUnavailable as exc:
        log.error("%s", exc)
        return EXIT_BAD_CONFIG
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

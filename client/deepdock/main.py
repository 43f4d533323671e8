"""The ``deepdock`` console script."""

from __future__ import annotations

from deepdock.cli import cli


def main() -> None:
    cli(prog_name="deepdock")


if __name__ == "__main__":
    main()

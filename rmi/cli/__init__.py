"""The ``rmi`` console script: ``rmi <command> [options]`` (``rmi predict --help``)."""

from __future__ import annotations

import importlib
import logging
import sys

from rmi.cli.common import run_cli

COMMANDS = {"predict": "segment one image from one expression with a trained model"}
USAGE = "usage: rmi <command> [options]\n\ncommands:\n" + "\n".join(f"  {k:10s} {v}" for k, v in COMMANDS.items())


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``rmi <command> ...`` to ``rmi.cli.<command>.main``; usage and status 2 otherwise."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        sys.exit(0)
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        if args:
            print(f"rmi: error: unknown command {args[0]!r}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"rmi.cli.{args[0]}")
    # a command prints its results: stderr carries warnings and one-line errors only
    run_cli(lambda _: module.main(args[1:]), level=logging.WARNING)


if __name__ == "__main__":
    main()

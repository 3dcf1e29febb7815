"""`resviz` command line: one sub-command per job; each is a thin call into the package.

Bad input ends in one line `resviz: error: ...` and exit status 2, never a traceback
(set RESVIZ_DEBUG=1 to see one). Ctrl-C exits with status 130.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

# Each command module-level function pair: add_<name>(subparsers) builds the parser and sets
# `func` to the function that runs it. They are registered in COMMANDS at the bottom of the file.
CommandAdder = Callable[[argparse._SubParsersAction], None]


class CommandError(Exception):
    """A failure the user can fix; printed as one line."""


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")


# ---------------------------------------------------------------------------------------------
# commands are added below by the modules' owners, each in its own section
# ---------------------------------------------------------------------------------------------

COMMANDS: list[CommandAdder] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resviz",
        description="See residual learning: record and plot per-layer statistics of ResNets and plain nets.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("resviz: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as err:
        if os.environ.get("RESVIZ_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"resviz: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

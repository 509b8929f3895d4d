"""`presso`: the command-line entry point (LLVM style: opt, compile, inspect, bench)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..ir.errors import PressoError

# Each module defines `register(subparsers)`, which adds its parser with `func=run`.
SUBCOMMANDS = ("opt", "compile", "inspect", "bench", "demo", "zoo")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="presso",
        description="Presso: make neural networks smaller and faster, and show the work.",
    )
    parser.add_argument("--version", action="version", version=f"presso {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}_cmd":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PressoError as exc:
        print(f"presso {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"presso {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

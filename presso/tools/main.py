"""`presso`: the command-line entry point (LLVM style: opt, compile, inspect, bench)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..ir.errors import PressoError

# Each module defines `register(subparsers)`, which adds its parser with `func=run`.
SUBCOMMANDS = ("opt", "compile", "inspect", "bench", "demo", "zoo", "report", "search")


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
    for subparser in sub.choices.values():
        _add_verbosity(subparser)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("messages")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="more messages: -v adds Presso's and onnxruntime's info lines, -vv debug lines")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="errors only: no warnings from Presso or onnxruntime")


class _LogHandler(logging.Handler):
    """One line per message on stderr (`presso: warning: ...`), printed above progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        source = "onnxruntime: " if record.name.startswith("presso.onnxruntime") else ""
        line = f"presso: {record.levelname.lower()}: {source}{record.getMessage()}"
        try:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            print(line, file=sys.stderr)


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send the `presso` loggers (onnxruntime's lines included) to stderr at the chosen level:
    warnings by default, errors only with ``quiet``, info with -v, debug with -vv."""
    logger = logging.getLogger("presso")
    for handler in [h for h in logger.handlers if isinstance(h, _LogHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_LogHandler())
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except PressoError as exc:
        print(f"presso {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the disk or the file system, not Presso: say which file, no traceback
        where = f" (at {exc.filename})" if exc.filename else ""
        print(f"presso {args.command}: error: {exc.strerror or exc}{where}. Check the path, its permissions "
              "and the free disk space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"presso {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    """Errors print as exactly one line, even when a message quotes a multi-line library error."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())

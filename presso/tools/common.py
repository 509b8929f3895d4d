"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from ..ir import Model, load
from ..ir.analysis.shapes import fix_input_shapes
from ..ir.errors import PressoError


EXAMPLES_HEADER = "examples (in the folder where `presso zoo --out zoo` wrote the models; they run as written):"


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the description as usual but prints the examples line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES_HEADER):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_examples(parser: argparse.ArgumentParser, examples: tuple[str, ...]) -> None:
    """Show ``examples`` (command lines) under the options of ``parser``'s --help."""
    parser.formatter_class = _HelpFormatter
    parser.epilog = EXAMPLES_HEADER + "\n" + "\n".join(f"  {line}" for line in examples)


def add_shape_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="fix a dynamic input shape, e.g. --shape x=1,3,320,320 (repeatable)")


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise PressoError(f"--shape '{item}' must look like NAME=1,3,224,224")
        try:
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise PressoError(f"--shape '{item}': dimensions must be integers") from None
    return shapes


def load_model(path: str, shapes: list[str] | None = None) -> Model:
    model = load(path)
    if shapes:
        fix_input_shapes(model, parse_shapes(shapes))
    return model

"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from ..ir import Model, load
from ..ir.analysis.shapes import fix_input_shapes
from ..ir.errors import PressoError


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

"""Pipeline text (MLIR style) and YAML/TOML recipes.

``"fold-constants,fold-batchnorm{eps_check=true},calibrate{method=entropy,samples=64}"``:
passes separated by commas, options in braces as ``key=value`` pairs; list values use
brackets (``features=[a:b,c:d]``). A recipe file holds the same as
``pipeline: [{name: ..., options: {...}}, ...]`` or ``pipeline: "text"``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..ir.errors import PipelineError
from .base import Pass
from .registry import get_pass

_NAME = re.compile(r"^[a-z][a-z0-9\-]*$")


_CLOSERS = {"{": "}", "[": "]", "(": ")"}


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside brackets; a bracket that is not closed, or closed by the
    wrong kind, is a :class:`PipelineError` naming its column (1-based)."""
    parts, current = [], []
    stack: list[tuple[str, int]] = []  # open brackets and their columns
    for column, char in enumerate(text, 1):
        if char in _CLOSERS:
            stack.append((char, column))
        elif char in _CLOSERS.values():
            if not stack or _CLOSERS[stack[-1][0]] != char:
                expected = f"'{_CLOSERS[stack[-1][0]]}' for the '{stack[-1][0]}' at column {stack[-1][1]}" \
                    if stack else "nothing to close"
                raise PipelineError(f"unbalanced '{char}' at column {column} of the pipeline text '{text}' "
                                    f"(expected {expected})", where="pipeline text",
                                    hint="write options as name{key=value,...}; list values as [a,b]")
            stack.pop()
        if char == separator and not stack:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if stack:
        char, column = stack[-1]
        raise PipelineError(f"unbalanced '{char}' at column {column} of the pipeline text '{text}': it is "
                            "never closed", where="pipeline text",
                            hint=f"close it with '{_CLOSERS[char]}', e.g. calibrate{{method=entropy}}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_pass(text: str) -> Pass:
    """One pass with its options, e.g. ``calibrate{method=entropy,samples=64}``."""
    text = text.strip()
    if "{" in text:
        if not text.endswith("}"):
            raise PipelineError(f"pass '{text}' must end its options with '}}'",
                                hint="nothing may follow the closing brace; separate passes with commas")
        name, body = text[:-1].split("{", 1)
        name = name.strip()
        options: dict[str, Any] = {}
        for item in _split_top_level(body):
            if not item:
                continue
            if "=" not in item:
                raise PipelineError(f"option '{item}' of pass '{name}' needs the form key=value",
                                    hint=f"e.g. {name}{{{item}=...}}")
            key, value = item.split("=", 1)
            key = key.strip()
            if key in options:
                raise PipelineError(f"option '{key}' is given twice for pass '{name}'",
                                    hint="give each option once")
            options[key] = value.strip()
    else:
        name, options = text, {}
    if not name:
        raise PipelineError(f"'{text}' has options but no pass name", hint="write name{key=value,...}, "
                            "e.g. calibrate{method=entropy}; see `presso opt --list-passes`")
    if not _NAME.match(name):
        spaced = len(name.split()) > 1
        raise PipelineError(f"'{name}' is not a valid pass name",
                            hint="separate passes with commas, e.g. fold-constants,fold-batchnorm" if spaced else
                            "pass names are lowercase words joined by '-', e.g. fold-batchnorm; "
                            "see `presso opt --list-passes`")
    return get_pass(name)(**options)


def parse_pipeline(text: str) -> list[Pass]:
    """Parse pipeline text into configured pass instances (validating every name and option).

    Errors name the pass by its position and text, e.g. "pass 2 'calibrate{method=x}'".
    """
    if not text or not text.strip():
        raise PipelineError("the pipeline is empty", where="pipeline text",
                            hint="give passes separated by commas, e.g. fold-constants,fold-batchnorm")
    passes = []
    for position, part in enumerate((p for p in _split_top_level(text) if p), 1):
        with _located(f"pass {position} '{part}' of the pipeline"):
            passes.append(parse_pass(part))
    return passes


class _located:
    """Adds ``where`` to a :class:`PipelineError` that has none (errors are immutable once formatted)."""

    def __init__(self, where: str):
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, PipelineError) and not error.where:
            raise PipelineError(error.what, where=self.where, hint=error.hint) from error
        return False


def load_recipe(path: str | Path) -> list[Pass]:
    """Read a pipeline from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) recipe."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError("recipe file does not exist", where=str(path), hint="check the --recipe path")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            document = tomllib.loads(text)
        else:
            import yaml

            document = yaml.safe_load(text)
    except Exception as exc:
        raise PipelineError(f"recipe cannot be parsed: {' '.join(str(exc).split())}", where=str(path),
                            hint="fix the YAML/TOML syntax") from exc
    steps = document.get("pipeline") if isinstance(document, dict) else document
    if isinstance(steps, str):
        return parse_pipeline(steps)
    if not isinstance(steps, list) or not steps:
        raise PipelineError("recipe must hold a non-empty 'pipeline' list or text", where=str(path),
                            hint="e.g. pipeline: [{name: fold-constants}, "
                                 "{name: calibrate, options: {method: entropy}}]")
    passes = []
    for i, step in enumerate(steps):
        with _located(f"step {i} of recipe {path}"):
            if isinstance(step, str):
                passes.append(parse_pass(step))
                continue
            if not isinstance(step, dict) or "name" not in step:
                raise PipelineError(f"recipe step {i} needs a 'name'", where=str(path),
                                    hint="write each step as {name: PASS, options: {...}}")
            options = step.get("options") or {}
            if not isinstance(options, dict):
                raise PipelineError(f"recipe step {i} ('{step['name']}'): options must be a mapping of "
                                    f"name to value, not {type(options).__name__}", where=str(path),
                                    hint="e.g. options: {method: entropy}")
            passes.append(get_pass(str(step["name"]))(**options))
    return passes

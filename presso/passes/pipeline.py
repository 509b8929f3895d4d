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


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '{char}' in pipeline text '{text}'")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise PipelineError(f"unbalanced brackets in pipeline text '{text}'")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_pass(text: str) -> Pass:
    text = text.strip()
    if "{" in text:
        if not text.endswith("}"):
            raise PipelineError(f"pass '{text}' must end its options with '}}'")
        name, body = text[:-1].split("{", 1)
        name = name.strip()
        options: dict[str, Any] = {}
        for item in _split_top_level(body):
            if not item:
                continue
            if "=" not in item:
                raise PipelineError(f"option '{item}' of pass '{name}' needs the form key=value")
            key, value = item.split("=", 1)
            key = key.strip()
            if key in options:
                raise PipelineError(f"option '{key}' is given twice for pass '{name}'")
            options[key] = value.strip()
    else:
        name, options = text, {}
    if not _NAME.match(name):
        raise PipelineError(f"'{name}' is not a valid pass name",
                            hint="pass names are lowercase words joined by '-', e.g. fold-batchnorm")
    return get_pass(name)(**options)


def parse_pipeline(text: str) -> list[Pass]:
    """Parse pipeline text into configured pass instances (validating every name and option)."""
    if not text or not text.strip():
        raise PipelineError("the pipeline is empty", hint="give passes separated by commas")
    return [parse_pass(part) for part in _split_top_level(text) if part]


def load_recipe(path: str | Path) -> list[Pass]:
    """Read a pipeline from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) recipe."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError("recipe file does not exist", where=str(path))
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            document = tomllib.loads(text)
        else:
            import yaml

            document = yaml.safe_load(text)
    except Exception as exc:
        raise PipelineError(f"recipe cannot be parsed: {exc}", where=str(path)) from exc
    steps = document.get("pipeline") if isinstance(document, dict) else document
    if isinstance(steps, str):
        return parse_pipeline(steps)
    if not isinstance(steps, list) or not steps:
        raise PipelineError("recipe must hold a non-empty 'pipeline' list or text", where=str(path),
                            hint="e.g. pipeline: [{name: fold-constants}, {name: calibrate, options: {method: entropy}}]")
    passes = []
    for i, step in enumerate(steps):
        if isinstance(step, str):
            passes.append(parse_pass(step))
            continue
        if not isinstance(step, dict) or "name" not in step:
            raise PipelineError(f"recipe step {i} needs a 'name'", where=str(path))
        options = step.get("options") or {}
        if not isinstance(options, dict):
            raise PipelineError(f"recipe step {i} ('{step['name']}'): options must be a mapping of "
                                f"name to value, not {type(options).__name__}", where=str(path))
        passes.append(get_pass(str(step["name"]))(**options))
    return passes

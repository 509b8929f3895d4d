"""The pass registry: ``@register_pass("name")`` and lookup by name."""

from __future__ import annotations

import difflib
import importlib

from ..ir.errors import PipelineError
from .base import Pass

_REGISTRY: dict[str, type[Pass]] = {}

# Families register their passes on import; importing them lazily keeps `import presso` light.
_FAMILIES = ("cleanup", "legalize", "quant", "prune", "train")


def register_pass(name: str):
    """Class decorator that registers a :class:`Pass` subclass under ``name``."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"pass name '{name}' is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_families() -> None:
    for family in _FAMILIES:
        try:
            importlib.import_module(f"{__package__}.{family}")
        except ModuleNotFoundError as exc:
            # A family whose optional dependency (e.g. torch) is missing simply registers nothing.
            if exc.name and exc.name.startswith(f"{__package__}.{family}"):
                raise
            continue


def available_passes() -> dict[str, type[Pass]]:
    _load_families()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    passes = available_passes()
    if name not in passes:
        close = difflib.get_close_matches(name, passes, n=3)
        suggestion = f" Did you mean {', '.join(close)}?" if close else ""
        raise PipelineError(
            f"unknown pass '{name}'.{suggestion}",
            hint="valid passes: " + ", ".join(passes),
        )
    return passes[name]

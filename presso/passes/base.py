"""`Pass`, `PassResult`, `PassContext` and typed pass options.

A pass declares its options as annotated class attributes with defaults, like a dataclass::

    class Calibrate(Pass):
        method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
        percentile: float = 99.99
        samples: int | None = None

``Calibrate(method="entropy")`` and the pipeline text ``calibrate{method=entropy}`` both
validate names and values against these declarations.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ..ir import Model
from ..ir.errors import PipelineError


@dataclass
class ErrorMetrics:
    """How far a model's outputs moved from a reference, over all outputs and samples."""

    max_abs: float
    mean_abs: float
    sqnr_db: float  # signal-to-quantization-noise ratio; inf when identical
    cosine: float
    max_rel: float  # max_abs / max |reference|

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass
class PassResult:
    """What one pass did: whether it changed the graph, counters, and measured error."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    error: ErrorMetrics | None = None  # filled by the manager's verification
    log: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """What passes share during one pipeline run."""

    data: Any = None  # a DataSource, a path, or an iterable of feeds
    labels: Any = None  # optional labels for training passes
    target: Any = None  # a backends Target profile, when compiling for one
    scheme: Any = None  # a QuantScheme for insert-qdq; None: the target's, else the default
    seed: int = 0
    progress: bool = True
    reference: Model | None = None  # the model as it entered the pipeline
    sample_feeds: list[dict[str, np.ndarray]] | None = None  # inputs used for verification
    shared: dict[str, Any] = field(default_factory=dict)  # anything passes hand to later passes


@dataclass(frozen=True)
class OptionSpec:
    name: str
    annotation: Any
    default: Any

    def describe(self) -> str:
        return f"{self.name}: {_type_name(self.annotation)} = {self.default!r}"


class Pass:
    """Base class of every pass. Subclasses implement :meth:`run`.

    Class attributes: ``name`` (set by ``@register_pass``), ``preserves_semantics`` (outputs
    must match the input model to float tolerance; the manager verifies this), and the typed
    options described in the module docstring.
    """

    name: ClassVar[str] = ""
    preserves_semantics: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    options: ClassVar[dict[str, OptionSpec]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls, include_extras=False)
        own = {}
        for klass in reversed(cls.__mro__):
            for key in getattr(klass, "__annotations__", {}):
                if key.startswith("_") or key in ("name", "preserves_semantics", "needs_data", "options"):
                    continue
                hint = hints.get(key)
                if typing.get_origin(hint) is ClassVar:
                    continue
                own[key] = OptionSpec(key, hint, getattr(cls, key, None))
        cls.options = own

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise PipelineError(
                f"pass '{self.name}' has no option(s) {unknown}",
                hint=self.describe_options(),
            )
        for key, spec in self.options.items():
            value = options.get(key, spec.default)
            setattr(self, key, coerce_option(self.name, spec, value))

    @classmethod
    def describe_options(cls) -> str:
        if not cls.options:
            return f"pass '{cls.name}' takes no options"
        return f"valid options of '{cls.name}': " + ", ".join(s.describe() for s in cls.options.values())

    def option_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.options}

    def run(self, model: Model, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.option_values().items())
        return f"{self.name}{{{opts}}}" if opts else self.name


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        (inner,) = typing.get_args(annotation) or (str,)
        return f"list[{_type_name(inner)}]"
    return getattr(annotation, "__name__", str(annotation))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce_option(pass_name: str, spec: OptionSpec, value: Any) -> Any:
    """Convert a (possibly textual) option value to the declared type, or raise PipelineError."""
    try:
        return _coerce(spec.annotation, value)
    except (ValueError, TypeError) as exc:
        raise PipelineError(
            f"invalid value {value!r} for option '{spec.name}' of pass '{pass_name}': {exc}",
            hint=f"expected {_type_name(spec.annotation)}",
        ) from None


def _coerce(annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        choices = typing.get_args(annotation)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        for choice in choices:
            if str(choice) == text or choice == value:
                return choice
        raise ValueError(f"must be one of {', '.join(map(str, choices))}")
    if origin is list:
        (inner,) = typing.get_args(annotation) or (str,)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            items = [v.strip() for v in text.split(";" if ";" in text else ",") if v.strip()]
        else:
            items = list(value)
        return [_coerce(inner, v) for v in items]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("must be true or false")
    if annotation is int:
        if isinstance(value, bool):
            raise TypeError("must be an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError("must be a number")
        return float(value)
    if annotation is str:
        if value is None:
            raise TypeError("must be text")
        return str(value)
    return value

"""The search space of ``presso search``: what a candidate recipe may choose, and the pipeline
text each choice becomes.

A candidate is a dict of choices (``quant``, ``scheme``, ``calibration``, ``per_channel``,
``max_drop``, ``prune``, ``distill_epochs``, ``sparsity``, ``backend``). :meth:`SearchSpace.pipeline`
turns it into the pipeline text that ``presso opt -p`` replays, in the order the field uses:
prune the channels, distill the pruned model from the original, sparsify, then quantize
(quantization last, so that nothing retrains rounded weights). The space is a plain mapping
from choice name to the list of values it may take; a YAML file restricts or extends it
(``--space FILE``):

```yaml
quant: [int8, none]           # int8 (static), dynamic, int4-weights, none
calibration: [minmax, percentile]
prune: [0.0, 0.25]
distill_epochs: [0, 2]
backend: [onnxruntime]
```

Choices that do not apply to a candidate (``calibration`` when it is not quantized statically,
``distill_epochs`` when nothing is pruned) are not asked for, so Optuna's samplers see the
conditional structure.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import Model
from ..ir.analysis.batch import batch_only_dynamic
from ..ir.errors import PressoError
from ..passes import available_passes
from ..passes.quant.scheme import NAMED_SCHEMES

QUANT_KINDS = ("none", "int8", "dynamic", "int4-weights")
CALIBRATIONS = ("auto", "minmax", "percentile", "entropy", "mse", "mean-minmax")
# What every choice means when a candidate does not set it: presso.quantize's defaults.
DEFAULTS: dict[str, Any] = {"quant": "int8", "scheme": "target", "calibration": "auto", "per_channel": "target",
                            "max_drop": 0.0, "prune": 0.0, "distill_epochs": 0, "sparsity": 0.0,
                            "backend": "onnxruntime"}
# The pipeline a candidate with no compression replays (a pipeline is never empty).
NO_OP_PIPELINE = "eliminate-dead-code"


class SpaceError(PressoError):
    """A search space that names an unknown choice or a value the choice cannot take."""


@dataclass
class SearchSpace:
    """Choice name → the values it may take (first value first in the search)."""

    choices: dict[str, list[Any]] = field(default_factory=dict)

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def default(cls, model: Model, target: Any = "cpu-x86") -> SearchSpace:
        """Every choice that applies to ``model`` on ``target``.

        ``dynamic`` and ``int4-weights`` appear only when the model has a MatMul/Gemm with a
        constant weight; ``max_drop`` only when a ``mixed-precision`` pass is registered; ``tvm``
        only when the target lists it and TVM is installed.
        """
        from ..backends.target import get_target

        target = get_target(target)
        quant = ["none", "int8"]
        if _has_constant_matmul(model):
            quant += ["dynamic", "int4-weights"]
        choices: dict[str, list[Any]] = {
            "quant": quant,
            "scheme": ["target", "s8s8", "int8-symmetric"],
            "calibration": list(CALIBRATIONS),
            "per_channel": ["target", False],
            "prune": [0.0, 0.25, 0.5],
            "distill_epochs": [0, 1, 3],
            "sparsity": [0.0, 0.5],
            "backend": [b for b in target.backends if b == "onnxruntime" or
                        (b == "tvm" and importlib.util.find_spec("tvm") is not None)],
        }
        if "mixed-precision" in available_passes():
            choices["max_drop"] = [0.0, 0.005, 0.02]
        if not _has_prunable_conv_or_gemm(model):
            choices["prune"] = [0.0]
        return cls(choices)

    @classmethod
    def resolve(cls, space: Any, model: Model, target: Any = "cpu-x86") -> SearchSpace:
        """The space to search: the default for ``model`` on ``target`` when ``space`` is None,
        restricted by a mapping or a YAML file path, or ``space`` itself when it is a SearchSpace."""
        if isinstance(space, SearchSpace):
            space.validate()
            return space
        base = cls.default(model, target)
        if space is None:
            return base
        return base.restricted(space) if isinstance(space, Mapping) else cls.from_yaml(space, base)

    def restricted(self, overrides: Mapping[str, Any]) -> SearchSpace:
        """This space with the choices of ``overrides`` replaced (a scalar is a one-value list)."""
        choices = {k: list(v) for k, v in self.choices.items()}
        for name, values in overrides.items():
            if name not in DEFAULTS:
                raise SpaceError(f"unknown search choice '{name}'", where="search space",
                                 hint=f"choices: {', '.join(DEFAULTS)}")
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if not values:
                raise SpaceError(f"search choice '{name}' has no values", where="search space",
                                 hint=f"give at least one, e.g. {name}: [{DEFAULTS[name]!r}]")
            choices[name] = values
        space = SearchSpace(choices)
        space.validate()
        return space

    @classmethod
    def from_yaml(cls, path: str | Path, base: SearchSpace) -> SearchSpace:
        """``base`` restricted or extended by the YAML mapping in ``path``."""
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SpaceError(f"cannot read the search space file: {exc}", where=str(path),
                             hint="write a YAML mapping, e.g. 'prune: [0.0, 0.25]'") from None
        if not isinstance(loaded, dict):
            raise SpaceError("the search space file must hold a YAML mapping of choice: [values]", where=str(path),
                             hint="e.g. 'quant: [int8, none]'")
        return base.restricted(loaded)

    def validate(self) -> None:
        checks = {
            "quant": lambda v: v in QUANT_KINDS,
            "scheme": lambda v: v == "target" or v in NAMED_SCHEMES,
            "calibration": lambda v: v in CALIBRATIONS,
            "per_channel": lambda v: v in ("target", True, False),
            "max_drop": lambda v: isinstance(v, (int, float)) and v >= 0,
            "prune": lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
            "distill_epochs": lambda v: isinstance(v, int) and v >= 0,
            "sparsity": lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
            "backend": lambda v: v in ("onnxruntime", "tvm"),
        }
        for name, values in self.choices.items():
            bad = [v for v in values if not checks[name](v)]
            if bad:
                raise SpaceError(f"search choice '{name}' cannot take {bad[0]!r}", where="search space",
                                 hint=_VALUE_HINTS[name])
        if any(v > 0 for v in self.choices.get("max_drop", [])) and "mixed-precision" not in available_passes():
            raise SpaceError("search choice 'max_drop' needs the mixed-precision pass, which this Presso lacks",
                             where="search space", hint="remove max_drop from the space")

    # ---- sampling (Optuna's define-by-run interface) ---------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` (an Optuna trial, or Ray's captor of one) for one candidate; only the
        choices that apply to the candidate are asked for."""
        def ask(name: str) -> Any:
            values = self.choices.get(name, [DEFAULTS[name]])
            return values[0] if len(values) == 1 else trial.suggest_categorical(name, values)

        candidate = {"quant": ask("quant")}
        if candidate["quant"] == "int8":
            candidate.update(scheme=ask("scheme"), calibration=ask("calibration"), per_channel=ask("per_channel"))
            if "max_drop" in self.choices:
                candidate["max_drop"] = ask("max_drop")
        elif candidate["quant"] == "dynamic":
            candidate["per_channel"] = ask("per_channel")
        candidate["prune"] = ask("prune")
        if candidate["prune"] > 0:
            candidate["distill_epochs"] = ask("distill_epochs")
        candidate["sparsity"] = ask("sparsity")
        candidate["backend"] = ask("backend")
        return candidate

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the choices (for adding finished candidates to a study)."""
        import optuna

        return {name: optuna.distributions.CategoricalDistribution(values)
                for name, values in self.choices.items() if len(values) > 1}

    # ---- pipeline text ----------------------------------------------------------------------
    @staticmethod
    def pipeline(candidate: Mapping[str, Any], *, static_shapes: bool = False, metric: str | None = None) -> str:
        """The pipeline text of ``candidate`` (run with the target in the pass context, as
        ``presso opt --target`` does). ``static_shapes``: the model has dynamic axes besides the
        batch (:func:`needs_static_shapes`), which pruning cannot work with. ``metric``: the task
        metric mixed precision holds within ``max_drop`` (a name; the pass's default if None)."""
        c = {**DEFAULTS, **candidate}
        passes = []
        if static_shapes and c["prune"] > 0:
            passes.append("static-shapes")  # fixes them from the calibration data's first sample
        if c["prune"] > 0:
            passes.append(f"prune-channels{{ratio={c['prune']:g}}}")
            if c["distill_epochs"] > 0:
                passes.append(f"distill{{epochs={c['distill_epochs']}}}")
        if c["sparsity"] > 0:  # sparsify reads initializers: weights held by Constant nodes (PP-OCR) move first
            passes += ["constants-to-initializers", f"sparsify{{sparsity={c['sparsity']:g}}}"]
        if c["quant"] == "int8":
            options = []
            if c["scheme"] != "target":
                options.append(f"scheme={c['scheme']}")
            if c["per_channel"] != "target":
                options.append(f"per_channel={str(c['per_channel']).lower()}")
            passes.append("insert-qdq" + (f"{{{','.join(options)}}}" if options else ""))
            passes.append(f"calibrate{{method={c['calibration']}}}")
            passes.append("bias-correction")
            if c["max_drop"] > 0:  # on the calibrated, bias-corrected Q/DQ model, before folding
                options = f"max_drop={c['max_drop']:g}" + (f",metric={metric}" if metric else "")
                passes.append(f"mixed-precision{{{options}}}")
            passes.append("fold-qdq")
        elif c["quant"] == "dynamic":
            per_channel = c["per_channel"] if isinstance(c["per_channel"], bool) else True
            passes.append(f"quantize-dynamic{{per_channel={str(per_channel).lower()}}}")
        elif c["quant"] == "int4-weights":
            passes.append("quantize-weights{bits=4,ops=[MatMul]}")
        return ",".join(passes) or NO_OP_PIPELINE

    @staticmethod
    def describe(candidate: Mapping[str, Any]) -> str:
        """A short label, e.g. ``int8 minmax · prune 0.25 + distill 1 · ort``."""
        c = {**DEFAULTS, **candidate}
        parts = []
        if c["quant"] == "int8":
            label = f"int8 {c['calibration']}"
            if c["scheme"] != "target":
                label += f" {c['scheme']}"
            if c["per_channel"] is False:
                label += " per-tensor"
            if c["max_drop"] > 0:
                label += f" mp≤{c['max_drop']:g}"
            parts.append(label)
        elif c["quant"] != "none":
            parts.append(c["quant"])
        if c["prune"] > 0:
            parts.append(f"prune {c['prune']:g}" + (f" + distill {c['distill_epochs']}" if c["distill_epochs"] else ""))
        if c["sparsity"] > 0:
            parts.append(f"sparsify {c['sparsity']:g}")
        parts.append("tvm" if c["backend"] == "tvm" else "ort")
        return " · ".join(parts) if len(parts) > 1 else f"float · {parts[0]}"


# The recipe presso.quantize(model, data, target=...) applies by default, and the float model.
PRESSO_QUANTIZE_DEFAULT = {"quant": "int8", "scheme": "target", "calibration": "auto", "per_channel": "target",
                           "prune": 0.0, "sparsity": 0.0, "backend": "onnxruntime"}
FLOAT_MODEL = {"quant": "none", "prune": 0.0, "sparsity": 0.0, "backend": "onnxruntime"}

_VALUE_HINTS = {
    "quant": f"choose among {', '.join(QUANT_KINDS)}",
    "scheme": f"'target' (the target's scheme) or one of {', '.join(NAMED_SCHEMES)}",
    "calibration": f"choose among {', '.join(CALIBRATIONS)}",
    "per_channel": "'target', true or false",
    "max_drop": "a non-negative number (the largest task-metric drop mixed precision may accept)",
    "prune": "a ratio in [0, 1)",
    "distill_epochs": "a whole number of epochs, 0 for none",
    "sparsity": "a ratio in [0, 1)",
    "backend": "onnxruntime or tvm",
}


def _has_constant_matmul(model: Model) -> bool:
    import onnx_graphsurgeon as gs

    return any(node.op in ("MatMul", "Gemm") and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant)
               for node in model.graph.nodes)


def _has_prunable_conv_or_gemm(model: Model) -> bool:
    return any(node.op in ("Conv", "Gemm", "MatMul") for node in model.graph.nodes)


def needs_static_shapes(model: Model) -> bool:
    """True when an input has a dynamic axis other than the batch."""
    _, other = batch_only_dynamic(model)
    return bool(other)


def filter_applicable(candidate: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """``candidate`` reduced to the choices :meth:`SearchSpace.suggest` would ask for in
    ``space`` (for enqueuing fixed candidates such as presso.quantize's default)."""
    class _Fixed:
        def suggest_categorical(self, name: str, values: list[Any]) -> Any:
            value = candidate.get(name, DEFAULTS[name])
            return value if value in values else values[0]

    return space.suggest(_Fixed())

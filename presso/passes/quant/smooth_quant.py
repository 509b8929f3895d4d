"""`smooth-quant`: move activation outliers into the weights of MatMul/Gemm (Xiao et al. 2023).

Transformer activations have a few channels a hundred times larger than the rest (all-MiniLM's
LayerNorm outputs: channel 99 reaches 28 where the median channel stays under 2), so one
per-tensor activation scale leaves the other channels a handful of integer levels. Weights
have no such outliers. SmoothQuant divides activation channel ``j`` by

    s_j = max|X_j|^α / max|W_j|^(1−α)

and multiplies the weight's input row ``j`` by the same ``s_j``: ``(X / s) · (diag(s) W) = X W``,
so the float model computes the same function and the quantization difficulty is shared
between activations and weights by ``α`` (0: nothing moves, 1: all of it moves to the weights).

The division is folded where that is exact and free, into the node that writes the activation
when every reader of the activation is one of the smoothed layers (see :mod:`.activation_scale`:
a LayerNormalization's scale and bias, a MatMul/Gemm's output columns and bias, a Mul by a
constant, through a Mul of two such products, as in GELU's ``(x · 0.5) · (1 + erf(…))``), and
otherwise done by an inserted ``Mul`` by ``1/s`` that only the smoothed layers read (a residual
connection keeps the unscaled tensor).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import DataSource, Model, check_finite, evaluate
from ...ir.edit import add_initializer
from ...ir.errors import CalibrationError, PassError
from ..base import Pass, PassContext, PassResult
from ..progress import progress_bar, sample_count
from ..registry import register_pass
from . import activation_scale
from .layer_inputs import _valid_rows

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@register_pass("smooth-quant")
class SmoothQuant(Pass):
    """Migrate activation outliers into MatMul/Gemm weights (SmoothQuant, Xiao et al. 2023).

    For each activation read by MatMuls/Gemms with constant 2-D weights, one streaming pass over
    the calibration data (``samples`` samples, ``batch`` per run; padding rows that an integer
    ``*mask*`` input marks 0 are left out) measures the per-channel max |x|; channel ``j`` is then
    divided by ``s_j = max|x_j|^alpha / max|W_j|^(1-alpha)`` and the weights' input rows are
    multiplied by it. ``alpha=auto`` (default) picks α per activation from 0, 0.1 … 0.9 by the
    layers' output error under int8 fake quantization on the first ``search_rows`` rows (one α
    does not suit all: on all-MiniLM, 0.3 ruins the GELU outputs that 0.7 helps); α = 0 leaves
    an activation alone. The division goes into the activation's producer where exact (LayerNorm
    scale/bias, a MatMul/Gemm's columns and bias, a Mul by a constant), else into an inserted Mul
    read only by those layers (``insert_mul=false`` skips such activations instead). Activations
    whose channel ranges differ less than ``min_spread`` (largest channel max / median channel
    max) are left alone. Run it on the float model, before ``insert-qdq``. Needs: data.
    Preserves semantics (to float rounding).
    """

    preserves_semantics = True
    needs_data = True
    alpha: float | Literal["auto"] = "auto"
    min_spread: float = 1.0
    search_rows: int = 1024
    insert_mul: bool = True
    ops: list[str] = ["MatMul", "Gemm"]
    exclude: list[str] | None = None
    samples: int | None = None
    batch: int | None = None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if self.alpha != "auto" and not 0.0 <= self.alpha <= 1.0:
            raise PassError(f"smooth-quant's alpha must lie in [0, 1], got {self.alpha}",
                            hint="0.5 is the paper's default; larger values move more of the range into the weights")
        if model.nodes(*_QDQ_OPS):
            raise PassError("the model already holds quantization nodes", where="pass 'smooth-quant'",
                            hint="run smooth-quant on the float model, before insert-qdq")
        if ctx.data is None:
            raise PassError("smooth-quant needs calibration data", where="pass 'smooth-quant'",
                            hint="give sample inputs with --data FILE.npz (or data= in Python)")
        groups, skipped = self._groups(model)
        if not groups:
            return PassResult(changed=False, stats={"smoothed": 0, "skipped": skipped})
        act_max, act_rows = self._activation_stats(model, ctx, [t.name for t, _ in groups])
        folded: dict[str, int] = {}
        spread_before, spread_after, alphas = [], [], []
        smoothed = 0
        for tensor, layers in groups:
            x_max = act_max[tensor.name]
            w_max = np.max([np.abs(_input_rows(node)).max(axis=1) for node in layers], axis=0)
            spread = _spread(x_max)
            if spread < self.min_spread:
                skipped.append(f"{tensor.name}: channel spread {spread:.1f} < min_spread")
                continue
            if self.alpha == "auto":
                alpha, s = search_alpha(act_rows[tensor.name], [_input_rows(n) for n in layers], x_max, w_max)
                if alpha == 0.0:
                    skipped.append(f"{tensor.name}: alpha=auto found no smoothing better than none")
                    continue
            else:
                alpha, s = self.alpha, smoothing_scale(x_max, w_max, self.alpha)
            alphas.append(alpha)
            how = activation_scale.fold_division(model, tensor, layers, s, tag="smooth")
            if how is None:
                if not self.insert_mul:
                    skipped.append(f"{tensor.name}: no producer to fold 1/s into (insert_mul=false)")
                    continue
                activation_scale.insert_division(model, tensor, layers, s, tag="smooth")
                how = "inserted Mul"
            for node in layers:
                _scale_input_rows(model, node, s)
            folded[how] = folded.get(how, 0) + 1
            spread_before.append(spread)
            spread_after.append(_spread(x_max / s))
            smoothed += 1
        if smoothed:
            model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            model.invalidate()
        stats = {"smoothed": smoothed, "layers": sum(len(ls) for _, ls in groups), "folded": folded,
                 "alpha": self.alpha if self.alpha != "auto" else (round(float(np.mean(alphas)), 2) if alphas else None),
                 "skipped": skipped}
        if spread_before:
            stats["max_channel_spread"] = [round(max(spread_before), 1), round(max(spread_after), 1)]
        log = [f"{t.name}: {len(ls)} layer(s)" for t, ls in groups]
        return PassResult(changed=smoothed > 0, stats=stats, log=log)

    def _groups(self, model: Model) -> tuple[list[tuple[gs.Variable, list[gs.Node]]], list[str]]:
        """(activation, the layers that read it) in graph order, and why others were left out."""
        patterns = [re.compile(p) for p in (self.exclude or [])]
        groups: dict[int, tuple[gs.Variable, list[gs.Node]]] = {}
        skipped: list[str] = []
        for node in model.graph.nodes:
            if node.op not in self.ops or node.op not in ("MatMul", "Gemm"):
                continue
            if any(p.fullmatch(node.name) for p in patterns):
                continue
            reason = _unsupported(node)
            if reason == "":
                continue  # not a weight layer (two activations, e.g. attention scores)
            if reason:
                skipped.append(f"{node.name}: {reason}")
                continue
            groups.setdefault(id(node.inputs[0]), (node.inputs[0], []))[1].append(node)
        return list(groups.values()), skipped

    def _activation_stats(self, model: Model, ctx: PassContext, names: list[str]
                          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per activation: the per-channel max |x| over all valid rows, and the first
        ``search_rows`` rows (what ``alpha=auto`` scores candidates on)."""
        source = DataSource.open(ctx.data, model)
        batch = self.batch or source.model_batch or 8
        result: dict[str, np.ndarray] = {}
        kept: dict[str, list[np.ndarray]] = {name: [] for name in names}
        keep = self.search_rows if self.alpha == "auto" else 0
        bar = progress_bar(ctx.progress, sample_count(source, self.samples), "smooth-quant")
        try:
            for index, feed in enumerate(source.feeds(batch=batch, limit=self.samples)):
                check_finite(feed, where=f"smooth-quant batch {index}")
                values = evaluate(model, feed, outputs=names)
                for name in names:
                    rows = _valid_rows(np.asarray(values[name], dtype=np.float32), feed)
                    if len(rows):
                        peak = np.abs(rows).max(axis=0)
                        result[name] = np.maximum(result[name], peak) if name in result else peak
                        room = keep - sum(len(r) for r in kept[name])
                        if room > 0:
                            kept[name].append(np.array(rows[:room]))
                if bar is not None:
                    bar.update(len(next(iter(feed.values()))))
        finally:
            if bar is not None:
                bar.close()
        missing = [n for n in names if n not in result]
        if missing:
            raise CalibrationError(f"the calibration data gave no rows for activation(s) {missing[:3]}",
                                   where="pass 'smooth-quant'", hint="give at least one sample (with a non-zero mask)")
        for name, peak in result.items():
            if not np.all(np.isfinite(peak)):
                raise CalibrationError(f"activation '{name}' holds NaN/Inf on the calibration data",
                                       where=f"tensor '{name}'", hint="check the input data's range")
        return result, {name: np.concatenate(rows) for name, rows in kept.items() if rows}


def smoothing_scale(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel ``s = x_max^α / w_max^(1−α)`` (float32); 1 for channels that
    are zero in the data or the weights (nothing to balance), and kept within 1e-4…1e4."""
    x_max = np.asarray(x_max, np.float64)
    w_max = np.asarray(w_max, np.float64)
    live = (x_max > 0) & (w_max > 0)
    s = np.ones_like(x_max)
    s[live] = x_max[live] ** alpha / w_max[live] ** (1.0 - alpha)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


ALPHAS = tuple(round(0.1 * i, 1) for i in range(10))


def search_alpha(rows: np.ndarray, weights: Sequence[np.ndarray], x_max: np.ndarray, w_max: np.ndarray
                 ) -> tuple[float, np.ndarray]:
    """(α, s) of the α in :data:`ALPHAS` whose smoothing leaves the smallest output error
    Σ_layers ‖x W − Qa(x / s) · Qw(diag(s) W)‖² on ``rows`` [R, K], with the default scheme's
    quantizers: uint8 asymmetric per-tensor activations (min/max of the rows), int8 symmetric
    per-output-channel weights. One α does not fit every layer: a GELU output (min −0.17 in every
    channel, a few channels up to 25) loses more to a larger asymmetric range than it gains
    unless α is large, while LayerNorm outputs gain at any α (all-MiniLM, per-layer SQNR)."""
    x = rows.astype(np.float32)
    reference = [x @ w for w in weights]
    best: tuple[float, float, np.ndarray] = (np.inf, 0.0, np.ones(len(x_max), np.float32))
    for alpha in ALPHAS:
        s = smoothing_scale(x_max, w_max, alpha) if alpha else np.ones(len(x_max), np.float32)
        xq = _fake_quant_rows(x / s)
        error = 0.0
        for w, ref in zip(weights, reference):
            error += float(np.sum((xq @ _fake_quant_columns(w * s[:, None]) - ref).astype(np.float64) ** 2))
        if error < best[0]:
            best = (error, alpha, s)
    return best[1], best[2]


def _fake_quant_rows(x: np.ndarray) -> np.ndarray:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    return ((np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


def _fake_quant_columns(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return (np.round(w / scale) * scale).astype(np.float32)


def _spread(channel_max: np.ndarray) -> float:
    """Largest channel max over the median channel max: how much one scale wastes."""
    median = float(np.median(channel_max))
    return float(np.max(channel_max)) / median if median > 0 else float("inf")


def _unsupported(node: gs.Node) -> str | None:
    """None when ``node`` can be smoothed; "" when it has no constant weight; else why not."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return ""
    if isinstance(node.inputs[0], gs.Constant):
        return "constant input"
    w = np.asarray(node.inputs[1].values)
    if w.dtype.kind != "f":
        return f"{w.dtype} weight"
    if w.ndim != 2:
        return f"weight of rank {w.ndim} (a batched MatMul)"
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return "Gemm with transA"
    return None


def _input_rows(node: gs.Node) -> np.ndarray:
    """The weight as [input channels, outputs]."""
    w = np.asarray(node.inputs[1].values)
    return w.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w


def _scale_input_rows(model: Model, node: gs.Node, s: np.ndarray) -> None:
    w = np.asarray(node.inputs[1].values)
    scaled = w * s[None, :] if node.op == "Gemm" and node.attrs.get("transB", 0) else w * s[:, None]
    # a new initializer: the old one may be shared, or mapped read-only from external data
    node.inputs[1] = add_initializer(model, f"{node.inputs[1].name}_smooth", scaled.astype(w.dtype))


"""`adaround`: learn whether each quantized weight rounds up or down (Nagel et al. 2020,
"Up or Down? Adaptive Rounding for Post-Training Quantization").

Round-to-nearest minimizes each weight's own error, not the layer's output error: for a layer
``y = W x`` the rounding choices interact through the input's correlations. AdaRound keeps every
weight's integer at ``floor(w / s)`` or one above and learns the choice per weight, layer by
layer, on calibration data:

    min_V  ‖W x − W̃(V) x̃‖² + λ Σ (1 − |2 h(V) − 1|^β),   W̃ = s · (floor(W / s) + h(V) − z)

with the rectified sigmoid ``h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1)`` (ζ = 1.1, γ = −0.1), ``V``
started where ``h`` equals the fractional part (round-to-nearest's neighbourhood), and the
regularizer, annealed from ``β = beta_start`` to ``beta_end`` after a warm-up without it, that
pushes every ``h`` to 0 or 1. ``x̃`` is the layer's input in the quantized model; the target is
the layer's float weight on that same input, ``W x̃`` (the paper's objective: rounding alone), or
with ``target=model`` the float model's output ``W x``, which also asks the layer to undo the
errors of the layers before it — on all-MiniLM (8-bit MatMuls, 150 sentences) that lowered each
layer's own error but moved the embeddings further (mean cosine 0.9914 → 0.9797), while
``target=layer`` raised neighbour agreement 0.833 → 0.887 (cosine 0.9925). The scales, zero
points and the integer range stay as calibrated.

Each layer becomes a matrix product on sampled rows: a MatMul/Gemm's tokens, a 2-D Conv's
output positions with their input patches (``torch.nn.functional.unfold``; grouped and
depthwise convs as one product per group), so one step costs a small GEMM whatever the image
size. The product reuses the training executor's torch (the ``train`` extra).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import DataSource, Model, check_finite, evaluate
from ...ir.edit import add_initializer, producer
from ...ir.errors import CalibrationError, PassError
from ..base import Pass, PassContext, PassResult
from ..progress import progress_bar
from ..registry import register_pass
from .qdq import qparams, strip_qdq
from .qmath import qrange

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)


@dataclass
class _Layer:
    """One quantized layer as ``out[r, g, :] = x[r, g, :] @ w[g].T`` (+ bias), with its grid."""

    node: gs.Node
    w: np.ndarray  # float weight [groups, out/groups, D]
    scale: np.ndarray  # [groups, out/groups, 1]
    zero: np.ndarray  # same shape
    low: int  # integer range kept (round-to-nearest's own, within the type's)
    high: int
    bias: np.ndarray | None  # [out]
    write_back: object  # callable(integers in the [groups, out/groups, D] layout) -> None


@register_pass("adaround")
class AdaRound(Pass):
    """Learn the rounding of quantized weights layer by layer on calibration data (AdaRound).

    Runs on a fake-quantized model (after ``insert-qdq`` and ``calibrate``, before or after
    ``fold-qdq``): for every Conv (2-D), MatMul or Gemm whose constant weight reaches it through
    QuantizeLinear→DequantizeLinear (or a DequantizeLinear of integers), in graph order, it reads
    the layer's input from the quantized model on ``samples`` samples (``sequential=true``: with
    the layers before it already rounded, one model run per layer), keeps ``rows`` sampled rows
    (tokens, or conv output positions), and fits the rounded layer to its float weight on the same
    input (``target=layer``) or to the float model's output (``target=model``) for ``iterations``
    Adam steps (``lr``) of ``batch_rows`` rows with regularizer weight ``reg_weight`` and β
    annealed from ``beta_start`` to ``beta_end`` after ``warmup`` of the steps. The weight is
    rewritten on the same integer grid (same scales and zero points). A quarter of the rows is
    held out: a layer keeps round-to-nearest when the learned rounding does no better there.
    Reports every layer's relative output error (held-out rows) before and after. ``threads``:
    torch and onnxruntime threads. Needs: data, torch (the ``train`` extra). Not
    semantics-preserving (it changes the quantized weights, towards the float model's outputs).
    """

    needs_data = True
    iterations: int = 1000
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    lr: float = 0.01
    rows: int = 4096
    batch_rows: int = 256
    samples: int | None = 32
    threads: int = 1
    sequential: bool = False
    target: Literal["layer", "model"] = "layer"
    batch: int | None = None
    ops: list[str] = ["Conv", "MatMul", "Gemm"]
    exclude: list[str] | None = None

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        try:
            from ..train.trainer import torch_threads
        except ImportError as exc:
            raise PassError("adaround needs torch", where="pass 'adaround'",
                            hint="pip install 'presso[train]'") from exc
        self._check_options()
        if not model.nodes("DequantizeLinear"):
            raise PassError("the model has no Q/DQ pairs", where="pass 'adaround'",
                            hint="run insert-qdq and calibrate first")
        if ctx.data is None:
            raise PassError("adaround needs calibration data", where="pass 'adaround'",
                            hint="give sample inputs with --data FILE.npz (or data= in Python)")
        layers, skipped = self._layers(model)
        if not layers:
            return PassResult(changed=False, stats={"layers": 0, "skipped": len(skipped)}, log=skipped)
        float_model = model.copy()
        strip_qdq(float_model)
        feeds = _feeds(model, ctx.data, self.samples, self.batch)
        rng = np.random.default_rng(ctx.seed)
        bar = progress_bar(ctx.progress, len(layers) * self.iterations, "adaround", unit="step")
        log: list[str] = []
        before: list[float] = []
        after: list[float] = []
        threads = self.threads or None
        targets = _targets(layers, float_model, feeds, self.rows, rng, threads)
        inputs = {} if self.sequential else _inputs(layers, model, feeds, {k: p for k, (_, p) in targets.items()},
                                                    threads)
        try:
            with torch_threads(self.threads):
                for layer in layers:
                    target, picks = targets.pop(id(layer))
                    # sequential: the input as the layers before it, already rounded, compute it
                    x = inputs.pop(id(layer)) if not self.sequential else \
                        _inputs([layer], model, feeds, {id(layer): picks}, threads)[id(layer)]
                    log.append(self._round_layer(model, layer, x, target, rng, bar, before, after))
        finally:
            if bar is not None:
                bar.close()
        kept_nearest = sum(1 for b, a in zip(before, after) if a == b)
        model.graph.cleanup(remove_unused_graph_inputs=False)
        model.invalidate()
        stats = {"layers": len(layers), "kept_nearest": kept_nearest, "skipped": len(skipped),
                 "mean_error_nearest": float(np.mean(before)), "mean_error_adaround": float(np.mean(after)),
                 "iterations": self.iterations}
        return PassResult(changed=len(layers) > kept_nearest, stats=stats, log=log + [f"skipped {s}" for s in skipped])

    def _round_layer(self, model: Model, layer: _Layer, x: np.ndarray, target: np.ndarray,
                     rng: np.random.Generator, bar, before: list[float], after: list[float]) -> str:
        integers, error_nearest, error_learned = self._optimize(layer, x, target, rng, bar)
        if error_learned >= error_nearest:  # the held-out rows prefer round-to-nearest: keep it
            error_learned = error_nearest
        else:
            layer.write_back(integers)
            model.invalidate()  # later layers read their inputs through the new weights
        before.append(error_nearest)
        after.append(error_learned)
        return f"{layer.node.name}: relative output error {error_nearest:.3e} → {error_learned:.3e}"

    def _check_options(self) -> None:
        problems = []
        if self.iterations < 1:
            problems.append("iterations must be ≥ 1")
        if not 0.0 <= self.warmup < 1.0:
            problems.append("warmup must lie in [0, 1)")
        if self.beta_start <= 0 or self.beta_end <= 0:
            problems.append("beta_start and beta_end must be positive")
        if self.rows < 8 or self.batch_rows < 1:
            problems.append("rows must be ≥ 8 and batch_rows ≥ 1")
        if self.reg_weight < 0 or self.lr <= 0:
            problems.append("reg_weight must be ≥ 0 and lr > 0")
        if problems:
            raise PassError("invalid adaround options: " + "; ".join(problems), where="pass 'adaround'",
                            hint=self.describe_options())

    def _layers(self, model: Model) -> tuple[list[_Layer], list[str]]:
        patterns = [re.compile(p) for p in self.exclude or []]
        layers, skipped = [], []
        for node in model.graph.nodes:
            if node.op not in self.ops or node.op not in ("Conv", "MatMul", "Gemm"):
                continue
            if any(p.fullmatch(node.name) for p in patterns):
                continue
            layer, reason = _layer(model, node)
            if layer is not None:
                layers.append(layer)
            elif reason:
                skipped.append(f"{node.name}: {reason}")
        return layers, skipped

    def _optimize(self, layer: _Layer, x: np.ndarray, target: np.ndarray, rng: np.random.Generator, bar
                  ) -> tuple[np.ndarray, float, float]:
        """(learned integers, held-out relative error of round-to-nearest, of the learned rounding)."""
        import torch

        held = max(len(x) // 4, 1)
        order = rng.permutation(len(x))
        train_idx, test_idx = order[held:], order[:held]
        xs = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))  # [groups, R, D]: one bmm per step
        w = torch.from_numpy(layer.w.astype(np.float32))
        scale = torch.from_numpy(layer.scale.astype(np.float32))
        zero = torch.from_numpy(layer.zero.astype(np.float32))
        bias = torch.from_numpy(layer.bias.astype(np.float32)) if layer.bias is not None else None
        if self.target == "layer":  # the float weight on the same (quantized) input: rounding alone
            with torch.no_grad():
                ys = torch.bmm(xs, w.transpose(1, 2)).transpose(0, 1).reshape(xs.shape[1], -1)
                ys = ys + bias if bias is not None else ys
        else:
            ys = torch.from_numpy(target)
        base = torch.floor(w / scale)
        rest = (w / scale - base).clamp(1e-4, 1 - 1e-4)
        # h(V) = rest at the start: σ(V) = (rest − γ) / (ζ − γ)
        v = torch.log((rest - GAMMA) / (ZETA - rest)).requires_grad_(True)
        low, high = float(layer.low), float(layer.high)

        def weights(h: torch.Tensor) -> torch.Tensor:
            return (torch.clamp(base + h + zero, low, high) - zero) * scale

        def predict(rows: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
            out = torch.bmm(rows, wq.transpose(1, 2)).transpose(0, 1).reshape(rows.shape[1], -1)
            return out + bias if bias is not None else out

        def relative_error(wq: torch.Tensor, idx: np.ndarray) -> float:
            with torch.no_grad():
                t = ys[idx]
                return float(((predict(xs[:, idx], wq) - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-30))

        nearest = weights(torch.round(w / scale) - base)
        error_nearest = relative_error(nearest, test_idx)
        optimizer = torch.optim.Adam([v], lr=self.lr)
        warm = int(self.warmup * self.iterations)
        for step in range(self.iterations):
            batch = torch.from_numpy(rng.choice(train_idx, size=min(self.batch_rows, len(train_idx)), replace=False))
            h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)
            diff = predict(xs[:, batch], weights(h)) - ys[batch]
            loss = (diff ** 2).sum(dim=1).mean()
            if step >= warm:
                progress = (step - warm) / max(self.iterations - warm, 1)
                beta = self.beta_end + 0.5 * (self.beta_start - self.beta_end) * (1 + math.cos(math.pi * progress))
                loss = loss + self.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if bar is not None:
                bar.update(1)
        with torch.no_grad():
            h = (v >= 0).float()  # h(V) ≥ 0.5 ⇔ V ≥ 0: round up
            learned = torch.clamp(base + h + zero, low, high)
        error_learned = relative_error((learned - zero) * scale, test_idx)
        return learned.numpy(), error_nearest, error_learned


def _feeds(model: Model, data, samples: int | None, batch: int | None) -> list[dict[str, np.ndarray]]:
    source = DataSource.open(data, model)
    feeds = []
    for index, feed in enumerate(source.feeds(batch=batch or source.model_batch or 8, limit=samples)):
        check_finite(feed, where=f"adaround batch {index}")
        feeds.append(feed)
    if not feeds:
        raise CalibrationError("the calibration data holds no samples", where="pass 'adaround'",
                               hint="give at least one sample")
    return feeds


def _layer(model: Model, node: gs.Node) -> tuple[_Layer | None, str]:
    """The layer's weight on its integer grid, or (None, why not; "" for no quantized weight)."""
    if len(node.inputs) < 2:
        return None, ""
    dq = producer(node.inputs[1])
    if dq is None or dq.op != "DequantizeLinear":
        return None, ""
    params = qparams(dq)
    if params is None:
        return None, "weight quantization parameters are not constant"
    scale = np.asarray(params.scale.values, np.float64)
    zero = np.asarray(params.zero_point.values, np.float64)
    source = dq.inputs[0]
    q = producer(source)
    if q is not None and q.op == "QuantizeLinear" and isinstance(q.inputs[0], gs.Constant):
        w = np.asarray(q.inputs[0].values, np.float64)
        holder, folded = q, False
    elif isinstance(source, gs.Constant) and q is None:
        w = (np.asarray(source.values, np.float64) - _expand(zero, source.values.ndim, params.axis)) * \
            _expand(scale, source.values.ndim, params.axis)
        holder, folded = source, True
    else:
        return None, ""
    if params.axis is not None and scale.ndim and scale.size > 1 and params.axis % w.ndim != _channel_axis(node, w):
        return None, f"weight quantized along axis {params.axis}, not its output channels"
    if dq.attrs.get("block_size"):
        return None, "blocked weight quantization"
    lo, hi = qrange(params.dtype)
    nearest = np.clip(np.round(w / _expand(scale, w.ndim, params.axis)) + _expand(zero, w.ndim, params.axis), lo, hi)
    groups = 1
    if node.op == "Conv":
        if w.ndim != 4:
            return None, f"{w.ndim - 2}-D conv (adaround handles 2-D convs)"
        groups = int(node.attrs.get("group", 1))
        matrix = w.reshape(w.shape[0], -1)  # [O, C/g·kh·kw]: unfold's patch order
    elif node.op == "MatMul":
        if w.ndim != 2:
            return None, "batched MatMul weight"
        matrix = w.T
    else:
        if node.attrs.get("transA", 0):
            return None, "Gemm with transA"
        matrix = w if node.attrs.get("transB", 0) else w.T
        if float(node.attrs.get("alpha", 1.0)) != 1.0:
            return None, "Gemm with alpha ≠ 1"
    out = matrix.shape[0]
    scale_rows = np.broadcast_to(scale.reshape(-1) if scale.size > 1 else scale.reshape(1), (out,))
    zero_rows = np.broadcast_to(zero.reshape(-1) if zero.size > 1 else zero.reshape(1), (out,))
    shape = (groups, out // groups, matrix.shape[1])
    layer_bias = _bias(node)
    if layer_bias is False:
        return None, "non-constant bias"

    def write_back(integers: np.ndarray) -> None:
        ints = integers.reshape(out, -1)
        if node.op == "Conv":
            ints = ints.reshape(w.shape)
        elif node.op == "MatMul" or not node.attrs.get("transB", 0):
            ints = ints.T
        storage = np.asarray(source.values).dtype if folded else np.asarray(params.zero_point.values).dtype
        if folded:
            holder_index = next(i for i, t in enumerate(dq.inputs) if t is holder)
            dq.inputs[holder_index] = add_initializer(model, f"{holder.name}_adaround", ints.astype(storage))
        else:
            values = (ints - _expand(zero, ints.ndim, params.axis)) * _expand(scale, ints.ndim, params.axis)
            dtype = np.asarray(holder.inputs[0].values).dtype
            holder.inputs[0] = add_initializer(model, f"{holder.inputs[0].name}_adaround", values.astype(dtype))

    layer = _Layer(node, matrix.reshape(shape), scale_rows.reshape(groups, -1, 1).copy(),
                   zero_rows.reshape(groups, -1, 1).copy(), int(nearest.min()), int(nearest.max()),
                   layer_bias, write_back)
    return layer, ""


def _channel_axis(node: gs.Node, w: np.ndarray) -> int:
    if node.op == "Conv":
        return 0
    if node.op == "MatMul":
        return w.ndim - 1
    return 0 if node.attrs.get("transB", 0) else 1


def _expand(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.size <= 1 or axis is None:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return values.reshape(shape)


def _bias(node: gs.Node) -> np.ndarray | None | bool:
    """The layer's bias as floats (None without one; False when it cannot be read)."""
    if node.op == "MatMul" or len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    bias = node.inputs[2]
    if isinstance(bias, gs.Constant):
        values = np.asarray(bias.values, np.float64)
    else:
        dq = producer(bias)
        params = qparams(dq) if dq is not None and dq.op == "DequantizeLinear" else None
        if params is None or not isinstance(dq.inputs[0], gs.Constant):
            return False
        ints = np.asarray(dq.inputs[0].values, np.float64)
        values = (ints - _expand(params.zero_point.values, ints.ndim, params.axis)) * \
            _expand(params.scale.values, ints.ndim, params.axis)
    if node.op == "Gemm":
        values = values * float(node.attrs.get("beta", 1.0))
    return values.reshape(-1) if values.size > 1 else values.reshape(())


def _targets(layers: list[_Layer], float_model: Model, feeds: list[dict], limit: int,
             rng: np.random.Generator, threads: int | None) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
    """Per layer (by id): the float model's output rows [R, out] at ``limit`` rows sampled
    evenly over the feeds, and which rows of each feed were taken. One pass over the feeds."""
    names = list(dict.fromkeys(layer.node.outputs[0].name for layer in layers))
    per_feed = max(limit // len(feeds), 1)
    rows: dict[int, list[np.ndarray]] = {id(layer): [] for layer in layers}
    picks: dict[int, list[np.ndarray]] = {id(layer): [] for layer in layers}
    for feed in feeds:
        values = evaluate(float_model, feed, outputs=names, threads=threads)
        for layer in layers:
            y = np.asarray(values[layer.node.outputs[0].name], np.float32)
            if layer.node.op == "Conv":
                y = y.reshape(y.shape[0], y.shape[1], -1).transpose(0, 2, 1).reshape(-1, y.shape[1])
                valid = np.arange(len(y))
            else:
                valid = _valid_indices(y, feed)
                y = y.reshape(-1, y.shape[-1])
            pick = np.sort(rng.choice(valid, size=per_feed, replace=False)) if len(valid) > per_feed else valid
            rows[id(layer)].append(y[pick])
            picks[id(layer)].append(pick)
    result = {}
    for layer in layers:
        target = np.concatenate(rows[id(layer)])
        if len(target) < 8:
            raise CalibrationError(f"the calibration data gives only {len(target)} rows for layer '{layer.node.name}'",
                                   where=f"node '{layer.node.name}'", hint="give more samples")
        result[id(layer)] = (target, picks[id(layer)])
    return result


def _inputs(layers: list[_Layer], model: Model, feeds: list[dict], picks: dict[int, list[np.ndarray]],
            threads: int | None) -> dict[int, np.ndarray]:
    """Per layer (by id): its input rows [R, groups, D] in ``model`` at the rows ``picks`` names."""
    names = list(dict.fromkeys(layer.node.inputs[0].name for layer in layers))
    rows: dict[int, list[np.ndarray]] = {id(layer): [] for layer in layers}
    for index, feed in enumerate(feeds):
        values = evaluate(model, feed, outputs=names, threads=threads)
        for layer in layers:
            x = np.asarray(values[layer.node.inputs[0].name], np.float32)
            pick = picks[id(layer)][index]
            if layer.node.op == "Conv":
                rows[id(layer)].append(_conv_rows(layer.node, x, layer.w.shape[0])[pick])
            else:
                rows[id(layer)].append(x.reshape(-1, 1, x.shape[-1])[pick])
    return {key: np.concatenate(value) for key, value in rows.items()}


def _valid_indices(value: np.ndarray, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """Indices of the rows of ``value`` ([..., K] as rows) that a padding mask in ``feed`` keeps."""
    lead = value.shape[:-1]
    for name, array in feed.items():
        array = np.asarray(array)
        if "mask" in name.lower() and array.dtype.kind in "iub" and array.shape == lead:
            return np.flatnonzero(array.reshape(-1) != 0)
    return np.arange(int(np.prod(lead)))


def _conv_rows(node: gs.Node, x: np.ndarray, groups: int) -> np.ndarray:
    """A 2-D conv's input patches, one row per output position: [N·L, groups, C/groups·kh·kw]."""
    import torch
    import torch.nn.functional as F

    from ..train.ops import _auto_pads, _torch_pad

    kernel = list(node.attrs.get("kernel_shape") or _weight_shape(node)[2:])
    strides = list(node.attrs.get("strides", [1, 1]))
    dilations = list(node.attrs.get("dilations", [1, 1]))
    inp = torch.from_numpy(x)
    pads = _auto_pads(node, list(inp.shape[2:]), kernel, strides, dilations)
    patches = F.unfold(F.pad(inp, _torch_pad(pads)), kernel_size=kernel, dilation=dilations, stride=strides)
    n, d, length = patches.shape  # [N, C·kh·kw, L]
    return patches.permute(0, 2, 1).reshape(n * length, groups, d // groups).numpy()


def _weight_shape(node: gs.Node) -> tuple[int, ...]:
    dq = producer(node.inputs[1])
    source = dq.inputs[0]
    q = producer(source)
    return np.asarray((q.inputs[0] if q is not None else source).values).shape

"""`calibrate`: set the scales and zero points of every Q/DQ pair from data and weights.

Step 2 of the quantization flow. Lossy (it sets how the model rounds).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import DataSource, Model, QuantSpec, check_finite, evaluate
from ...ir.edit import add_initializer, add_node, producer, set_constant
from ...ir.errors import CalibrationError, PassError
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from .observers import RangeObserver
from .qdq import constant_quantizers, qdq_attrs, qparams, strip_qdq
from .qdq import small_list as _small
from .qmath import channel_range, compute_qparams, dequantize, quantize

Method = Literal["minmax", "percentile", "entropy", "mse"]


@register_pass("calibrate")
class Calibrate(Pass):
    """Compute scales and zero points for the Q/DQ pairs that ``insert-qdq`` placed.

    Activations: ONE streaming pass over the data (``samples`` samples, ``batch`` per run)
    through ``ir.evaluate`` on the float version of the model, requesting every observed tensor
    at once; per tensor (or per group of tensors sharing a scale) a running min/max and, for
    ``percentile``/``entropy``/``mse``, a fixed-size histogram — memory grows with the number of
    tensors, never with the number of samples. Tensors that feed a max-type reduction (MaxPool,
    GlobalMaxPool, ReduceMax, ArgMax, TopK) always use min/max: clipping them would clip the
    very values those ops select. Weights (and constant operands) get their scales
    from their values (per channel where the Q/DQ has an axis); Conv/Gemm biases marked int32 are
    stored as int32 with scale = input_scale × weight_scale. Errors (CalibrationError) for empty
    data, wrong input names/shapes/dtypes, and NaN/Inf in inputs or observed tensors. A tensor
    whose range is zero never gets a zero scale; ``on_constant=error`` makes it an error instead
    of a warning. Needs: data. Not semantics-preserving.
    """

    needs_data = True
    method: Method = "minmax"
    percentile: float = 99.99
    samples: int | None = None
    batch: int | None = None
    on_constant: Literal["warn", "error"] = "warn"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if not 0 < self.percentile <= 100:
            raise PassError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.samples is not None and self.samples < 1:
            raise PassError(f"samples must be ≥ 1, got {self.samples}")
        if model.nodes("QuantizeLinear") == [] and model.nodes("DequantizeLinear") == []:
            raise PassError("the model has no Q/DQ pairs to calibrate", hint="run insert-qdq first")
        log: list[str] = []
        weights = _calibrate_constants(model)
        groups = _activation_groups(model)
        seen = self._observe(model, ctx, groups) if groups else 0
        constant = []
        extremal = _feeds_max_reduction(model)
        for key, group in groups.items():
            spec = _spec_for(model, group["tensors"], group["dtype"])
            # Clipping a tensor whose maximum is the signal (max pooling) destroys that signal.
            method = "minmax" if any(t in extremal for t in group["tensors"]) else self.method
            lo, hi = group["observer"].compute_range(method, spec.dtype, spec.symmetric, self.percentile)
            if group["observer"].min == group["observer"].max:
                constant.append(group["tensors"][0])
            scale, zero = compute_qparams(lo, hi, spec.dtype, spec.symmetric, scale_dtype=group["scale"].values.dtype)
            set_constant(group["scale"], scale)
            set_constant(group["zero"], zero)
            for name in group["tensors"]:
                model.annotations.quant[name] = QuantSpec(spec.dtype, spec.symmetric, None, [float(scale)],
                                                          [int(zero)], self.method)
        if constant:
            message = (f"{len(constant)} observed tensor(s) held a single value on all {seen} samples "
                       f"(e.g. '{constant[0]}'); they got a unit range instead of a zero scale")
            if self.on_constant == "error":
                raise CalibrationError(message, where=f"tensor '{constant[0]}'",
                                       hint="give more varied data, or exclude the tensor (insert-qdq{exclude=...})")
            log.append(message)
        biases = _quantize_biases(model, log)
        model.invalidate()
        return PassResult(changed=True, log=log, stats={
            "method": self.method, "samples": seen, "activation_groups": len(groups),
            "weights": weights, "biases": biases, "constant_tensors": len(constant)})

    def _observe(self, model: Model, ctx: PassContext, groups: dict) -> int:
        source = DataSource.open(ctx.data, model)
        float_model = model.copy()
        # Tensor objects survive strip_qdq; graph outputs may be renamed, so map names by object.
        tracked = {}
        for q in float_model.nodes("QuantizeLinear"):
            if not isinstance(q.inputs[0], gs.Constant):
                tracked.setdefault(q.inputs[0].name, q.inputs[0])
        strip_qdq(float_model)
        names = {old: t.name for old, t in tracked.items()}
        wanted = sorted({names[n] for g in groups.values() for n in g["tensors"] if n in names})
        needs_hist = self.method != "minmax"
        for group in groups.values():
            group["observer"] = RangeObserver(histogram=needs_hist)
        by_tensor = {names[n]: g["observer"] for g in groups.values() for n in g["tensors"] if n in names}
        batch = self.batch or _default_batch(model)
        total = None if self.samples is None else self.samples
        seen = 0
        bar = _progress(ctx.progress, total)
        try:
            for index, feed in enumerate(source.feeds(batch=batch, limit=self.samples)):
                check_finite(feed, where=f"calibration batch {index}")
                values = evaluate(float_model, feed, outputs=wanted)
                for name, value in values.items():
                    value = np.asarray(value)
                    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                        raise CalibrationError(f"tensor '{name}' holds NaN/Inf on calibration batch {index}",
                                               where=f"tensor '{name}'",
                                               hint="check the input data's range; the float model overflows on it")
                    by_tensor[name].update(value)
                n = len(next(iter(feed.values())))
                seen += n
                if bar is not None:
                    bar.update(n)
        finally:
            if bar is not None:
                bar.close()
        if seen == 0:
            raise CalibrationError("the calibration data holds no samples", hint="give at least one sample")
        return seen


_MAX_REDUCTIONS = ("MaxPool", "GlobalMaxPool", "ReduceMax", "ArgMax", "TopK")


def _feeds_max_reduction(model: Model) -> set[str]:
    """Names of Q inputs whose values reach a max-type reduction (through their Q→DQ)."""
    names = set()
    for node in model.nodes(*_MAX_REDUCTIONS):
        x = node.inputs[0]
        dq = producer(x)
        q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        if q is not None and q.op == "QuantizeLinear":
            names.add(q.inputs[0].name)
        names.add(x.name)
    return names


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc="calibrate", unit="sample", leave=False)


def _default_batch(model: Model) -> int:
    """Batch 16 when every input's leading axis is dynamic, else 1."""
    for t in model.graph.inputs:
        if not t.shape or (isinstance(t.shape[0], int) and t.shape[0] > 0):
            return 1
    return 16


def _spec_for(model: Model, tensors: list[str], dtype: str) -> QuantSpec:
    for name in tensors:
        spec = model.annotations.quant.get(name)
        if spec is not None and spec.dtype == dtype:
            return spec
    return QuantSpec(dtype, False, None)


def _activation_groups(model: Model) -> dict[str, dict]:
    """Q nodes on non-constant tensors, grouped by the scale constant they share."""
    groups: dict[str, dict] = {}
    for q in model.nodes("QuantizeLinear"):
        params = qparams(q)
        if params is None or isinstance(q.inputs[0], gs.Constant):
            continue
        if params.scale.values.size != 1:
            raise PassError("per-channel activation quantization cannot be calibrated", where=f"node '{q.name}'",
                            hint="use per-tensor activations")
        group = groups.setdefault(params.scale.name, {"scale": params.scale, "zero": params.zero_point,
                                                      "dtype": params.dtype, "tensors": []})
        if q.inputs[0].name not in group["tensors"]:
            group["tensors"].append(q.inputs[0].name)
    return groups


def _calibrate_constants(model: Model) -> int:
    """Weights and constant operands: scales from their own values (per channel if axis)."""
    done = 0
    for q, params in constant_quantizers(model):
        x = q.inputs[0]
        spec = model.annotations.quant.get(x.name)
        symmetric = spec.symmetric if spec is not None else bool(not np.any(params.zero_point.values))
        narrow = spec.reduce_range if spec is not None else False
        values = np.asarray(x.values)
        lo, hi = channel_range(values, params.axis)
        scale, zero = compute_qparams(lo, hi, params.dtype, symmetric, scale_dtype=params.scale.values.dtype,
                                      reduce_range=narrow)
        set_constant(params.scale, scale.reshape(np.shape(params.scale.values)))
        set_constant(params.zero_point, zero.reshape(np.shape(params.zero_point.values)))
        model.annotations.quant[x.name] = QuantSpec(params.dtype, symmetric, params.axis, _small(scale),
                                                    _small(zero), "minmax", narrow)
        done += 1
    return done


def _dq_scale(tensor: gs.Tensor) -> np.ndarray | None:
    dq = producer(tensor)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    params = qparams(dq)
    return None if params is None else np.asarray(params.scale.values)


def _quantize_biases(model: Model, log: list[str]) -> int:
    """Store marked Conv/ConvTranspose/Gemm biases as int32 with scale = s_input × s_weight."""
    done = 0
    for node in model.nodes("Conv", "ConvTranspose", "Gemm"):
        if len(node.inputs) < 3 or not node.inputs[2].name:
            continue
        bias = node.inputs[2]
        dq = producer(bias)
        if isinstance(bias, gs.Constant):
            key, values = bias.name, np.asarray(bias.values)
        elif dq is not None and dq.op == "DequantizeLinear" and isinstance(dq.inputs[0], gs.Constant) and qparams(dq):
            params = qparams(dq)  # already int32 (re-calibration): recover the float bias
            key = dq.inputs[0].name
            values = dequantize(dq.inputs[0].values, params.scale.values, params.zero_point.values, params.axis)
        else:
            continue
        spec = model.annotations.quant.get(key)
        if spec is None or spec.dtype != "int32":
            continue
        s_in, s_w = _dq_scale(node.inputs[0]), _dq_scale(node.inputs[1])
        if s_in is None or s_w is None:
            continue
        scale = (s_in.astype(np.float64).reshape(()) * s_w.astype(np.float64).ravel()).astype(values.dtype)
        if scale.size == 1:
            scale = scale.reshape(())
        elif scale.size != values.size:
            continue
        q = quantize(values, scale, np.zeros(scale.shape, np.int32), "int32", 0 if scale.ndim else None)
        saturated = int(np.sum(np.abs(q.astype(np.int64)) >= 2**31 - 1))
        if saturated:
            log.append(f"bias '{key}' of '{node.name}': {saturated} value(s) saturated int32")
        name = f"{node.name}_bias_int32"
        q_const = add_initializer(model, name, q)
        s_const = add_initializer(model, f"{name}_scale", scale)
        z_const = add_initializer(model, f"{name}_zero_point", np.zeros(scale.shape, np.int32))
        new_dq = add_node(model, "DequantizeLinear", [q_const, s_const, z_const], name=f"{name}_dq",
                          attrs=qdq_attrs(0 if scale.ndim else None))
        node.inputs[2] = new_dq.outputs[0]
        model.annotations.quant.pop(key, None)
        model.annotations.quant[q_const.name] = QuantSpec("int32", True, 0 if scale.ndim else None,
                                                          _small(scale), _small(np.zeros(scale.shape, np.int64)), "input×weight")
        done += 1
    model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return done

"""`quantize-dynamic`: int8 weights, activations quantized at run time (no calibration data).

Lossy. Builds onnxruntime's dynamic pattern — ``DynamicQuantizeLinear`` → ``MatMulInteger`` →
Cast → Mul(scales) (→ Add(bias) for Gemm) — which onnxruntime fuses into its
``DynamicQuantizeMatMul`` kernel at load time.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, add_node, replace_all_uses
from ...ir.external import release
from ..base import Pass, PassContext, PassResult
from ..cleanup.constants_to_initializers import ConstantsToInitializers
from ..registry import register_pass
from .qmath import channel_range, compute_qparams, quantize


@register_pass("quantize-dynamic")
class QuantizeDynamic(Pass):
    """Quantize the constant weights of MatMul and Gemm to int8 (symmetric; per output column
    with ``per_channel=true``) and their input activations to uint8 at run time.

    For MatMul/Gemm-heavy models (transformers, MLPs, magika's dense layers). ``ops`` picks the
    op types (MatMul, Gemm), ``exclude`` node names or regexes kept in float, ``min_size`` skips
    small weights. ``reduce_range=true`` (default) keeps weights in 7 bits: onnxruntime's u8·s8
    MatMulInteger overflows its 16-bit pair sums on CPUs without AVX-VNNI (wrong outputs seen on
    this AVX2 machine); set it false on VNNI/ARM CPUs for one more bit. Gemm needs transA=0. Constant weights are first turned into
    initializers. Needs nothing else (no data).
    """

    per_channel: bool = True
    reduce_range: bool = True
    ops: list[str] | None = None
    exclude: list[str] | None = None
    min_size: int = 0

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        ConstantsToInitializers().run(model, ctx)
        if model.opset < 11:
            from ..cleanup.upgrade_opset import UpgradeOpset

            UpgradeOpset(version=13).run(model, ctx)
        wanted = set(self.ops or ["MatMul", "Gemm"])
        patterns = [re.compile(p) for p in self.exclude or []]
        done = 0
        for node in model.nodes(*wanted):
            if any(p.fullmatch(node.name) for p in patterns) or not self._eligible(node):
                continue
            self._lower(model, node)
            done += 1
        return PassResult(changed=bool(done), stats={"quantized": done})

    def _eligible(self, node: gs.Node) -> bool:
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(w, gs.Constant) or w.values.dtype != np.float32 or w.values.ndim != 2:
            return False
        if w.values.size < max(self.min_size, 1):
            return False
        if node.op == "Gemm":
            if node.attrs.get("transA", 0):
                return False
            if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
                return False
        return True

    def _lower(self, model: Model, node: gs.Node) -> None:
        x, w = node.inputs[0], np.asarray(node.inputs[1].values, dtype=np.float64)
        release(node.inputs[1].values)  # a mapped weight is read once; its pages can go
        bias = None
        if node.op == "Gemm":
            if node.attrs.get("transB", 0):
                w = w.T
            w = w * float(node.attrs.get("alpha", 1.0))
            if len(node.inputs) > 2 and node.inputs[2].name:
                bias = np.asarray(node.inputs[2].values, dtype=np.float64) * float(node.attrs.get("beta", 1.0))
        w = w.astype(np.float32)
        axis = 1 if self.per_channel else None
        lo, hi = channel_range(w, axis)
        scale, zero = compute_qparams(lo, hi, "int8", True, reduce_range=self.reduce_range)
        q = quantize(w, scale, zero, "int8", axis)
        base = node.name or node.outputs[0].name
        dyn = add_node(model, "DynamicQuantizeLinear", [x], name=f"{base}_dynamic_quant", num_outputs=3)
        x_q, x_scale, x_zero = dyn.outputs
        x_q.dtype, x_scale.dtype, x_zero.dtype = np.uint8, np.float32, np.uint8
        w_q = add_initializer(model, f"{node.inputs[1].name}_int8", q)
        w_zero = add_initializer(model, f"{node.inputs[1].name}_int8_zero_point", zero)
        mm = add_node(model, "MatMulInteger", [x_q, w_q, x_zero, w_zero], name=f"{base}_matmul_integer", dtype=np.int32)
        cast = add_node(model, "Cast", mm.outputs, name=f"{base}_cast", attrs={"to": 1}, dtype=np.float32)
        combined = add_node(model, "Mul", [x_scale, add_initializer(model, f"{base}_weight_scale", scale)],
                            name=f"{base}_scales", dtype=np.float32)
        out = add_node(model, "Mul", [cast.outputs[0], combined.outputs[0]], name=f"{base}_rescale", dtype=np.float32)
        if bias is not None:
            b = add_initializer(model, f"{base}_bias", bias.astype(np.float32))
            out = add_node(model, "Add", [out.outputs[0], b], name=f"{base}_bias", dtype=np.float32)
        replace_all_uses(model, node.outputs[0], out.outputs[0])
        node.outputs.clear()

"""`quantize-weights`: weight-only block quantization of MatMul weights to com.microsoft MatMulNBits.

Lossy (weights are rounded); activations stay float.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, add_node, replace_all_uses
from ...ir.external import release
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from .weight_only_ops import add_gemm_bias, gemm_as_matmul_weight, quantize_gather

MS_DOMAIN = "com.microsoft"


@register_pass("quantize-weights")
class QuantizeWeights(Pass):
    """Quantize the constant 2-D weight of every MatMul (and Gemm) to ``bits``-bit blocks of
    ``block`` values along K, and replace the node by onnxruntime's ``com.microsoft.MatMulNBits``;
    with ``bits=4``, embedding tables read by Gather become ``GatherBlockQuantized`` (see
    :mod:`.weight_only_ops`). ``ops`` chooses among MatMul, Gemm and Gather.

    Packing and rounding use onnxruntime's own kernels (``quantize_matmul_4bits``/``8bits``), so
    the stored blocks are exactly what its quantizer writes. ``symmetric=true`` (default) stores
    no zero points: with block 32 the weights take ≈ 0.156× their float32 bytes (0.16× with zero
    points is only reached from block 64 up). ``min_size`` skips small matrices, ``exclude``
    keeps named nodes (or regexes) in float, ``accuracy_level`` (0–4) lets the kernel compute in
    int8 (4) instead of float. Needs: MatMuls with a constant [K, N] weight.

    ``algorithm`` picks how MatMul weights are rounded (the packing is the same): ``rtn``
    round-to-nearest; ``gptq`` (Frantar et al. 2022) rounds input channel by channel and
    compensates each error with the inverse Hessian of the layer's calibration inputs,
    sequentially layer by layer (``act_order`` rounds large-activation channels first);
    ``awq`` (Lin et al. 2023) scales salient input channels up before rounding and divides
    the activation by the same per-channel scale (folded into a LayerNormalization or MatMul
    when exact, else a ``Mul``); ``awq+gptq`` scales as AWQ, then rounds as GPTQ. With
    ``clip`` (default) each block's grid is also chosen on the calibration inputs (clipping
    outlier weights). They read ``samples`` samples from ``--data`` (see
    :mod:`.weight_algorithms`); Gemm and Gather weights stay round-to-nearest.
    """

    bits: Literal[4, 8] = 4
    block: Literal[16, 32, 64, 128, 256] = 32
    symmetric: bool = True
    min_size: int = 0
    exclude: list[str] | None = None
    accuracy_level: int = 0
    ops: list[str] = ["MatMul", "Gemm", "Gather"]
    algorithm: Literal["rtn", "gptq", "awq", "awq+gptq"] = "rtn"
    act_order: bool = True
    clip: bool = True
    samples: int = 128

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        import re

        from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

        kernel = quantize_matmul_4bits if self.bits == 4 else quantize_matmul_8bits
        patterns = [re.compile(p) for p in self.exclude or []]
        prepared, extra = self._data_aware(model, ctx, patterns) if "MatMul" in self.ops else ({}, {})
        done, gathers, float_bytes, packed_bytes = 0, 0, 0, 0
        for node in model.nodes(*({"MatMul", "Gemm"} & set(self.ops))):
            w = node.inputs[1]
            if not isinstance(w, gs.Constant) or any(p.fullmatch(node.name) for p in patterns):
                continue
            values = np.asarray(w.values) if node.op == "MatMul" else gemm_as_matmul_weight(node)
            if values is None:
                continue
            if values.ndim != 2 or values.dtype != np.float32 or values.size < max(self.min_size, 1):
                continue
            k, n = values.shape
            blocks = (k + self.block - 1) // self.block
            padded = np.pad(values, ((0, blocks * self.block - k), (0, 0))) if blocks * self.block != k else values
            blob = self.block * self.bits // 8
            packed = np.zeros((n, blocks, blob), dtype=np.uint8)
            scales = np.zeros((n, blocks), dtype=np.float32)
            zeros = np.zeros((n, (blocks * self.bits + 7) // 8), dtype=np.uint8)
            if node.name in prepared:  # rounded by a data-aware algorithm, packed the same way
                chosen = prepared[node.name]
                packed, scales, zeros = chosen.packed, chosen.scales, chosen.zeros
            else:
                kernel(packed, np.ascontiguousarray(padded), scales, zeros, self.block, n, k, self.symmetric)
            inputs = [node.inputs[0], add_initializer(model, f"{w.name}_nbits", packed),
                      add_initializer(model, f"{w.name}_nbits_scales", scales.reshape(-1))]
            if not self.symmetric:
                inputs.append(add_initializer(model, f"{w.name}_nbits_zero_points", zeros.reshape(-1)))
            attrs = {"K": k, "N": n, "bits": self.bits, "block_size": self.block, "accuracy_level": self.accuracy_level}
            new = add_node(model, "MatMulNBits", inputs, name=f"{node.name}_nbits", attrs=attrs, domain=MS_DOMAIN,
                           dtype=node.outputs[0].dtype, shape=node.outputs[0].shape)
            if node.op == "Gemm":
                add_gemm_bias(model, node, new)
            else:
                replace_all_uses(model, node.outputs[0], new.outputs[0])
                node.outputs.clear()
            release(values)  # a weight mapped from external data leaves memory once it is packed
            float_bytes += values.nbytes
            packed_bytes += sum(np.asarray(t.values).nbytes for t in inputs[1:])
            done += 1
        if self.bits == 4 and "Gather" in self.ops:
            for node in model.nodes("Gather"):
                if any(p.fullmatch(node.name) for p in patterns):
                    continue
                sizes = quantize_gather(model, node, self.block)
                if sizes:
                    float_bytes, packed_bytes, gathers = float_bytes + sizes[0], packed_bytes + sizes[1], gathers + 1
        if done or gathers:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        ratio = packed_bytes / float_bytes if float_bytes else 1.0
        return PassResult(changed=bool(done or gathers),
                          stats={"matmuls": done, "gathers": gathers, "weight_bytes_ratio": round(ratio, 4), **extra})

    def _data_aware(self, model: Model, ctx: PassContext, patterns: list) -> tuple[dict, dict]:
        """GPTQ: {MatMul name: packed blocks}; AWQ: rescales the model in place. Plus statistics."""
        if self.algorithm == "rtn":
            return {}, {}
        from . import layer_inputs, weight_algorithms

        weight_algorithms.require_data(ctx, self.algorithm)
        matmuls = [n for n in model.nodes("MatMul") if self._eligible_matmul(n, patterns)]
        feeds = layer_inputs.calibration_feeds(model, ctx.data, samples=self.samples, batch=16)
        options = {"bits": self.bits, "block": self.block, "symmetric": self.symmetric, "clip": self.clip}
        awq_stats = {}
        if "awq" in self.algorithm:  # before GPTQ: its clipping would hide outliers GPTQ's grid choice weighs
            awq_stats = weight_algorithms.run_awq(model, matmuls, feeds, **{**options, "clip": self.clip and
                                                                             self.algorithm == "awq"})
        if "gptq" not in self.algorithm:
            return {}, awq_stats
        blocks, gptq_stats = weight_algorithms.run_gptq(model, matmuls, feeds, act_order=self.act_order, **options)
        return blocks, {**awq_stats, **gptq_stats}

    def _eligible_matmul(self, node: gs.Node, patterns: list) -> bool:
        """The MatMuls the loop in :meth:`run` quantizes (same conditions)."""
        w = node.inputs[1]
        if not isinstance(w, gs.Constant) or any(p.fullmatch(node.name) for p in patterns):
            return False
        values = np.asarray(w.values)
        return values.ndim == 2 and values.dtype == np.float32 and values.size >= max(self.min_size, 1)

"""Integer arithmetic for quantized Conv/MatMul in a Relax module (``--int8 arith``).

TVM's ONNX frontend imports a QDQ model literally: every DequantizeLinear becomes a
``relax.dequantize`` and the Conv/MatMul after it runs in float32 on the dequantized values.
:func:`rewrite` turns each

    conv2d | matmul( dequantize(x_q, s_x, z_x), [permute_dims] dequantize(W_q, s_w, 0) )

whose weight is a constant 8-bit tensor with zero zero-points (per-tensor or per output
channel) and whose activation is an 8-bit tensor with one scale and zero point, into

    float32( conv2d | matmul(x_q', W_q, out_dtype=int32) - z_x·Σ W_q[c] ) · (s_x·s_w[c])

- the operands stay uint8/int8 and the accumulation is int32 (exact: no float rounding
  until the single per-output-channel rescale);
- the activation's zero point is folded into a constant int32 correction per output channel
  (``z_x·ΣW``) instead of being subtracted from every input element — except in a conv
  with padding, which pads with integer 0: there ``x_q' = int16(x_q) − z_x`` (so that the
  padding is real 0.0), an element-wise shift that fuses into the conv kernel's padding
  stage;
- what followed the float op (bias add, activation, the next QuantizeLinear) is untouched and
  fuses into the conv/matmul kernel's epilogue, so a Q after the op costs no extra pass.

Everything else (per-channel activations, non-zero weight zero points, 16-bit types,
non-constant weights, NHWC layouts) is left as the frontend made it: float math on
dequantized values. Semantics: equal to the QDQ model up to float rounding of the final
rescale; after the next QuantizeLinear an output can differ by one quantization step from
onnxruntime's fused kernels (they round the rescale differently).

QOperator inputs (``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``), which TVM's ONNX
frontend has no converters for, are first expanded into the same DQ → op → Q form on the ONNX
graph (:func:`expand_qoperators`), so they compile in either mode and run on integers with
``arith``. (``MatMulInteger`` has a converter of its own: int32 math on widened operands.)

Two steps, so that the integer ops take part in the layout rewrite like float ones:
:func:`rewrite` (from :func:`.lower.to_relax`, target-independent) emits plain Relax
``conv2d``/``matmul`` with ``out_dtype="int32"``, which the generic CPU schedules compile;
on x86 with AVX2, :func:`use_avx2_kernels` (from :func:`.build.fuse`, after the NHWC
rewrite, before legalization) then moves the convs and matmuls that qualify (8-bit
activations — int8 ones read as ``x + 128`` — 4k input and 8k output channels, no groups,
at least 16 output pixels/rows, weights whose pair sums cannot saturate int16) onto a
hand-written, already-scheduled kernel (:func:`conv_u8s8_avx2`: vpmaddubsw + vpmaddwd, NHWC),
whose epilogue (rescale, bias, next Q) stays an NHWC element-wise kernel.

Needs TVM for :func:`rewrite` (imported lazily, like the rest of the backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, add_node, replace_all_uses

# int8 modes of the TVM backend: "arith" runs quantized Conv/MatMul with int8 operands and
# int32 accumulation (this module); "float" keeps the frontend's dequantize → float op.
MODES = ("arith", "float")

# The default mode per target: the faster one where measured. cpu-x86 (AVX2 EPYC without VNNI,
# `python benchmarks/tvm_int8.py`: 1 thread, median thread CPU time of interleaved runs, QDQ
# models from presso.quantize for cpu-x86): magika 13.6 ms arith vs 20.2 ms float (onnxruntime
# int8 10.1 ms), PP-OCR cls 4.4 ms vs 4.7 ms (onnxruntime int8 4.2 ms). The win comes from the
# vpmaddubsw kernel below: on the generic schedules alone arith was 0.85-1.0x float. Not measured
# elsewhere (cpu-arm64 has no such kernel and runs under qemu here; cuda): float, the frontend's form.
DEFAULT_MODE: dict[str, str] = {"cpu-x86": "arith"}
FALLBACK_MODE = "float"

_EIGHT_BIT = ("int8", "uint8")


def default_mode(target_name: str) -> str:
    return DEFAULT_MODE.get(target_name, FALLBACK_MODE)


@dataclass
class Int8Report:
    """What :func:`rewrite` did: ops rewritten to integer arithmetic, and why others were kept."""

    conv2d: int = 0
    matmul: int = 0
    avx2_kernels: int = 0  # of those, the ones on the hand-written vpmaddubsw kernel
    _kept: dict[int, str] = field(default_factory=dict, repr=False)  # op's weight (identity) → reason

    @property
    def kept_float(self) -> dict[str, int]:
        """Why quantized ops stayed in float: reason → count."""
        counts: dict[str, int] = {}
        for reason in self._kept.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {"conv2d": self.conv2d, "matmul": self.matmul, "avx2_kernels": self.avx2_kernels,
                "kept_float": self.kept_float}

    def keep(self, key: int, reason: str) -> None:
        # keyed by the op's weight constant, which stays the same object while the rewriter
        # revisits the op (it may, more than once, and rebuild it when its inputs change)
        self._kept[key] = reason


def rewrite(mod, report: Int8Report | None = None, *, avx2: bool = False):
    """Rewrite quantized conv2d/matmul in every Relax function of ``mod`` (see the module doc).

    ``avx2``: the target is x86 with AVX2, so the convs and matmuls that qualify will run on
    :func:`conv_u8s8_avx2` (:func:`use_avx2_kernels` swaps them in after the layout rewrite);
    they are counted in ``report.avx2_kernels``. Must run before ``FoldConstant``, which would fold the weights' dequantize into float
    constants. Returns the new module; ``report`` (if given) is filled in.
    """
    from tvm import relax
    from tvm.relax import dpl

    report = report if report is not None else Int8Report()
    x_q, x_scale, x_zero = dpl.wildcard(), dpl.is_const(), dpl.is_const()
    w_q, w_scale, w_zero = dpl.is_const(), dpl.is_const(), dpl.is_const()
    x_dq = dpl.is_op("relax.dequantize")(x_q, x_scale, x_zero)
    w_dq = dpl.is_op("relax.dequantize")(w_q, w_scale, w_zero)
    w_t = dpl.is_op("relax.permute_dims")(w_dq)
    conv = dpl.is_op("relax.nn.conv2d")(x_dq, w_dq)
    matmul = dpl.is_op("relax.matmul")(x_dq, w_dq | w_t)

    def operands(m):
        x_call, w_call = m[x_dq], m[w_dq]
        return _Operands(
            x=m[x_q], x_scale=_array(m[x_scale]), x_zero=_array(m[x_zero]), x_axis=int(x_call.attrs.axis),
            w=_array(m[w_q]), w_scale=_array(m[w_scale]), w_zero=_array(m[w_zero]), w_axis=int(w_call.attrs.axis),
            out_dtype=str(w_call.attrs.out_dtype), key=hash(m[w_q]))

    def on_conv(call, m):
        new = _conv(call, operands(m), report, avx2)
        if new is not None:
            report.conv2d += 1
        return new if new is not None else call

    def on_matmul(call, m):
        ops = operands(m)
        transposed = w_t in m
        if transposed:
            axes = m[w_t].attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                report.keep(ops.key, "matmul weight transposed other than [1, 0]")
                return call
        new = _matmul(call, ops, transposed, report, avx2)
        if new is not None:
            report.matmul += 1
        return new if new is not None else call

    # int32 → float32 → int32 is the identity on the integers an expanded ConvInteger computes
    # (and exact, unlike the float round trip above 2**24)
    acc_i32 = dpl.wildcard().has_dtype("int32")
    round_trip = dpl.is_op("relax.astype")(dpl.is_op("relax.astype")(acc_i32).has_dtype("float32")).has_dtype("int32")

    out = mod.shallow_copy() if hasattr(mod, "shallow_copy") else mod
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        func = dpl.rewrite_call(conv, on_conv, func)
        func = dpl.rewrite_call(matmul, on_matmul, func)
        func = dpl.rewrite_call(round_trip, lambda call, m: m[acc_i32], func)
        out[gvar] = func
    return relax.transform.DeadCodeElimination()(out)


@dataclass
class _Operands:
    x: Any  # the quantized activation (a Relax expression)
    x_scale: np.ndarray
    x_zero: np.ndarray
    x_axis: int
    w: np.ndarray  # the quantized weight (constant)
    w_scale: np.ndarray
    w_zero: np.ndarray
    w_axis: int
    out_dtype: str
    key: int  # identifies the op in the report (its weight constant)


def _array(const) -> np.ndarray:
    return const.value.numpy()


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _check(ops: _Operands, channel_axis: int, report: Int8Report) -> bool:
    """Whether the operands qualify: 8-bit types, per-tensor activation, symmetric weight
    quantized per tensor or along the output-channel axis, float32 dequantization."""
    reasons = []
    if _dtype(ops.x) not in _EIGHT_BIT or str(ops.w.dtype) not in _EIGHT_BIT:
        reasons.append("operands not 8-bit")
    if ops.x_scale.size != 1 or ops.x_zero.size != 1:
        reasons.append("activation quantized per channel")
    if np.any(ops.w_zero != 0):
        reasons.append("weight zero point not 0")
    per_channel = ops.w_axis % ops.w.ndim == channel_axis and ops.w_scale.size == ops.w.shape[channel_axis]
    if ops.w_scale.size != 1 and not per_channel:
        reasons.append("weight scale not per output channel")
    if ops.w.size // max(ops.w.shape[channel_axis], 1) * 255 * 128 >= 2**31:
        reasons.append("reduction too long for int32 accumulation")
    if ops.out_dtype != "float32" or ops.x_scale.dtype != np.float32 or ops.w_scale.dtype != np.float32:
        reasons.append("not float32")
    for reason in reasons[:1]:
        report.keep(ops.key, reason)
    return not reasons


def _conv(call, ops: _Operands, report: Int8Report, avx2: bool = False):
    from tvm import relax

    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "OIHW") or (attrs.out_layout not in ("NCHW", None)):
        report.keep(ops.key, "conv2d layout not NCHW/OIHW")
        return None
    if not _check(ops, 0, report):
        return None
    zero = int(ops.x_zero.ravel()[0])
    padding = [int(p) for p in attrs.padding]  # top, left, bottom, right
    data = ops.x
    if zero != 0 and any(padding):
        # The conv pads with integer 0, which is real 0.0 only after the zero point is
        # subtracted: shift x to int16 (|x − z_x| ≤ 255) instead of folding z_x into the
        # correction. The shift is element-wise, so FuseOps fuses it into the conv kernel's
        # padding stage (a Relax pad would stay a kernel of its own), it stays plain Relax ops
        # that the layout rewrite (NHWC) carries along, and use_avx2_kernels recognizes it.
        data = relax.op.subtract(relax.op.astype(data, "int16"), relax.const(zero, "int16"))
        zero = 0
    acc = relax.op.nn.conv2d(data, relax.const(ops.w), strides=attrs.strides, padding=padding,
                             dilation=attrs.dilation, groups=int(attrs.groups), data_layout="NCHW",
                             kernel_layout="OIHW", out_dtype="int32")
    if avx2:
        out_pixels = int(np.prod([int(d) for d in call.ty.shape.values][2:]))
        report.avx2_kernels += _avx2_conv_qualifies(_dtype(ops.x), ops.w, int(attrs.groups), out_pixels)
    cout = ops.w.shape[0]
    correction = -zero * ops.w.astype(np.int64).reshape(cout, -1).sum(axis=1)
    scale = (ops.x_scale.astype(np.float32).ravel()[0] * ops.w_scale.astype(np.float32)).ravel()
    scale = np.broadcast_to(scale, (cout,))
    return _rescale(acc, correction.reshape(1, cout, 1, 1), scale.reshape(1, cout, 1, 1))


def _matmul(call, ops: _Operands, transposed: bool, report: Int8Report, avx2: bool = False):
    from tvm import relax

    if ops.w.ndim != 2:
        report.keep(ops.key, "matmul weight not 2-D")
        return None
    if call.attrs.out_dtype not in ("", "void", None) and str(call.attrs.out_dtype) not in ("float32", "void"):
        report.keep(ops.key, "matmul out_dtype not float32")
        return None
    # the output-channel axis of the weight as stored: N of [K, N], or of [N, K] when transposed
    if not _check(ops, 0 if transposed else 1, report):
        return None
    weight = ops.w.T.copy() if transposed else ops.w  # [K, N]
    zero = int(ops.x_zero.ravel()[0])
    acc = relax.op.matmul(ops.x, relax.const(weight), out_dtype="int32")
    if avx2:
        rows = int(np.prod([int(d) for d in ops.x.ty.shape.values][:-1]))
        report.avx2_kernels += _avx2_matmul_qualifies(_dtype(ops.x), weight, rows)
    n = weight.shape[1]
    correction = -zero * weight.astype(np.int64).sum(axis=0)
    scale = np.broadcast_to((ops.x_scale.astype(np.float32).ravel()[0] * ops.w_scale.astype(np.float32)).ravel(), (n,))
    return _rescale(acc, correction, scale)


def _rescale(acc, correction: np.ndarray, scale: np.ndarray):
    """float32(acc + correction) · scale, with the correction left out when it is all zero."""
    from tvm import relax

    if np.any(correction):
        acc = relax.op.add(acc, relax.const(correction.astype(np.int32)))
    out = relax.op.astype(acc, "float32")
    if np.all(scale == 1.0):  # ConvInteger expanded with unit scales: keep the integer exact (see rewrite)
        return out
    return relax.op.multiply(out, relax.const(np.ascontiguousarray(scale, dtype=np.float32)))


# ---- QOperator ops → DQ → op → Q on the ONNX graph -------------------------------------------

QOPERATORS = ("QLinearConv", "QLinearMatMul", "ConvInteger")


def expand_qoperators(model: Model) -> dict[str, int]:
    """Replace QLinearConv / QLinearMatMul / ConvInteger by DequantizeLinear → Conv/MatMul
    [→ QuantizeLinear], in place. Preserves semantics (the QOperator ops are defined that way):
    exactly for QLinearConv/QLinearMatMul up to the float rounding of the rescale, and for
    ConvInteger's int32 output while the accumulator stays below 2**24 in the float mode (the
    arith mode keeps it an integer throughout)."""
    counts = {op: 0 for op in QOPERATORS}
    for node in model.nodes(*QOPERATORS):
        if node.domain not in ("", "ai.onnx", None):
            continue
        inputs = list(node.inputs) + [None] * 9
        name = node.name or node.op
        if node.op == "QLinearConv":
            x, xs, xz, w, ws, wz, ys, yz, bias = inputs[:9]
            conv_in = [_dq(model, x, xs, xz, f"{name}_x"), _dq(model, w, ws, wz, f"{name}_w", axis=0)]
            if _present(bias):  # int32 bias with scale x_scale·w_scale and zero point 0
                cast = add_node(model, "Cast", [bias], name=f"{name}_bias_cast", attrs={"to": 1}, dtype=np.float32)
                scaled = add_node(model, "Mul", [cast.outputs[0], xs], name=f"{name}_bias_x", dtype=np.float32)
                conv_in.append(add_node(model, "Mul", [scaled.outputs[0], ws], name=f"{name}_bias_w",
                                        dtype=np.float32).outputs[0])
            out = add_node(model, "Conv", conv_in, name=f"{name}_float", attrs=dict(node.attrs), dtype=np.float32)
            result = add_node(model, "QuantizeLinear", [out.outputs[0], ys, *([yz] if _present(yz) else [])],
                              name=f"{name}_q")
        elif node.op == "QLinearMatMul":
            a, as_, az, b, bs, bz, ys, yz = inputs[:8]
            per_column = _size(bs) > 1
            out = add_node(model, "MatMul", [_dq(model, a, as_, az, f"{name}_a"),
                                             _dq(model, b, bs, bz, f"{name}_b", axis=-1 if per_column else None)],
                           name=f"{name}_float", dtype=np.float32)
            result = add_node(model, "QuantizeLinear", [out.outputs[0], ys, *([yz] if _present(yz) else [])],
                              name=f"{name}_q")
        else:  # ConvInteger(x, w, x_zero_point, w_zero_point) → int32
            x, w, xz, wz = inputs[:4]
            conv_in = [_dq(model, x, None, xz, f"{name}_x"),
                       _dq(model, w, None, wz, f"{name}_w", axis=0 if _size(wz) > 1 else None)]
            out = add_node(model, "Conv", conv_in, name=f"{name}_float", attrs=dict(node.attrs), dtype=np.float32)
            result = add_node(model, "Cast", out.outputs, name=f"{name}_int32", attrs={"to": 6}, dtype=np.int32)
        old = node.outputs[0]
        result.outputs[0].dtype, result.outputs[0].shape = old.dtype, old.shape
        replace_all_uses(model, old, result.outputs[0])
        node.outputs.clear()  # dead now; cleanup removes it
        counts[node.op] += 1
    if any(counts.values()):
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
    return counts


def _present(tensor) -> bool:
    return tensor is not None and bool(tensor.name)


def _size(tensor) -> int:
    if not _present(tensor):
        return 1
    if isinstance(tensor, gs.Constant):
        return int(np.asarray(tensor.values).size)
    return int(np.prod(tensor.shape)) if tensor.shape and all(isinstance(d, int) for d in tensor.shape) else 1


def _dq(model: Model, x: gs.Tensor, scale, zero, name: str, axis: int | None = None) -> gs.Tensor:
    """DequantizeLinear(x, scale, zero); scale None = 1.0 (of the zero point's shape)."""
    if scale is None:
        if isinstance(zero, gs.Constant):
            shape = np.asarray(zero.values).shape
        else:
            shape = (_size(zero),) if _size(zero) > 1 else ()
        scale = add_initializer(model, f"{name}_unit_scale", np.ones(shape, np.float32))
    inputs = [x, scale, *([zero] if _present(zero) else [])]
    attrs = {"axis": axis} if axis is not None else {}
    return add_node(model, "DequantizeLinear", inputs, name=f"{name}_dq", attrs=attrs, dtype=np.float32).outputs[0]


# ---- AVX2 u8·s8 kernel (vpmaddubsw + vpmaddwd) -------------------------------------------------
#
# Presso's generic CPU schedules compute an int32 multiply-accumulate as widen + vpmulld + vpaddd:
# fewer products per instruction than a float FMA, so int8 would lose to float. AVX2's vpmaddubsw
# multiplies 32 uint8 × int8 pairs and adds neighbours into 16 int16 sums; vpmaddwd with ones adds
# those pairwise into 8 int32: 32 products in 3 instructions (how onnxruntime's MLAS runs int8 on
# AVX2). The int16 sums saturate unless 255·(|w_0| + |w_1|) ≤ 32767 for each pair of weights,
# which 7-bit weights (cpu-x86's reduce_range scheme) always satisfy; other weights,
# grouped/depthwise convs and channel counts that are not multiples of 4 (input) and 8 (output)
# take the generic path. The kernel is one NHWC convolution (a matmul is a 1×1 conv over a 1×M
# image): it reads 4 input channels of one pixel as one int32, broadcasts it against a packed
# [8 output channels × 4 input channels] block of weights, and keeps an MR × 8 tile of int32
# accumulators (MR consecutive output pixels) in registers.

MR = 4  # output columns per tile: 4 accumulators of 8 int32, sharing each weight load
_MIN_COLUMNS = 16  # fewer output pixels/rows than this (a GEMV): not worth the packing
CHUNK = 16  # tiles per parallel task
_INNER_WEIGHT_BYTES = 64 * 1024  # packed weights up to this size are reused from cache per tile


@dataclass(frozen=True)
class ConvShape:
    """An NHWC conv: input [n, h, w, 4·c4] uint8, weights [oc/8, kh, kw, c4, 8, 4] int8,
    output [n, oh, ow, oc] int32; the input is already padded."""

    n: int
    h: int
    w: int
    c4: int
    oc: int
    kh: int = 1
    kw: int = 1
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)

    @property
    def oh(self) -> int:
        return (self.h - (self.kh - 1) * self.dilation[0] - 1) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.w - (self.kw - 1) * self.dilation[1] - 1) // self.stride[1] + 1


def _saturation_free(weight_cio: np.ndarray) -> bool:
    """No vpmaddubsw pair sum can saturate: for weights [oc, c, ...], pairs of input channels
    (0, 1), (2, 3), … (what one instruction multiplies with two neighbouring uint8 inputs)."""
    oc, c = weight_cio.shape[:2]
    w = np.abs(weight_cio.astype(np.int32)).reshape(oc, c // 2, 2, -1).sum(axis=2)
    return int(w.max(initial=0)) * 255 <= 32767


def pack_weights(weight_oihw: np.ndarray) -> np.ndarray:
    """[oc, c, kh, kw] int8 → [oc/8, kh, kw, c/4, 8, 4]: 8 output × 4 input channels per block."""
    oc, c, kh, kw = weight_oihw.shape
    blocks = weight_oihw.reshape(oc // 8, 8, c // 4, 4, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 4, 5, 2, 1, 3))


def _avx2_conv_qualifies(x_dtype: str, weight_oihw: np.ndarray, groups: int, out_pixels: int) -> bool:
    oc, c = weight_oihw.shape[:2]
    return (x_dtype in _EIGHT_BIT and str(weight_oihw.dtype) == "int8" and groups == 1 and c % 4 == 0
            and oc % 8 == 0 and out_pixels >= _MIN_COLUMNS and _saturation_free(weight_oihw))


def _avx2_matmul_qualifies(x_dtype: str, weight_kn: np.ndarray, rows: int) -> bool:
    k, n = weight_kn.shape
    padded = np.zeros((n, k + (-k % 4), 1, 1), np.int8)
    padded[:, :k, 0, 0] = weight_kn.T
    return (x_dtype in _EIGHT_BIT and str(weight_kn.dtype) == "int8" and n % 8 == 0 and rows >= _MIN_COLUMNS
            and _saturation_free(padded))


def use_avx2_kernels(mod):
    """Run the integer convs and matmuls that :func:`rewrite` made, and that qualify, on
    :func:`conv_u8s8_avx2`. Call it after the layout rewrite (NHWC: the kernel's own layout, so
    the ops around it stay NHWC too) and before legalization. Exact: the kernel reads
    ``u = x + s`` as uint8 (``s`` = 128 for int8 x, else 0) padded with ``c + s`` where the conv
    read ``x − c`` (c = 0 unless :func:`rewrite` shifted x), and subtracts ``(c + s)·ΣW``."""
    from tvm import relax
    from tvm.relax import dpl

    x8, x_any, c = dpl.wildcard(), dpl.wildcard(), dpl.is_const()
    shifted = dpl.is_op("relax.subtract")(dpl.is_op("relax.astype")(x8), c)
    moved = dpl.is_op("relax.permute_dims")(shifted)  # the layout rewrite's transpose at an NCHW input
    weight = dpl.is_const()
    conv = dpl.is_op("relax.nn.conv2d")(moved | shifted | x_any, weight)
    matmul = dpl.is_op("relax.matmul")(x_any, weight)
    bb = relax.BlockBuilder(mod)  # collects the kernels (add_func)

    def operand(m):
        """(the 8-bit x the conv reads, its dtype, c) where the conv reads x − c."""
        if shifted in m and _dtype(m[x8]) in _EIGHT_BIT:
            x = m[x8]
            dtype = _dtype(x)
            if moved in m:
                x = relax.op.permute_dims(x, m[moved].attrs.axes)
            return x, dtype, int(_array(m[c]).ravel()[0])
        return m[x_any], _dtype(m[x_any]), 0

    def on_conv(call, m):
        x, dtype, zero = operand(m)
        attrs, w = call.attrs, _array(m[weight])
        layout = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
        if str(attrs.out_dtype) != "int32" or layout not in (("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")):
            return call
        nhwc = layout[0] == "NHWC"
        w_oihw = w.transpose(3, 2, 0, 1) if nhwc else w
        out = [int(d) for d in call.ty.shape.values]
        pixels = out[1] * out[2] if nhwc else out[2] * out[3]
        if not _avx2_conv_qualifies(dtype, w_oihw, int(attrs.groups), pixels):
            return call
        x, zero = _as_uint8(x, zero, dtype)
        image = x if nhwc else relax.op.permute_dims(x, [0, 2, 3, 1])
        shape = [int(d) for d in call.args[0].ty.shape.values]
        n, h, w_ = (shape[0], shape[1], shape[2]) if nhwc else (shape[0], shape[2], shape[3])
        top, left, bottom, right = (int(p) for p in attrs.padding)
        if top or left or bottom or right:
            image = relax.op.nn.pad(image, [0, 0, top, bottom, left, right, 0, 0], pad_value=float(zero))
        oc, cin, kh, kw = w_oihw.shape
        shape = ConvShape(n, h + top + bottom, w_ + left + right, cin // 4, oc, kh, kw,
                          tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.dilation))
        acc = _call_kernel(bb, image, w_oihw, shape)
        correction = -zero * w_oihw.astype(np.int64).reshape(oc, -1).sum(axis=1)
        if np.any(correction):
            acc = relax.op.add(acc, relax.const(correction.astype(np.int32)))  # NHWC: channels last
        return acc if nhwc else relax.op.permute_dims(acc, [0, 3, 1, 2])

    def on_matmul(call, m):
        x, w = m[x_any], _array(m[weight])
        if str(call.attrs.out_dtype) != "int32" or w.ndim != 2 or not hasattr(x.ty.shape, "values"):
            return call
        shape = [int(d) for d in x.ty.shape.values]
        k, n = w.shape
        rows = int(np.prod(shape[:-1]))
        if not _avx2_matmul_qualifies(_dtype(x), w, rows):
            return call
        x, zero = _as_uint8(x, 0)
        k4 = (k + 3) // 4
        padded = np.zeros((n, 4 * k4, 1, 1), np.int8)
        padded[:, :k, 0, 0] = w.T
        image = relax.op.reshape(x, [1, 1, rows, k])  # a 1×rows NHWC image with k channels
        if k % 4:  # zero channels meet zero weights: they add nothing
            image = relax.op.nn.pad(image, [0, 0, 0, 0, 0, 0, 0, 4 * k4 - k])
        acc = relax.op.reshape(_call_kernel(bb, image, padded, ConvShape(1, 1, rows, k4, n)), [*shape[:-1], n])
        if zero:
            acc = relax.op.add(acc, relax.const((-zero * w.astype(np.int64).sum(axis=0)).astype(np.int32)))
        return acc

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            func = dpl.rewrite_call(conv, on_conv, func)
            bb.update_func(gvar, dpl.rewrite_call(matmul, on_matmul, func))
    return relax.transform.DeadCodeElimination()(bb.get())


def _as_uint8(x, zero: int, dtype: str | None = None):
    """(uint8 x, its zero point): int8 activations move up by 128 (same real values)."""
    from tvm import relax

    if (dtype or _dtype(x)) == "uint8":
        return x, zero
    shifted = relax.op.add(relax.op.astype(x, "int16"), relax.const(128, "int16"))
    return relax.op.astype(shifted, "uint8"), zero + 128


def _call_kernel(bb, image, weight_oihw: np.ndarray, conv: ConvShape):
    from tvm import relax

    name = (f"conv_u8s8_avx2_{conv.h}x{conv.w}x{4 * conv.c4}_{conv.oc}x{conv.kh}x{conv.kw}"
            f"_s{conv.stride[0]}{conv.stride[1]}_d{conv.dilation[0]}{conv.dilation[1]}")
    # no global symbol of its own: the VM lowering attaches one per GlobalVar (unique)
    gvar = bb.add_func(conv_u8s8_avx2(conv).without_attr("global_symbol"), name)
    return relax.call_tir(gvar, [image, relax.const(pack_weights(weight_oihw))],
                          relax.TensorType((conv.n, conv.oh, conv.ow, conv.oc), "int32"))


def conv_u8s8_avx2(conv: ConvShape):
    """PrimFunc of the NHWC conv ``conv`` (see :class:`ConvShape`), int32 accumulation, already
    scheduled (tiles in parallel, MR×8 register tile) and opaque to fusion. Needs AVX2
    (llvm.x86.avx2.pmadd.ub.sw / pmadd.wd)."""
    from tvm.script import tirx as T

    n, h, w, c4, oc, kh, kw = conv.n, conv.h, conv.w, conv.c4, conv.oc, conv.kh, conv.kw
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    oh, ow, ob = conv.oh, conv.ow, conv.oc // 8
    # Tiles of MR consecutive output pixels (row-major over oh × ow, so a 1-pixel-wide image
    # tiles as well as a wide one) × 8 output channels.
    pixels = oh * ow
    full, rest = pixels // MR, pixels % MR
    # Small weights stay in cache while the pixels stream past: output-channel blocks innermost;
    # large ones (magika's 5×256×512 conv) outermost, so that one block is reused by every pixel.
    weights_inner = ob * kh * kw * c4 * 32 <= _INNER_WEIGHT_BYTES
    chunks = (ob * n * full + CHUNK - 1) // CHUNK

    def split(tile, count):  # tile → (output-channel block, image, first pixel of the tile)
        count = max(count, 1)  # an empty loop divides nothing
        if weights_inner:
            return tile % ob, tile // (ob * count), tile // ob % count
        return tile // (n * count), tile // count % n, tile % count

    channels = 4 * c4

    def pixel(b, p):  # offset of output pixel p's first input pixel, in the flat input
        return ((b * h + p // ow * sh) * w + p % ow * sw) * channels

    def dot(A, B, acc, i, start, o, r, s, k):  # acc[i] += 8 × (4-wide dot product) at A[start + tap]
        return acc[i, T.ramp(0, 1, 8)] + products(A, B, start, o, r, s, k)

    def dot1(A, B, acc, start, o, r, s, k):
        return acc[T.ramp(0, 1, 8)] + products(A, B, start, o, r, s, k)

    def products(A, B, start, o, r, s, k):  # 8 output channels × 4 input channels of one tap
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret(T.broadcast(T.reinterpret(
                    A.vload([start + (r * dh * w + s * dw) * channels + k * 4], "uint8x4"), dtype="int32"), 8),
                    dtype="uint8x32"),
                B.vload([o, r, s, k, 0, 0], "int8x32"),
                dtype="int16x16"),
            T.broadcast(T.int16(1), 16),
            dtype="int32x8")

    @T.prim_func(s_tir=True)
    def kernel(A: T.Buffer((n, h, w, c4 * 4), "uint8"), B: T.Buffer((ob, kh, kw, c4, 8, 4), "int8"),
               C: T.Buffer((n, oh, ow, oc), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        flat = T.decl_buffer((n * h * w * channels,), "uint8", data=A.data)
        for chunk in T.parallel(chunks):
            # allocated per chunk of tiles: a per-tile local buffer costs a workspace call
            acc = T.alloc_buffer((MR, 8), "int32", scope="local")
            start = T.alloc_buffer((MR,), "int32", scope="local")  # per tile pixel, out of the taps
            for j in range(CHUNK):
                if chunk * CHUNK + j < ob * n * full:
                    o, b, t = split(chunk * CHUNK + j, full)
                    for i in T.unroll(MR):
                        acc[i, T.ramp(0, 1, 8)] = T.broadcast(T.int32(0), 8)
                        start[i] = pixel(b, t * MR + i)
                    for r, s, k in T.grid(kh, kw, c4):
                        for i in T.unroll(MR):
                            acc[i, T.ramp(0, 1, 8)] = dot(flat, B, acc, i, start[i], o, r, s, k)
                    for i in T.unroll(MR):
                        C[b, (t * MR + i) // ow, (t * MR + i) % ow, T.ramp(o * 8, 1, 8)] = acc[i, T.ramp(0, 1, 8)]
        acc1 = T.alloc_buffer((8,), "int32", scope="local")
        for tile in range(ob * n * rest):  # the last pixels % MR pixels, one at a time (serial: few)
            o, b, t = split(tile, rest)
            acc1[T.ramp(0, 1, 8)] = T.broadcast(T.int32(0), 8)
            for r, s, k in T.grid(kh, kw, c4):
                acc1[T.ramp(0, 1, 8)] = dot1(flat, B, acc1, pixel(b, full * MR + t), o, r, s, k)
            C[b, (full * MR + t) // ow, (full * MR + t) % ow, T.ramp(o * 8, 1, 8)] = acc1[T.ramp(0, 1, 8)]

    return kernel

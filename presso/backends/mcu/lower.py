"""Lower a Q/DQ int8 model to a list of integer ops with fixed-point requantization parameters.

A quantized Presso model computes in float between ``DequantizeLinear`` and
``QuantizeLinear`` nodes. Here every such unit becomes one integer op on int8 tensors:

- Conv / Gemm / MatMul: int8 × int8 products accumulated in int32 with an int32 bias in the
  accumulator's scale (the input zero point folded into it where no padding interferes), then
  requantized per output channel by a multiplier ``m`` and a right shift ``s``
  (``real = m·2^-s``, ``m`` in [2^30, 2^31)) with one rounding, clamped to the output range —
  a Relu/Clip between the op and its Q becomes that clamp;
- Add / Sub / Mul with broadcasting, average pools and means, Concat, Softmax (a Q20 exp
  table), LayerNormalization (integer statistics and square root): integer arithmetic with
  compile-time multipliers;
- a chain of elementwise float functions of one int8 tensor (Sigmoid, HardSwish, Tanh, Gelu,
  Exp, Sqrt, a Mul/Add by a scalar constant, a requantization, …) becomes a 256-entry int8
  table computed at compile time by onnxruntime running that very chain on every int8 value,
  so it matches the Q/DQ model bit for bit;
- an embedding Gather reads rows of a table requantized at compile time, with int32 indices;
- Reshape/Flatten/Squeeze/Unsqueeze (and a Transpose or Slice that keeps the byte order) are
  views (no code); MaxPool, Transpose, Slice and Concat move int8 values.

The model's float input Q and output DQ are stripped: the program takes and returns int8
(int32 for an integer index input). Everything the C code needs is in the returned
:class:`Program`; no float remains for run time. :mod:`.emulate` runs a program in numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from ...ir import Model, infer_tensor_infos
from ...ir.errors import BackendError

INT8_MIN, INT8_MAX = -128, 127

# Float functions of one value: a chain of them on one int8 tensor is one lookup table.
ELEMENTWISE_UNARY = (
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf", "Exp",
    "Sqrt", "Neg", "Abs", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Log", "Reciprocal", "Sin", "Cos",
    "Floor", "Ceil", "Round", "Sign", "Mish", "ThresholdedRelu", "Identity", "Dropout",
)
# Binary ops that are unary when the other operand is a one-element constant (or the same tensor).
ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu")
# Ops that only reinterpret the shape: the output is a view of the input's bytes.
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
# Ops that move int8 values without arithmetic (their output keeps the input's quantization).
MOVE_OPS = VIEW_OPS + ("Transpose", "MaxPool", "GlobalMaxPool", "Concat", "Slice", "Split")
# Ops with an integer kernel of their own.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "AveragePool", "GlobalAveragePool",
               "ReduceMean", "Softmax", "Concat", "MaxPool", "GlobalMaxPool", "Transpose", "Gather",
               "LayerNormalization", "LRN")
SUPPORTED_OPS = tuple(sorted(set(ELEMENTWISE_UNARY + ELEMENTWISE_BINARY + VIEW_OPS + MOVE_OPS + COMPUTE_OPS)))


# --------------------------------------------------------------------------------------------
# the lowered program
@dataclass
class Tensor:
    """An int8 tensor of the program: an activation, or constant data (``data`` set)."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    dtype: str = "int8"
    data: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass
class Op:
    """One integer kernel call. ``params`` holds compile-time ints and arrays (multipliers,
    shifts, weights, tables); ``view``: the output is the input's bytes seen with another
    shape (no code); ``inplace``: the output may overwrite input 0 when that is its last use."""

    kind: str
    node: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    view: bool = False
    inplace: bool = False


@dataclass
class Program:
    tensors: dict[str, Tensor]
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    # float graph input/output names of the original model for each port (for reports)
    input_sources: list[str] = field(default_factory=list)
    output_sources: list[str] = field(default_factory=list)

    def model_tensor(self, name: str) -> str:
        """The tensor of the Q/DQ model holding ``name``'s values (through added views)."""
        for op in self.ops:
            if op.view and name in op.outputs and name.endswith("__int8"):
                return self.model_tensor(op.inputs[0])
        return name

    def uses(self) -> dict[str, list[int]]:
        uses: dict[str, list[int]] = {}
        for i, op in enumerate(self.ops):
            for name in op.inputs:
                uses.setdefault(name, []).append(i)
        return uses


# --------------------------------------------------------------------------------------------
# fixed-point arithmetic
def quantize_multiplier(real: float) -> tuple[int, int]:
    """``real ≈ m · 2^-s`` with ``m`` in [2^30, 2^31) and ``s`` in [1, 62] (``(0, 1)`` for 0).

    The kernels compute ``(acc·m + 2^(s-1)) >> s`` in 64 bits: one rounding, half up.
    """
    if real < 0:
        m, s = quantize_multiplier(-real)
        return -m, s
    if real == 0.0 or not math.isfinite(real):
        if not math.isfinite(real):
            raise BackendError(f"requantization multiplier {real} is not finite",
                               hint="calibrate the model again: a scale is zero or infinite")
        return 0, 1
    frac, exp = math.frexp(real)  # real = frac · 2^exp, frac in [0.5, 1)
    m = int(round(frac * (1 << 31)))
    if m == 1 << 31:
        m //= 2
        exp += 1
    s = 31 - exp
    if s > 62:
        m = int(round(m / (1 << (s - 62))))
        s = 62
    if s < 1:
        raise BackendError(f"requantization multiplier {real:g} is too large for 32-bit fixed point",
                           hint="the output scale is far smaller than the input's; recalibrate the model")
    return m, s


def multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))


def requantize_reference(acc: np.ndarray, m: np.ndarray, s: np.ndarray, zp: int, lo: int = INT8_MIN,
                         hi: int = INT8_MAX) -> np.ndarray:
    """What the C kernels compute, in numpy (for tests): ``clamp(((acc·m + 2^(s-1)) >> s) + zp)``."""
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    return np.clip(((acc * m + (np.int64(1) << (s - 1))) >> s) + zp, lo, hi).astype(np.int8)


# --------------------------------------------------------------------------------------------
# reading the Q/DQ graph
def _const(tensor: gs.Tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if tensor.inputs and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if value is not None:
            return np.asarray(value.values if isinstance(value, gs.Constant) else value)
    return None


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


@dataclass
class _DQConst:
    """A dequantized constant: integer values, per-tensor or per-channel scale and zero point."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    def scale_along(self, axis: int, channels: int) -> np.ndarray:
        """The scale broadcast to ``channels`` entries along ``axis`` (per-tensor or matching axis)."""
        if self.scale.size == 1:
            return np.full(channels, float(self.scale.reshape(())), dtype=np.float64)
        ax = self.axis if self.axis >= 0 else self.axis + self.values.ndim
        if ax != axis or self.scale.size != channels:
            raise ValueError("per-channel axis does not match the output channels")
        return self.scale.astype(np.float64)

    def real(self) -> np.ndarray:
        v = self.values.astype(np.float64)
        if self.scale.size == 1:
            return (v - float(self.zero_point.reshape(-1)[0])) * float(self.scale.reshape(()))
        shape = [1] * v.ndim
        shape[self.axis] = -1
        return (v - self.zero_point.reshape(shape)) * self.scale.reshape(shape)


class _Unsupported(Exception):
    def __init__(self, node: gs.Node, reason: str, consequence: bool = False):
        super().__init__(reason)
        self.node = node
        self.reason = reason
        self.consequence = consequence  # an input comes from a node already reported


class _Lowering:
    def __init__(self, model: Model):
        self.model = model
        self.graph = model.graph
        self.infos = infer_tensor_infos(model)
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.act_dq: dict[str, str] = {}  # float DQ output -> int8 tensor name
        self.const_dq: dict[str, _DQConst] = {}
        self.int8_of_float: dict[str, str] = {}  # a float tensor whose Q gives this int8 tensor
        self.unsupported: list[tuple[str, str, str]] = []
        self.failed: set[str] = set()  # tensors whose producer could not be lowered
        self._counter = 0

    # -- helpers --
    def shape(self, tensor: gs.Tensor) -> tuple[int, ...]:
        info = self.infos.get(tensor.name)
        shape = info.shape if info is not None else tensor.shape
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BackendError(f"tensor '{tensor.name}' has no static shape ({shape})",
                               hint="fix the input shapes first (presso opt --shape, or quantize with a "
                                    "Cortex-M target, which runs static-shapes)")
        return tuple(int(d) for d in shape)

    def fresh(self, base: str) -> str:
        self._counter += 1
        return f"{base}__{self._counter}"

    def qparams(self, node: gs.Node) -> tuple[float, int]:
        scale = _const(node.inputs[1])
        zp = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.zeros((), np.int8)
        if scale is None or zp is None or scale.size != 1 or zp.size != 1:
            raise _Unsupported(node, "activations must have one constant scale and zero point (per-tensor)")
        if np.dtype(zp.dtype) != np.int8:
            raise _Unsupported(node, f"activations are {np.dtype(zp.dtype)}, the kernels take int8 "
                                     "(quantize with a Cortex-M target)")
        if int(node.attrs.get("axis", 1)) not in (1, -1) and scale.size != 1:
            raise _Unsupported(node, "per-channel activation quantization")
        return float(scale.reshape(())), int(zp.reshape(()))

    def add_tensor(self, name: str, shape, scale: float, zp: int, data: np.ndarray | None = None) -> str:
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), float(scale), int(zp), data=data)
        return name

    def const_operand(self, dq: _DQConst, name: str, shape) -> str:
        """A dequantized per-tensor int8 constant used as an activation operand."""
        if dq.scale.size != 1 or dq.values.dtype != np.int8:
            raise ValueError("per-channel or non-int8 constant operand")
        if name not in self.tensors:
            self.add_tensor(name, shape, float(dq.scale.reshape(())), int(dq.zero_point.reshape(-1)[0]),
                            data=dq.values.astype(np.int8).reshape(shape))
        return name

    # -- main walk --
    def run(self) -> Program:
        graph = self.graph
        inputs, input_sources = [], []
        for tensor in graph.inputs:
            consumers = list(tensor.outputs)
            dtype = self.infos[tensor.name].dtype if tensor.name in self.infos else tensor.dtype
            if np.dtype(dtype) == np.int8:
                raise BackendError(f"input '{tensor.name}' is already int8 without its quantization parameters",
                                   hint="give the model a float input followed by QuantizeLinear")
            if np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize >= 4:
                # indices (magika's bytes): taken as int32 by the C API, read by Gather
                self.add_tensor(tensor.name, self.shape(tensor), 1.0, 0)
                self.tensors[tensor.name].dtype = "int32"
                inputs.append(tensor.name)
                input_sources.append(tensor.name)
                continue
            qs = [n for n in consumers if n.op == "QuantizeLinear"]
            moved = self.moved_input_quantization(tensor) if not qs else None
            if moved is not None:
                # Transpose/Reshape/Slice… first (pass-through ops keep their input float): the
                # input takes the quantization of the Q after them, and they run on int8
                self.add_tensor(tensor.name, self.shape(tensor), *moved)
                inputs.append(tensor.name)
                input_sources.append(tensor.name)
                continue
            if not qs or len(qs) != len(consumers):
                self.unsupported.append((consumers[0].name if consumers else tensor.name,
                                         consumers[0].op if consumers else "input",
                                         f"graph input '{tensor.name}' is not quantized (float model?): the "
                                         "kernels take int8 inputs"))
                continue
            q = qs[0]
            try:
                scale, zp = self.qparams(q)
            except _Unsupported as exc:
                self.unsupported.append((q.name, q.op, exc.reason))
                continue
            name = q.outputs[0].name
            self.add_tensor(name, self.shape(tensor), scale, zp)
            for other in qs[1:]:  # the same input quantized twice: a requantizing table
                s2, z2 = self.qparams(other)
                self.ops.append(self.requant_lut(name, other.outputs[0].name, self.shape(tensor), s2, z2,
                                                 other.name))
            inputs.append(name)
            input_sources.append(tensor.name)

        for node in graph.nodes:
            try:
                self.visit(node)
            except _Unsupported as exc:
                # what this node produces is missing downstream; only the first cause is reported
                self.failed.update(t.name for t in node.outputs)
                if not exc.consequence:
                    self.unsupported.append((exc.node.name, exc.node.op, exc.reason))

        outputs, output_sources = [], []
        for tensor in graph.outputs:
            node = _producer(tensor)
            views = []  # a Reshape/Flatten… after the output's DQ: the int8 output seen the same way
            while node is not None and node.op in VIEW_OPS and node.inputs[0].name not in self.tensors:
                views.append(node)
                node = _producer(node.inputs[0])
            if node is not None and node.op == "DequantizeLinear" and node.inputs[0].name in self.tensors:
                name = node.inputs[0].name
                if views:
                    src = self.tensors[name]
                    view = self.add_tensor(f"{tensor.name}__int8", self.shape(tensor), src.scale, src.zero_point)
                    self.ops.append(Op("view", views[0].name, [name], [view], view=True))
                    name = view
                outputs.append(name)
            elif tensor.name in self.tensors:
                outputs.append(tensor.name)
            elif self._from_failed(tensor):
                continue  # its cause is reported already
            else:
                where = node if node is not None else None
                self.unsupported.append((where.name if where else tensor.name, where.op if where else "output",
                                         f"graph output '{tensor.name}' is not an int8 tensor followed by "
                                         "DequantizeLinear"))
                continue
            output_sources.append(tensor.name)
        return Program(self.tensors, self.ops, inputs, outputs, input_sources, output_sources)

    def _from_failed(self, tensor: gs.Tensor, depth: int = 0) -> bool:
        """Whether ``tensor`` depends on a tensor whose producer was already reported."""
        if tensor.name in self.failed:
            return True
        node = _producer(tensor)
        if node is None or depth > 32:
            return False
        return any(self._from_failed(i, depth + 1) for i in node.inputs if i.name and _const(i) is None)

    def moved_input_quantization(self, tensor: gs.Tensor) -> tuple[float, int] | None:
        """(scale, zero point) when ``tensor`` reaches QuantizeLinear nodes of one quantization
        only through single-input ops that move values (views, Transpose, Slice, MaxPool)."""
        found: set[tuple[float, int]] = set()
        stack = [tensor]
        while stack:
            t = stack.pop()
            if not t.outputs or any(o.name == t.name for o in self.graph.outputs):
                return None
            for node in t.outputs:
                if node.op == "QuantizeLinear":
                    try:
                        found.add(self.qparams(node))
                    except _Unsupported:
                        return None
                elif node.op in MOVE_OPS and node.op not in ("Concat", "Split") and \
                        sum(1 for i in node.inputs if i.name and _const(i) is None) == 1:
                    stack.extend(node.outputs)
                else:
                    return None
        return found.pop() if len(found) == 1 else None

    def visit(self, node: gs.Node) -> None:
        op = node.op
        if op == "Constant":
            return
        if op == "DequantizeLinear":
            x = node.inputs[0]
            values = _const(x)
            if values is not None:
                scale = _const(node.inputs[1])
                zp = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.zeros(1, values.dtype)
                axis = int(node.attrs.get("axis", 1))
                self.const_dq[node.outputs[0].name] = _DQConst(values, np.asarray(scale, np.float64),
                                                               np.asarray(zp).astype(np.int64), axis)
            elif x.name in self.tensors:
                self.act_dq[node.outputs[0].name] = x.name
            else:
                self.failed.add(node.outputs[0].name)
            # a DQ of a tensor we could not lower is reported at that tensor's producer
            return
        if op == "QuantizeLinear":
            if node.outputs[0].name in self.tensors:  # a graph input's Q, done
                return
            self.lower_region(node)
            return
        # an op on int8 tensors directly (a view or move between Q and DQ)
        ins = [t for t in node.inputs if t.name and _const(t) is None]
        if ins and all(t.name in self.tensors for t in ins):
            self.lower_int8_op(node)
            return
        # a float op: lowered with the QuantizeLinear that reads it (a float graph output is
        # reported at the end)

    # -- int8 ops outside Q/DQ --
    def lower_int8_op(self, node: gs.Node) -> None:
        x = self.tensors[node.inputs[0].name]
        out = node.outputs[0]
        if node.op in VIEW_OPS:
            self.add_tensor(out.name, self.shape(out), x.scale, x.zero_point)
            self.tensors[out.name].dtype = x.dtype
            self.ops.append(Op("view", node.name, [x.name], [out.name], view=True))
            return
        if node.op in MOVE_OPS:
            self.lower_move(node, [x.name] + [t.name for t in node.inputs[1:] if t.name in self.tensors],
                            out.name, x.scale, x.zero_point)
            return
        raise _Unsupported(node, f"{node.op} on int8 values with no DequantizeLinear before it")

    # -- a float region between DQs and one Q --
    def lower_region(self, q: gs.Node) -> None:
        out_scale, out_zp = self.qparams(q)
        out_name = q.outputs[0].name
        t = q.inputs[0]
        if t.name in self.tensors:  # already int8 (moved from a graph input): same bytes or a table
            src = self.tensors[t.name]
            if (src.scale, src.zero_point) == (out_scale, out_zp):
                self.add_tensor(out_name, src.shape, out_scale, out_zp)
                self.ops.append(Op("view", q.name, [t.name], [out_name], view=True))
            else:
                self.ops.append(self.requant_lut(t.name, out_name, src.shape, out_scale, out_zp, q.name))
            return
        node = _producer(t)
        if node is None:
            raise _Unsupported(q, f"QuantizeLinear of '{t.name}', which no op produces")
        if node.op == "DequantizeLinear":  # Q(DQ(x)): a requantization
            src = self.act_dq.get(t.name)
            if src is None:
                raise _Unsupported(q, "QuantizeLinear of a dequantized constant")
            self.ops.append(self.requant_lut(src, out_name, self.tensors[src].shape, out_scale, out_zp, q.name))
            return
        region, sources = self.elementwise_region(t)
        if region is not None and len(sources) == 1:
            src = sources[0]
            if self.shape(t) == self.tensors[src].shape:
                self.ops.append(self.lut_op(region, t.name, src, out_name, out_scale, out_zp))
                return
        # an activation (Relu/Clip) between the op and its Q becomes the op's output clamp
        lo, hi = INT8_MIN, INT8_MAX
        while node.op in ("Relu", "Clip") and _producer(node.inputs[0]) is not None and \
                _producer(node.inputs[0]).op != "DequantizeLinear" and len(node.inputs[0].outputs) == 1:
            a, b = self.activation_range(node)
            lo = max(lo, _quant_bound(a, out_scale, out_zp, lo))
            hi = min(hi, _quant_bound(b, out_scale, out_zp, hi))
            node = _producer(node.inputs[0])
        if any(self._from_failed(i) for i in node.inputs if i.name and _const(i) is None):
            raise _Unsupported(node, "an input comes from an unsupported node", consequence=True)
        self.lower_compute(node, out_name, out_scale, out_zp, lo, hi)

    def activation_range(self, node: gs.Node) -> tuple[float, float]:
        if node.op == "Relu":
            return 0.0, math.inf
        lo = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
        hi = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        lo = float(lo) if lo is not None else float(node.attrs.get("min", -math.inf))
        hi = float(hi) if hi is not None else float(node.attrs.get("max", math.inf))
        return lo, hi

    def elementwise_region(self, t: gs.Tensor) -> tuple[list[gs.Node] | None, list[str]]:
        """The elementwise float nodes computing ``t`` from int8 tensors, and those tensors."""
        region: list[gs.Node] = []
        sources: list[str] = []
        stack = [t]
        seen: set[str] = set()
        while stack:
            cur = stack.pop()
            if cur.name in seen:
                continue
            seen.add(cur.name)
            if _const(cur) is not None:
                continue
            if cur.name in self.act_dq:
                if self.act_dq[cur.name] not in sources:
                    sources.append(self.act_dq[cur.name])
                region.append(_producer(cur))
                continue
            node = _producer(cur)
            if node is None:
                return None, []
            if node.op == "DequantizeLinear":  # of a constant
                dq = self.const_dq.get(cur.name)
                if dq is None or dq.values.size != 1:
                    return None, []
                region.append(node)
                continue
            if node.op in ELEMENTWISE_UNARY:
                region.append(node)
                stack.extend(i for i in node.inputs[:1] if i.name)
                for extra in node.inputs[1:]:
                    if extra.name and (_const(extra) is None or _const(extra).size != 1):
                        if self.const_dq.get(extra.name) is None or self.const_dq[extra.name].values.size != 1:
                            return None, []
                        stack.append(extra)
                continue
            if node.op in ELEMENTWISE_BINARY:
                operands = [i for i in node.inputs if i.name]
                for i in operands:
                    c = _const(i)
                    if c is not None and c.size != 1:
                        return None, []
                    if i.name in self.const_dq and self.const_dq[i.name].values.size != 1:
                        return None, []
                region.append(node)
                stack.extend(operands)
                continue
            return None, []
        return region, sources

    def lut_op(self, region: list[gs.Node], float_out: str, src: str, out_name: str, out_scale: float,
               out_zp: int) -> Op:
        """A 256-entry table: onnxruntime runs the region on every int8 value of ``src``."""
        x = self.tensors[src]
        table = _run_region_table(self.model, region, float_out, x.scale, x.zero_point, out_scale, out_zp)
        self.add_tensor(out_name, x.shape, out_scale, out_zp)
        ops = "+".join(sorted({n.op for n in region if n.op != "DequantizeLinear"})) or "Requantize"
        return Op("lut", ops, [src], [out_name], {"table": table, "ops": ops}, inplace=True)

    def requant_lut(self, src: str, out_name: str, shape, out_scale: float, out_zp: int, where: str) -> Op:
        x = self.tensors[src]
        values = np.arange(-128, 128, dtype=np.float64)
        real = (values - x.zero_point) * x.scale
        table = np.clip(np.rint(real / out_scale) + out_zp, -128, 127).astype(np.int8)
        self.add_tensor(out_name, shape, out_scale, out_zp)
        return Op("lut", where, [src], [out_name], {"table": table, "ops": "Requantize"}, inplace=True)

    # -- compute ops --
    def operand(self, node: gs.Node, index: int) -> tuple[str | None, _DQConst | None]:
        """Input ``index`` of a float op: an int8 tensor name, or a dequantized constant."""
        t = node.inputs[index]
        if t.name in self.act_dq:
            return self.act_dq[t.name], None
        if t.name in self.const_dq:
            return None, self.const_dq[t.name]
        if _const(t) is not None:
            raise _Unsupported(node, f"input '{t.name}' is a float constant without DequantizeLinear")
        if self._from_failed(t):
            raise _Unsupported(node, f"input '{t.name}' comes from an unsupported node", consequence=True)
        src = _producer(t)
        if src is not None and src.op not in ("DequantizeLinear", "QuantizeLinear"):
            raise _Unsupported(src, f"no integer kernel for {src.op}: quantization leaves it in float, and "
                                    f"{node.op} '{node.name}' reads its output")
        raise _Unsupported(node, f"input '{t.name}' is not a dequantized int8 tensor")

    def lower_compute(self, node: gs.Node, out: str, so: float, zo: int, lo: int, hi: int) -> None:
        op = node.op
        out_shape = self.shape(node.outputs[0])
        if op == "Conv":
            self.lower_conv(node, out, out_shape, so, zo, lo, hi)
        elif op in ("Gemm", "MatMul"):
            self.lower_dense(node, out, out_shape, so, zo, lo, hi)
        elif op in ("Add", "Sub", "Mul") or (op == "Sum" and len(node.inputs) == 2):
            self.lower_binary(node, out, out_shape, so, zo, lo, hi)
        elif op in ("AveragePool", "GlobalAveragePool", "ReduceMean"):
            self.lower_avgpool(node, out, out_shape, so, zo, lo, hi)
        elif op == "Softmax":
            self.lower_softmax(node, out, out_shape, so, zo)
        elif op == "Gather":
            self.lower_gather(node, out, out_shape, so, zo, lo, hi)
        elif op == "LayerNormalization":
            self.lower_layernorm(node, out, out_shape, so, zo, lo, hi)
        elif op == "LRN":
            self.lower_lrn(node, out, out_shape, so, zo, lo, hi)
        elif op in MOVE_OPS:
            srcs = []
            for i, t in enumerate(node.inputs):
                if not t.name or (i > 0 and op not in ("Concat",)):
                    continue
                name, dq = self.operand(node, i)
                if name is None:
                    name = self.const_operand(dq, self.fresh(t.name), self.shape(t))
                srcs.append(name)
            self.lower_move(node, srcs, out, so, zo, lo, hi)
        else:
            raise _Unsupported(node, f"no integer kernel for {op}")

    def lower_move(self, node: gs.Node, srcs: list[str], out: str, so: float, zo: int, lo: int = INT8_MIN,
                   hi: int = INT8_MAX) -> None:
        op = node.op
        x = self.tensors[srcs[0]]
        out_shape = self.shape(node.outputs[0])
        same = all(self.tensors[s].scale == so and self.tensors[s].zero_point == zo for s in srcs) \
            and (lo, hi) == (INT8_MIN, INT8_MAX)
        if op == "Concat":
            axis = int(node.attrs.get("axis", 0)) % len(out_shape)
            outer = int(np.prod(out_shape[:axis], dtype=np.int64))
            inner = int(np.prod(out_shape[axis + 1:], dtype=np.int64))
            parts = []
            offset = 0
            for s in srcs:
                t = self.tensors[s]
                block = t.shape[axis] * inner
                m, sh = quantize_multiplier(t.scale / so)
                identity = t.scale == so and t.zero_point == zo
                parts.append({"block": block, "offset": offset, "mult": m, "shift": sh, "zx": t.zero_point,
                              "copy": identity})
                offset += block
            self.add_tensor(out, out_shape, so, zo)
            self.ops.append(Op("concat", node.name, list(srcs), [out],
                               {"outer": outer, "out_block": offset, "parts": parts, "zy": zo, "lo": lo, "hi": hi}))
            return
        target = out if same else self.fresh(out)
        self.add_tensor(target, out_shape, x.scale, x.zero_point)
        transpose = None
        if op == "Transpose":
            perm = list(node.attrs.get("perm", list(range(len(x.shape)))[::-1]))
            transpose = _transpose_params(x.shape, perm)
        slice_ = self.slice_params(node, x.shape, out_shape) if op == "Slice" else None
        if op in VIEW_OPS or (transpose is not None and transpose["in_strides"] == [1]) or \
                (slice_ is not None and tuple(out_shape) == tuple(x.shape)):
            # a reshape, a transpose that moves only axes of size 1, a slice that keeps everything
            self.ops.append(Op("view", node.name, [x.name], [target], view=True))
        elif transpose is not None:
            self.ops.append(Op("transpose", node.name, [x.name], [target], transpose))
        elif op in ("MaxPool", "GlobalMaxPool"):
            self.ops.append(Op("maxpool", node.name, [x.name], [target], _pool_params(node, x.shape, out_shape)))
        elif op == "Slice":
            self.ops.append(Op("slice", node.name, [x.name], [target], slice_))
        else:
            raise _Unsupported(node, f"no int8 kernel for {op}")
        if not same:
            if (lo, hi) != (INT8_MIN, INT8_MAX):
                real = (np.arange(-128, 128) - x.zero_point) * x.scale
                table = np.clip(np.rint(real / so) + zo, lo, hi).astype(np.int8)
                self.add_tensor(out, out_shape, so, zo)
                self.ops.append(Op("lut", node.name, [target], [out], {"table": table, "ops": "Requantize"},
                                   inplace=True))
            else:
                self.ops.append(self.requant_lut(target, out, out_shape, so, zo, node.name))

    def slice_params(self, node: gs.Node, in_shape, out_shape) -> dict:
        starts = _const(node.inputs[1])
        ends = _const(node.inputs[2])
        axes = _const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        steps = _const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else None
        if starts is None or ends is None:
            raise _Unsupported(node, "Slice with non-constant bounds")
        rank = len(in_shape)
        axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
        begin = [0] * rank
        step = [1] * rank
        for a, s, st in zip(axes, starts, steps, strict=True):
            dim = in_shape[a]
            s = int(s)
            if s < 0:
                s += dim
            s = max(0, min(s, dim - 1 if st < 0 else dim))
            begin[a] = s
            step[a] = st
        strides = _strides(in_shape)
        offset = sum(b * st for b, st in zip(begin, strides, strict=True))
        return {"shape": list(out_shape), "in_strides": [st * sp for st, sp in zip(strides, step, strict=True)],
                "offset": offset}

    def lower_conv(self, node, out, out_shape, so, zo, lo, hi) -> None:
        x_name, _ = self.operand(node, 0)
        w_name, w = self.operand(node, 1)
        if w is None:
            raise _Unsupported(node, "Conv with a non-constant weight")
        x = self.tensors[x_name]
        if len(x.shape) not in (3, 4):
            raise _Unsupported(node, f"Conv of rank {len(x.shape)} (1-D and 2-D convolutions are supported)")
        if w.values.dtype != np.int8 or np.any(w.zero_point != 0):
            raise _Unsupported(node, "Conv weights must be int8 with zero zero-points (symmetric)")
        M = w.values.shape[0]
        try:
            sw = w.scale_along(0, M)
        except ValueError:
            raise _Unsupported(node, "Conv weight scales are not per output channel") from None
        bias = self.bias(node, 2, x.scale * sw, M)
        # 1-D convolutions run as 2-D with a height of 1
        xs = x.shape if len(x.shape) == 4 else (x.shape[0], x.shape[1], 1, x.shape[2])
        ys = out_shape if len(out_shape) == 4 else (out_shape[0], out_shape[1], 1, out_shape[2])
        wv = w.values if w.values.ndim == 4 else w.values[:, :, None, :]
        kh, kw = wv.shape[2:]
        nd = len(x.shape) - 2
        strides = list(node.attrs.get("strides", [1] * nd))
        dil = list(node.attrs.get("dilations", [1] * nd))
        pads = list(node.attrs.get("pads", [0] * (2 * nd)))
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(x.shape[2:], out_shape[2:], wv.shape[2 + (2 - nd):], strides, dil, auto_pad)
        elif auto_pad not in ("NOTSET", "VALID"):
            raise _Unsupported(node, f"Conv auto_pad={auto_pad}")
        if nd == 1:
            strides, dil, pads = [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
        group = int(node.attrs.get("group", 1))
        if xs[0] != 1:
            raise _Unsupported(node, "batch size must be 1")
        m, s = multipliers(x.scale * sw / so)
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("conv", node.name, [x_name], [out], {
            "weights": wv.astype(np.int8), "bias": bias, "mult": m, "shift": s,
            "C": xs[1], "H": xs[2], "W": xs[3], "M": M, "OH": ys[2], "OW": ys[3], "KH": kh, "KW": kw,
            "SH": strides[0], "SW": strides[1], "PT": pads[0], "PL": pads[1], "DH": dil[0], "DW": dil[1],
            "G": group, "zx": x.zero_point, "zy": zo, "lo": lo, "hi": hi}))

    def bias(self, node: gs.Node, index: int, acc_scale: np.ndarray, channels: int) -> np.ndarray:
        """The bias in the accumulator's scale (int32), zeros without one."""
        if len(node.inputs) <= index or not node.inputs[index].name:
            return np.zeros(channels, np.int32)
        _, b = self.operand(node, index)
        if b is None:
            raise _Unsupported(node, "a bias that is not a constant")
        real = b.real().reshape(-1)
        if real.size == 1:
            real = np.full(channels, real[0])
        if real.size != channels:
            raise _Unsupported(node, f"bias of {real.size} values for {channels} channels")
        acc = np.rint(real / acc_scale)
        if np.any(np.abs(acc) > 2**31 - 1):
            raise _Unsupported(node, "bias does not fit in int32 at the accumulator's scale")
        return acc.astype(np.int32)

    def lower_dense(self, node, out, out_shape, so, zo, lo, hi) -> None:
        a_name, _ = self.operand(node, 0)
        b_name, b = self.operand(node, 1)
        if a_name is None:
            raise _Unsupported(node, f"{node.op} with a constant first operand")
        a = self.tensors[a_name]
        if node.op == "Gemm":
            if int(node.attrs.get("transA", 0)):
                raise _Unsupported(node, "Gemm with transA=1")
            alpha = float(node.attrs.get("alpha", 1.0))
            beta = float(node.attrs.get("beta", 1.0))
        else:
            alpha = beta = 1.0
        if b is None:
            b_t = self.tensors[b_name]
            if node.op != "MatMul" or len(b_t.shape) < 2:
                raise _Unsupported(node, "Gemm with a non-constant weight")
            self.lower_matmul_dynamic(node, a, b_t, out, out_shape, so, zo, lo, hi)
            return
        if b.values.dtype != np.int8 or np.any(b.zero_point != 0):
            raise _Unsupported(node, f"{node.op} weights must be int8 with zero zero-points (symmetric)")
        if b.values.ndim != 2:
            raise _Unsupported(node, f"{node.op} with a {b.values.ndim}-D constant operand")
        trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        w = b.values if trans_b else b.values.T  # [N, K]
        N, K = w.shape
        try:
            sw = b.scale_along(0 if trans_b else 1, N)
        except ValueError:
            raise _Unsupported(node, f"{node.op} weight scales are not per output column") from None
        acc_scale = a.scale * sw
        bias = self.bias(node, 2, acc_scale / beta if beta else acc_scale, N) if node.op == "Gemm" \
            else np.zeros(N, np.int32)
        # the input zero point, folded into the bias: Σ(a − za)·w = Σa·w − za·Σw
        folded = bias.astype(np.int64) - a.zero_point * w.astype(np.int64).sum(axis=1)
        if np.any(np.abs(folded) > 2**31 - 1):
            raise _Unsupported(node, "bias does not fit in int32 at the accumulator's scale")
        rows = a.size // K
        if a.shape[-1] != K:
            raise _Unsupported(node, f"operand shapes {a.shape} × {b.values.shape} do not match")
        m, s = multipliers(alpha * acc_scale / so)
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("dense", node.name, [a_name], [out], {
            "weights": np.ascontiguousarray(w.astype(np.int8)), "bias": folded.astype(np.int32), "mult": m,
            "shift": s, "rows": rows, "K": K, "N": N, "zy": zo, "lo": lo, "hi": hi}))

    def lower_matmul_dynamic(self, node, a, b, out, out_shape, so, zo, lo, hi) -> None:
        if len(a.shape) < 2 or a.shape[:-2] != b.shape[:-2] and len(b.shape) != 2:
            raise _Unsupported(node, "MatMul with broadcast batch dimensions")
        M_, K = a.shape[-2:]
        N = b.shape[-1]
        batch = int(np.prod(a.shape[:-2], dtype=np.int64))
        b_batch = int(np.prod(b.shape[:-2], dtype=np.int64)) if len(b.shape) > 2 else 1
        m, s = quantize_multiplier(a.scale * b.scale / so)
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("matmul", node.name, [a.name, b.name], [out], {
            "batch": batch, "b_step": K * N if b_batch > 1 else 0, "M": M_, "K": K, "N": N, "za": a.zero_point,
            "zb": b.zero_point, "mult": m, "shift": s, "zy": zo, "lo": lo, "hi": hi}))

    def lower_binary(self, node, out, out_shape, so, zo, lo, hi) -> None:
        names = []
        for i in range(2):
            name, dq = self.operand(node, i)
            if name is None:
                try:
                    name = self.const_operand(dq, self.fresh(node.inputs[i].name), dq.values.shape)
                except ValueError:
                    raise _Unsupported(node, f"{node.op} by a per-channel constant") from None
            names.append(name)
        a, b = self.tensors[names[0]], self.tensors[names[1]]
        dims, a_str, b_str = _broadcast(a.shape, b.shape, out_shape)
        if dims is None:
            raise _Unsupported(node, f"broadcast of {a.shape} and {b.shape} to {out_shape}")
        params = {"dims": dims, "a_strides": a_str, "b_strides": b_str, "za": a.zero_point, "zb": b.zero_point,
                  "zy": zo, "lo": lo, "hi": hi}
        if node.op == "Mul":
            params["mult"], params["shift"] = quantize_multiplier(a.scale * b.scale / so)
            kind = "mul"
        else:
            sign = -1.0 if node.op == "Sub" else 1.0
            ra, rb = a.scale / so, sign * b.scale / so
            big = max(abs(ra), abs(rb))
            shift = min(62, 30 - math.frexp(big)[1])  # |m| < 2^30: (x − z)·m fits in 40 bits
            params["ma"], params["mb"] = int(round(ra * 2.0**shift)), int(round(rb * 2.0**shift))
            if shift < 1:
                raise _Unsupported(node, "output scale far smaller than the inputs'")
            params["shift"] = shift
            kind = "add"
        self.add_tensor(out, out_shape, so, zo)
        inplace = tuple(a.shape) == tuple(out_shape) and a.data is None
        self.ops.append(Op(kind, node.name, names, [out], params, inplace=inplace))

    def lower_avgpool(self, node, out, out_shape, so, zo, lo, hi) -> None:
        x_name, _ = self.operand(node, 0)
        x = self.tensors[x_name]
        if node.op == "ReduceMean":
            axes = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else node.attrs.get("axes")
            rank = len(x.shape)
            if axes is None:
                raise _Unsupported(node, "ReduceMean over all axes")
            axes = sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))
            if axes != list(range(axes[0], rank)):
                raise _Unsupported(node, "ReduceMean over axes that are not the trailing ones")
            outer = int(np.prod(x.shape[:axes[0]], dtype=np.int64))
            count = int(np.prod(x.shape[axes[0]:], dtype=np.int64))
            kind = "mean"
        elif node.op == "GlobalAveragePool":
            outer = int(np.prod(x.shape[:2], dtype=np.int64))
            count = int(np.prod(x.shape[2:], dtype=np.int64))
            kind = "mean"
        else:
            kind = "avgpool"
        if kind == "mean":
            m, s = quantize_multiplier(x.scale / (so * count))
            self.add_tensor(out, out_shape, so, zo)
            self.ops.append(Op("mean", node.name, [x_name], [out], {
                "outer": outer, "count": count, "zx": x.zero_point, "mult": m, "shift": s, "zy": zo,
                "lo": lo, "hi": hi}))
            return
        params = _pool_params(node, x.shape, out_shape)
        include_pad = int(node.attrs.get("count_include_pad", 0))
        counts = np.arange(1, params["KH"] * params["KW"] + 1)
        m, s = multipliers(x.scale / (so * counts))
        params.update({"mult": m, "shift": s, "include_pad": include_pad, "zx": x.zero_point, "zy": zo,
                       "lo": lo, "hi": hi})
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("avgpool", node.name, [x_name], [out], params))

    def lower_gather(self, node, out, out_shape, so, zo, lo, hi) -> None:
        """An embedding lookup: rows of a constant table picked by int32 indices. The table is
        requantized to the output's scale at compile time (float32, as onnxruntime computes
        DQ → Gather → Q), so the kernel only copies rows."""
        table = self.const_dq.get(node.inputs[0].name)
        idx = self.tensors.get(node.inputs[1].name)
        if table is None or idx is None or idx.dtype != "int32":
            raise _Unsupported(node, "Gather needs a constant (dequantized) table and integer indices from a "
                                     "graph input")
        if int(node.attrs.get("axis", 0)) != 0:
            raise _Unsupported(node, "Gather along an axis other than 0")
        real = (table.values.astype(np.float32) - np.float32(table.zero_point.reshape(-1)[0])) * \
            np.float32(table.scale.reshape(-1)[0]) if table.scale.size == 1 else table.real().astype(np.float32)
        q = np.clip(np.rint(real / np.float32(so)) + zo, lo, hi).astype(np.int8)
        rows = table.values.shape[0]
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("gather_rows", node.name, [idx.name], [out], {
            "table": q.reshape(rows, -1), "count": idx.size, "rows": rows, "row": int(q.size // rows)}))

    def lower_layernorm(self, node, out, out_shape, so, zo, lo, hi) -> None:
        """LayerNormalization over the last axis in integers: with ``t = N·(x − zx) − Σ(x − zx)``
        and ``D = N·Σ(x − zx)² − (Σ(x − zx))² + ε·N²/s²``, the normalised value is ``t/√D``
        (computed per row with one integer square root), then ``γ_j/s_y`` as a fixed-point
        multiplier per channel and ``β_j/s_y`` in Q16 give the output."""
        x_name, _ = self.operand(node, 0)
        x = self.tensors[x_name]
        axis = int(node.attrs.get("axis", -1)) % len(x.shape)
        if axis != len(x.shape) - 1:
            raise _Unsupported(node, "LayerNormalization over axes other than the last")
        n = x.shape[-1]
        if n > 4096:
            raise _Unsupported(node, "LayerNormalization over more than 4096 values")
        gamma = self.operand(node, 1)[1]
        beta = self.operand(node, 2)[1] if len(node.inputs) > 2 and node.inputs[2].name else None
        if gamma is None:
            raise _Unsupported(node, "LayerNormalization with a non-constant scale")
        g = np.broadcast_to(gamma.real().reshape(-1), (n,)).astype(np.float64)
        b = np.zeros(n) if beta is None else np.broadcast_to(beta.real().reshape(-1), (n,)).astype(np.float64)
        eps = float(node.attrs.get("epsilon", 1e-5))
        m, sh = multipliers(g / so)
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("layernorm", node.name, [x_name], [out], {
            "rows": x.size // n, "length": n, "zx": x.zero_point, "eps": int(round(eps * n * n / x.scale**2)),
            "mult": m, "shift": sh, "beta_q16": np.rint(b / so * 65536).astype(np.int32), "zy": zo, "lo": lo,
            "hi": hi}, inplace=True))

    def lower_lrn(self, node, out, out_shape, so, zo, lo, hi) -> None:
        """LRN across channels in integers. With ``v = x − zx`` and ``S`` the sum of ``v²`` over
        the channel window, the output is ``zy + v·g(S)`` where
        ``g(S) = (s_x/s_y)·(bias + α·s_x²·S/size)^−β``. ``g`` is tabulated at compile time on a
        grid that is exact for ``S < 32`` and has 32 points per octave above, in Q(``gbits``),
        and the kernel interpolates linearly between grid points: relative error below 1e-4,
        far under half a quantization step for every int8 output."""
        x_name, _ = self.operand(node, 0)
        x = self.tensors[x_name]
        if len(x.shape) < 3 or x.shape[0] != 1:
            raise _Unsupported(node, "LRN needs an N×C×… input with batch size 1")
        size = int(node.attrs["size"])
        alpha = float(node.attrs.get("alpha", 1e-4))
        beta = float(node.attrs.get("beta", 0.75))
        bias = float(node.attrs.get("bias", 1.0))
        channels = x.shape[1]
        s_max = min(size, channels) * 255 * 255
        top = max(5, s_max.bit_length() - 1)  # octave of the largest sum
        grid = np.concatenate([np.arange(32), [(32 + m) << (e - 5) for e in range(5, top + 1) for m in range(32)],
                               [64 << (top - 5)]]).astype(np.float64)
        g = (x.scale / so) * (bias + alpha * x.scale**2 * grid / size) ** -beta
        if not np.all(np.isfinite(g)) or g.max() <= 0:
            raise _Unsupported(node, f"LRN with bias={bias:g} and beta={beta:g} has no finite scale factor")
        gbits = min(40, 30 - math.frexp(float(g.max()))[1])  # table values below 2^30
        if gbits < 1:
            raise _Unsupported(node, f"LRN output scale {so:g} is far smaller than its input's")
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("lrn", node.name, [x_name], [out], {
            "C": channels, "inner": x.size // channels, "before": (size - 1) // 2, "after": size // 2,
            "zx": x.zero_point, "table": np.rint(g * 2.0**gbits).astype(np.int32), "gbits": gbits, "zy": zo,
            "lo": lo, "hi": hi}))

    def lower_softmax(self, node, out, out_shape, so, zo) -> None:
        x_name, _ = self.operand(node, 0)
        x = self.tensors[x_name]
        rank = len(x.shape)
        axis = int(node.attrs.get("axis", -1)) % rank
        if self.model.opset < 13:  # opset < 13: softmax over the flattened trailing axes
            length = int(np.prod(x.shape[axis:], dtype=np.int64))
        else:
            if axis != rank - 1:
                raise _Unsupported(node, "Softmax over an axis that is not the last")
            length = x.shape[-1]
        # exp(s·(x − max)) for the 256 possible differences, in Q20
        diffs = np.arange(256, dtype=np.float64)
        table = np.rint(np.exp(-x.scale * diffs) * (1 << 20)).astype(np.int32)
        m, sh = quantize_multiplier(1.0 / so)  # 1/s_y = m·2^-sh
        if not 1 <= sh <= 30:
            raise _Unsupported(node, f"Softmax output scale {so:g} outside [2^-30, 1]")
        self.add_tensor(out, out_shape, so, zo)
        self.ops.append(Op("softmax", node.name, [x_name], [out], {
            "rows": x.size // length, "length": length, "table": table, "mult": m, "shift": sh, "zy": zo}))


def _quant_bound(value: float, scale: float, zp: int, default: int) -> int:
    if not math.isfinite(value):
        return default
    return int(np.clip(np.rint(value / scale) + zp, INT8_MIN, INT8_MAX))


def _strides(shape) -> list[int]:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return strides


def _transpose_params(shape, perm) -> dict:
    in_strides = _strides(shape)
    out_shape = [shape[p] for p in perm]
    strides = [in_strides[p] for p in perm]
    # merge output axes that stay contiguous in the input
    dims, st = [], []
    for d, s in zip(out_shape, strides, strict=True):
        if d == 1:
            continue
        if dims and st[-1] == s * d:
            dims[-1] *= d
            st[-1] = s
        else:
            dims.append(d)
            st.append(s)
    return {"shape": dims or [1], "in_strides": st or [1], "offset": 0}


def _broadcast(a, b, out) -> tuple[list[int] | None, list[int], list[int]]:
    """Output dims and element strides of ``a`` and ``b`` (0 where broadcast), merged to ≤ 4 axes."""
    rank = len(out)
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    sa, sb = _strides(a), _strides(b)
    dims, ast, bst = [], [], []
    for d, da, db, xa, xb in zip(out, a, b, sa, sb, strict=True):
        if d == 1:
            continue
        ea = xa if da == d else 0
        eb = xb if db == d else 0
        if dims and ast[-1] == ea * d and bst[-1] == eb * d:
            dims[-1] *= d
            ast[-1], bst[-1] = ea, eb
        else:
            dims.append(d)
            ast.append(ea)
            bst.append(eb)
    if not dims:
        dims, ast, bst = [1], [0], [0]
    if len(dims) > 4:
        return None, [], []
    pad = 4 - len(dims)
    return [1] * pad + dims, [0] * pad + ast, [0] * pad + bst


def _same_pads(in_sp, out_sp, k_sp, strides, dil, mode) -> list[int]:
    begins, ends = [], []
    for i, o, k, s, d in zip(in_sp, out_sp, k_sp, strides, dil, strict=True):
        total = max(0, (o - 1) * s + (k - 1) * d + 1 - i)
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return begins + ends


def _pool_params(node: gs.Node, in_shape, out_shape) -> dict:
    if node.op == "GlobalMaxPool":
        kernel = list(in_shape[2:])
        strides, pads = [1] * len(kernel), [0] * (2 * len(kernel))
    else:
        kernel = list(node.attrs["kernel_shape"])
        strides = list(node.attrs.get("strides", [1] * len(kernel)))
        pads = list(node.attrs.get("pads", [0] * (2 * len(kernel))))
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(in_shape[2:], out_shape[2:], kernel, strides, [1] * len(kernel), auto_pad)
        if any(d != 1 for d in node.attrs.get("dilations", [1] * len(kernel))):
            raise _Unsupported(node, "dilated pooling")
    if len(kernel) == 1:
        kernel, strides, pads = [1] + kernel, [1] + strides, [0, pads[0], 0, pads[1]]
        in_shape = (in_shape[0], in_shape[1], 1, in_shape[2])
        out_shape = (out_shape[0], out_shape[1], 1, out_shape[2])
    if len(kernel) != 2:
        raise _Unsupported(node, f"{len(kernel)}-D pooling")
    return {"C": in_shape[0] * in_shape[1], "H": in_shape[2], "W": in_shape[3], "OH": out_shape[2],
            "OW": out_shape[3], "KH": kernel[0], "KW": kernel[1], "SH": strides[0], "SW": strides[1],
            "PT": pads[0], "PL": pads[1]}


def _run_region_table(model: Model, region: list[gs.Node], float_out: str, in_scale: float, in_zp: int,
                      out_scale: float, out_zp: int) -> np.ndarray:
    """Run DQ → region → Q on all 256 int8 values with onnxruntime (the reference engine)."""
    import onnxruntime as ort

    nodes, inits, seen = [], {}, set()
    order = {id(n): i for i, n in enumerate(model.graph.nodes)}
    for node in sorted(region, key=lambda n: order.get(id(n), 0)):
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op == "DequantizeLinear" and _const(node.inputs[0]) is None:
            # the int8 source, whatever its name and quantization (both given below)
            nodes.append(helper.make_node(node.op, ["lut_in", "lut_in_scale", "lut_in_zp"],
                                          [node.outputs[0].name], name=node.name))
            continue
        inputs = []
        for t in node.inputs:
            if not t.name:
                inputs.append("")
                continue
            value = _const(t)
            if value is not None:
                inits[t.name] = numpy_helper.from_array(np.asarray(value), t.name)
            inputs.append(t.name)
        attrs = {k: (v.values if isinstance(v, gs.Constant) else v) for k, v in node.attrs.items()}
        nodes.append(helper.make_node(node.op, inputs, [t.name for t in node.outputs], name=node.name, **attrs))
    inits["lut_in_scale"] = numpy_helper.from_array(np.array(in_scale, np.float32), "lut_in_scale")
    inits["lut_in_zp"] = numpy_helper.from_array(np.array(in_zp, np.int8), "lut_in_zp")
    inits["lut_out_scale"] = numpy_helper.from_array(np.array(out_scale, np.float32), "lut_out_scale")
    inits["lut_out_zp"] = numpy_helper.from_array(np.array(out_zp, np.int8), "lut_out_zp")
    nodes.append(helper.make_node("QuantizeLinear", [float_out, "lut_out_scale", "lut_out_zp"], ["lut_out"]))
    graph = helper.make_graph(nodes, "lut", [helper.make_tensor_value_info("lut_in", TensorProto.INT8, [256])],
                              [helper.make_tensor_value_info("lut_out", TensorProto.INT8, [256])],
                              list(inits.values()))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d or "", v)
                                                    for d, v in model._used_opsets().items()])
    proto.ir_version = min(onnx.IR_VERSION, 10)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = np.arange(-128, 128, dtype=np.int8)
    return session.run(None, {"lut_in": values})[0].astype(np.int8)


def lower(model: Model) -> Program:
    """The integer program of a Q/DQ int8 model; raises :class:`BackendError` listing every node
    it cannot lower."""
    lowering = _Lowering(model)
    program = lowering.run()
    lowering.unsupported = list(dict.fromkeys(lowering.unsupported))
    if lowering.unsupported:
        raise _unsupported_error(lowering.unsupported)
    return program


def unsupported(model: Model) -> list[tuple[str, str, str]]:
    """(node, op, reason) for every node :func:`lower` cannot handle (first causes only: nodes
    that only read an unsupported node's output are not listed)."""
    lowering = _Lowering(model)
    try:
        lowering.run()
    except BackendError as exc:
        return [("", "", str(exc))]
    return list(dict.fromkeys(lowering.unsupported))


def _unsupported_error(items: list[tuple[str, str, str]]) -> BackendError:
    first = items[0]
    lines = "; ".join(f"{name} ({op}): {reason}" for name, op, reason in items[:5])
    more = f" and {len(items) - 5} more" if len(items) > 5 else ""
    return BackendError(f"{len(items)} node(s) cannot run as Cortex-M integer kernels: {lines}{more}",
                        where=f"node '{first[0]}' ({first[1]})",
                        hint="quantize the model with a Cortex-M target (presso.quantize(model, data, "
                             "target='cortex-m4')) so that every op runs in int8; ops without a kernel "
                             "must be removed or rewritten")

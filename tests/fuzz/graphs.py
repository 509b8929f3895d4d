"""Random valid ONNX graphs for differential fuzzing.

A graph is built op by op on float32 activations whose shapes are tracked while building, so
every graph is typed and shape-valid by construction: Conv/ConvTranspose (groups, strides,
dilations, pads, auto_pad), BatchNormalization, Gemm/MatMul, unary and broadcasting binary
element-wise ops, Reshape (literal targets and Shape→Gather→Concat subgraphs), Flatten,
Transpose, Concat, Split, Slice, Pad, Resize, Expand, pooling, Softmax/LogSoftmax,
LayerNormalization, reductions, Dropout with its mask, decomposed GELU/HardSwish/LayerNorm/
softmax/Clip chains (what the fusion passes look for), Constant/ConstantOfShape weights and
small constant subgraphs, shared weights, ``If`` nodes whose branches read tensors of the
outer graph (Conv+BN, Identity of an outer tensor, nested If), int64 and constant graph
outputs, exporter-style tensor names and unnamed nodes. Opsets 11–21, each op in the form
its opset wants (attribute vs input for Split/Slice/Pad/Resize/ReduceX axes, ops that only
exist from some opset). The batch axis is static or the symbol ``"N"``; a symbolic batch stays on axis 0.

Choices come from a :class:`Chooser`: :class:`RandomChooser` (a numpy generator, for
``benchmarks/fuzz.py``: graph *i* is always the same graph, for one version of this file) or, through
:func:`graphs`, hypothesis' ``draw`` (tests: shrinking, reproducible with ``derandomize``).
Hypothesis is imported only by :func:`graphs`.

Not covered: non-float activations, dynamic spatial dims, Loop/Scan, initializers that are
also graph inputs (see tests/passes/test_fuzz_regressions.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N = "N"  # the symbolic batch dimension
MAX_ELEMENTS = 2048  # per batch item: keeps every graph cheap to run
OPSETS = tuple(range(11, 22))
INT64_MAX = 2**63 - 1


class Chooser:
    """Where the generator's choices come from."""

    def integer(self, low: int, high: int) -> int:  # inclusive bounds
        raise NotImplementedError

    def choice(self, options):
        options = list(options)
        return options[self.integer(0, len(options) - 1)]

    def boolean(self, p: float = 0.5) -> bool:
        return self.integer(0, 999) < int(p * 1000)


class RandomChooser(Chooser):
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))


class DrawChooser(Chooser):
    """Choices drawn from hypothesis (so that failing graphs shrink)."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def integer(self, low: int, high: int) -> int:
        return self.draw(self.st.integers(low, high))

    def choice(self, options):
        return self.draw(self.st.sampled_from(list(options)))

    def boolean(self, p: float = 0.5) -> bool:
        return self.integer(0, 999) < int(p * 1000)


@dataclass
class FuzzGraph:
    """A generated model and what is needed to run it."""

    proto: onnx.ModelProto
    opset: int
    input_shapes: dict[str, tuple]  # may hold N
    ops: list[str] = field(default_factory=list)  # the op kinds, in build order
    batch: int = 2  # the size N takes at run time

    @property
    def dynamic(self) -> bool:
        return any(N in s for s in self.input_shapes.values())

    def static_shapes(self) -> dict[str, list[int]]:
        return {k: [self.batch if d == N else d for d in s] for k, s in self.input_shapes.items()}

    def feeds(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {k: rng.standard_normal(s).astype(np.float32) for k, s in self.static_shapes().items()}

    def describe(self) -> str:
        shapes = ", ".join(f"{k}{list(s)}" for k, s in self.input_shapes.items())
        return f"opset {self.opset}, inputs {shapes}: {' → '.join(self.ops)}"


def graphs(opsets=OPSETS, max_ops: int = 10):
    """Hypothesis strategy of :class:`FuzzGraph`."""
    from hypothesis import strategies as st

    @st.composite
    def strategy(draw):
        return build_graph(DrawChooser(draw), opsets=opsets, max_ops=max_ops)

    return strategy()


def random_graph(seed: int, opsets=OPSETS, max_ops: int = 10) -> FuzzGraph:
    """Graph number ``seed`` of the campaign (deterministic)."""
    return build_graph(RandomChooser(seed), opsets=opsets, max_ops=max_ops)


def ir_version_for(opset: int) -> int:
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])


def _numel(shape) -> int:
    return int(np.prod([d for d in shape[1:] if d != N], dtype=np.int64)) if len(shape) > 1 else 1


class _Scope:
    """Nodes and initializers of one graph (the main graph or an If branch)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []


class Builder:
    """Builds one graph; each op method returns the new tensor's name or None if the op does
    not fit the current tensor (the caller then tries another)."""

    def __init__(self, c: Chooser, opset: int):
        self.c, self.opset = c, opset
        self.rng = np.random.default_rng(c.integer(0, 2**31 - 1))
        self.shapes: dict[str, tuple] = {}
        self.scope = _Scope()
        self.count = 0
        self.ops: list[str] = []
        self.weights: dict[tuple, list[str]] = {}  # for sharing
        self.dtypes: dict[str, str] = {}  # tensors that are not float32
        self.style = c.choice(["plain"] * 5 + ["torch", "tf", "dotted"])

    # ---- naming and constants ------------------------------------------------------------
    def name(self, base: str) -> str:
        """A fresh name in the graph's naming style: plain, or as exporters write them."""
        self.count += 1
        if self.style == "torch":
            return f"/{base}/{base.capitalize()}_{self.count}_output_0"
        if self.style == "tf":
            return f"model/{base}_{self.count}/BiasAdd:0"
        if self.style == "dotted":
            return f"onnx::{base}.{self.count}"
        return f"{base}_{self.count}"

    def const(self, array: np.ndarray, base: str = "c", *, allow_fill: bool = False) -> str:
        """A constant as an initializer, a Constant node or (filled float tensors) ConstantOfShape."""
        array = np.asarray(array)
        name = self.name(base)
        how = self.c.choice(["init", "init", "constant"] + (["fill"] if allow_fill and array.ndim else []))
        if how == "constant":
            self.scope.nodes.append(helper.make_node("Constant", [], [name], name=self.name("Constant"),
                                                     value=numpy_helper.from_array(array, name + "_value")))
        elif how == "fill":
            shape = self.name("shape")
            self.scope.inits.append(numpy_helper.from_array(np.array(array.shape, np.int64), shape))
            fill = float(array.flat[0])
            self.scope.nodes.append(helper.make_node(
                "ConstantOfShape", [shape], [name], name=self.name("ConstantOfShape"),
                value=helper.make_tensor("value", TensorProto.FLOAT, [1], [fill])))
            array = np.full(array.shape, fill, np.float32)
        else:
            self.scope.inits.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values, base: str = "i") -> str:
        return self.const(np.array(values, np.int64), base)

    def weight(self, shape, scale: float = 1.0, *, positive: bool = False, plain: bool = False) -> str:
        """A float constant: an initializer, Constant or ConstantOfShape, a small constant
        subgraph (Transpose/Add of constants: work for fold-constants), or an earlier weight of
        the same shape and kind (shared weights: a pass must not rewrite one for two readers)."""
        key = (tuple(shape), positive, self.scope)  # the scope itself: ids of dead scopes are reused
        shared = self.weights.get(key)
        if shared and self.c.boolean(0.15):
            return self.c.choice(shared)
        if positive:
            value = self.rng.uniform(0.5, 1.5, shape)
        else:
            value = self.rng.standard_normal(shape) * scale
        value = value.astype(np.float32)
        how = "init" if plain else self.c.choice(["plain"] * 6 + ["transpose", "add"])
        if how == "transpose" and value.ndim >= 2:
            perm = list(range(value.ndim))[::-1]
            source = self.const(np.ascontiguousarray(value.transpose(perm)), "wt")
            name = self.name("w")
            self.scope.nodes.append(helper.make_node("Transpose", [source], [name], name=self.name("Transpose"),
                                                     perm=perm))
        elif how == "add" and not positive:
            half = (value / 2).astype(np.float32)
            name = self.name("w")
            self.scope.nodes.append(helper.make_node("Add", [self.const(half, "wa"), self.const(value - half, "wb")],
                                                     [name], name=self.name("Add")))
        elif how == "init":
            name = self.name("w")
            self.scope.inits.append(numpy_helper.from_array(value, name))
        else:
            name = self.const(value, "w", allow_fill=True)
        self.weights.setdefault(key, []).append(name)
        return name

    def node(self, op: str, inputs, shape, *, outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.name(op.lower()) for _ in range(outputs)]
        self.scope.nodes.append(helper.make_node(op, list(inputs), names, name=self.name(op), **attrs))
        shapes = shape if outputs > 1 else [shape]
        for n, s in zip(names, shapes):
            self.shapes[n] = tuple(s)
        self.ops.append(op)
        return names if outputs > 1 else names[0]

    def axes_of(self, shape, *, batch_ok: bool) -> list[int]:
        """Axes an op may touch: never a symbolic batch axis."""
        return [a for a in range(len(shape)) if batch_ok or shape[a] != N]

    # ---- op families ---------------------------------------------------------------------
    def conv(self, x):
        s = self.shapes[x]
        if len(s) not in (3, 4):
            return None
        c = self.c
        cin, spatial = s[1], list(s[2:])
        cout = c.integer(1, 8)
        groups = [g for g in range(1, cin + 1) if cin % g == 0 and cout % g == 0]
        group = c.choice(groups) if c.boolean(0.4) else 1
        if c.boolean(0.15) and cin > 1:  # depthwise
            group, cout = cin, cin * c.integer(1, 2)
        ks = [c.integer(1, 3) for _ in spatial]
        strides = [c.integer(1, 2) for _ in spatial]
        dil = [c.integer(1, 2) for _ in spatial]
        attrs: dict[str, Any] = {"kernel_shape": ks}
        if c.boolean(0.5):
            attrs["strides"] = strides
        else:
            strides = [1] * len(spatial)
        auto = c.choice(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
        if c.boolean(0.4) and not auto.startswith("SAME"):  # onnxruntime: no dilation with SAME_*
            attrs["dilations"] = dil
        else:
            dil = [1] * len(spatial)
        if auto != "NOTSET":
            attrs["auto_pad"] = auto
            pads = None
        else:
            pads = [c.integer(0, 2) for _ in range(2 * len(spatial))]
            if c.boolean(0.7):
                attrs["pads"] = pads
            else:
                pads = [0] * (2 * len(spatial))
        out = []
        for i, length in enumerate(spatial):
            ek = dil[i] * (ks[i] - 1) + 1
            if auto.startswith("SAME"):
                o = -(-length // strides[i])
            elif auto == "VALID":
                o = (length - ek) // strides[i] + 1 if length >= ek else 0
            else:
                total = length + pads[i] + pads[i + len(spatial)]
                o = (total - ek) // strides[i] + 1 if total >= ek else 0
            if o < 1:
                return None
            out.append(o)
        if group > 1 or c.boolean(0.5):
            attrs["group"] = group
        inputs = [x, self.weight([cout, cin // group, *ks], 1 / math.sqrt(cin // group * int(np.prod(ks))))]
        if c.boolean(0.6):
            inputs.append(self.weight([cout], 0.3))
        return self.node("Conv", inputs, [s[0], cout, *out], **attrs)

    def conv_transpose(self, x):
        s = self.shapes[x]
        if len(s) not in (3, 4):
            return None
        c = self.c
        cin, spatial = s[1], list(s[2:])
        group = c.choice([g for g in range(1, cin + 1) if cin % g == 0]) if c.boolean(0.4) else 1
        per_group = c.integer(1, 4)
        ks = [c.integer(1, 3) for _ in spatial]
        strides = [c.integer(1, 2) for _ in spatial]
        dil = [c.integer(1, 2) if c.boolean(0.3) else 1 for _ in spatial]
        pads = [c.integer(0, dil[i % len(spatial)] * (ks[i % len(spatial)] - 1)) if c.boolean(0.5) else 0
                for i in range(2 * len(spatial))]
        out_pad = [c.integer(0, st - 1) if st > 1 and c.boolean(0.3) else 0 for st in strides]
        out = [strides[i] * (spatial[i] - 1) + out_pad[i] + dil[i] * (ks[i] - 1) + 1 - pads[i] - pads[i + len(spatial)]
               for i in range(len(spatial))]
        if min(out) < 1 or _numel([0, per_group * group, *out]) > MAX_ELEMENTS:
            return None
        attrs: dict[str, Any] = {"kernel_shape": ks, "strides": strides, "pads": pads}
        if any(d > 1 for d in dil):
            attrs["dilations"] = dil
        if any(out_pad):
            attrs["output_padding"] = out_pad
        if group > 1:
            attrs["group"] = group
        inputs = [x, self.weight([cin, per_group, *ks], 1 / math.sqrt(cin * int(np.prod(ks))))]
        if c.boolean(0.5):
            inputs.append(self.weight([per_group * group], 0.3))
        return self.node("ConvTranspose", inputs, [s[0], per_group * group, *out], **attrs)

    def batchnorm(self, x):
        s = self.shapes[x]
        if len(s) < 2 or s[1] == N:
            return None
        ch = s[1]
        plain = self.c.boolean(0.6)  # initializers: what fold-batchnorm alone can fold
        inputs = [x, self.weight([ch], positive=True, plain=plain), self.weight([ch], 0.5, plain=plain),
                  self.weight([ch], 0.5, plain=plain), self.weight([ch], positive=True, plain=plain)]
        attrs = {"epsilon": self.c.choice([1e-5, 1e-3, 0.1])}
        if self.opset >= 14 and self.c.boolean(0.3):
            attrs["training_mode"] = 0
        return self.node("BatchNormalization", inputs, s, **attrs)

    def gemm(self, x):
        s = self.shapes[x]
        if len(s) != 2:
            return None
        c = self.c
        k, n = s[1], c.integer(1, 12)
        trans_b = c.integer(0, 1)
        attrs: dict[str, Any] = {}
        if trans_b or c.boolean(0.3):
            attrs["transB"] = trans_b
        if c.boolean(0.3):
            attrs["alpha"] = c.choice([0.5, 1.0, 2.0])
        inputs = [x, self.weight([n, k] if trans_b else [k, n], 1 / math.sqrt(k))]
        bias = c.choice(["none", "vector", "row", "scalar"])
        if bias != "none":
            inputs.append(self.weight({"vector": [n], "row": [1, n], "scalar": [1]}[bias], 0.3))
            if c.boolean(0.3):
                attrs["beta"] = c.choice([0.5, 1.0, 2.0])
        return self.node("Gemm", inputs, [s[0], n], **attrs)

    def matmul(self, x):
        s = self.shapes[x]
        if len(s) < 2:
            return None
        c = self.c
        if len(s) >= 3 and c.boolean(0.3) and s[-2] != N and s[-1] != N:  # x @ xᵀ: two activations
            perm = list(range(len(s)))
            perm[-1], perm[-2] = perm[-2], perm[-1]
            t = self.node("Transpose", [x], [s[p] for p in perm], perm=perm)
            return self.node("MatMul", [x, t], [*s[:-1], s[-2]])
        if s[-1] == N:
            return None
        k, n = s[-1], c.integer(1, 12)
        if _numel([*s[:-1], n]) > MAX_ELEMENTS:
            return None
        return self.node("MatMul", [x, self.weight([k, n], 1 / math.sqrt(k))], [*s[:-1], n])

    def unary(self, x):
        s, c = self.shapes[x], self.c
        ops = ["Relu", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Abs", "Neg", "Elu", "HardSigmoid", "Softsign",
               "Clip", "Erf", "Identity", "Dropout", "Softplus", "Selu"]
        if self.opset >= 14:
            ops.append("HardSwish")
        if self.opset >= 18:
            ops.append("Mish")
        if self.opset >= 20:
            ops.append("Gelu")
        op = c.choice(ops)
        if op == "Clip":
            low = float(c.choice([-1.0, 0.0, -0.5]))
            inputs = [x, self.const(np.array(low, np.float32))]
            if c.boolean(0.7):
                inputs.append(self.const(np.array(c.choice([1.0, 6.0, 0.5]), np.float32)))
            elif c.boolean(0.5):
                inputs = [x]
            return self.node("Clip", inputs, s)
        if op == "Dropout" and self.opset >= 12 and c.boolean(0.4):  # mask output read too
            inputs = [x]
            if c.boolean():
                inputs += [self.const(np.array(0.3, np.float32)), self.const(np.array(False))]
            y, mask = self.node("Dropout", inputs, [s, s], outputs=2)
            as_float = self.node("Cast", [mask], s, to=TensorProto.FLOAT)
            return self.node("Mul", [y, as_float], s)
        attrs = {}
        if op == "LeakyRelu" and c.boolean():
            attrs["alpha"] = 0.2
        if op == "Gelu" and c.boolean():
            attrs["approximate"] = "tanh"
        return self.node(op, [x], s, **attrs)

    def binary(self, x, pool):
        s, c = self.shapes[x], self.c
        op = c.choice(["Add", "Add", "Sub", "Mul", "Mul", "Div", "Max", "Min"])
        others = [t for t in pool if t != x and _broadcastable(self.shapes[t], s) == s]
        if op != "Div" and others and c.boolean(0.5):
            other = c.choice(others)
            operands = [x, other] if c.boolean() else [other, x]
            return self.node(op, operands, s)
        # a constant that broadcasts: some axes 1, maybe fewer leading axes, maybe bigger where x has 1
        shape = []
        for d in s:
            if d == N or c.boolean(0.4):
                shape.append(1)
            elif d == 1 and c.boolean(0.2):
                shape.append(c.integer(2, 4))
            else:
                shape.append(d)
        drop = c.integer(0, len(shape))
        while drop and shape and shape[0] == 1:
            shape.pop(0)
            drop -= 1
        out = _broadcastable(s, tuple(shape))
        if out is None or _numel(out) > MAX_ELEMENTS:
            return None
        if op == "Div":
            value = self.rng.uniform(0.5, 2.0, shape) * self.rng.choice([-1, 1], shape)
            other = self.const(value.astype(np.float32), "d")
        else:
            other = self.weight(shape, 0.5)
        operands = [x, other] if op in ("Div", "Sub") or c.boolean() else [other, x]
        return self.node(op, operands, out)

    def reshape(self, x):
        s, c = self.shapes[x], self.c
        if len(s) < 2:
            return None
        kind = c.choice(["flatten", "split_dim", "merge", "shape_subgraph", "flatten_op"])
        if kind == "flatten_op":
            if s[0] == N or c.boolean(0.5):
                axis = 1
            else:
                axis = c.integer(0, len(s))
            if axis == 1:
                out = [s[0], _numel(s)]
            else:
                out = [int(np.prod(s[:axis], dtype=np.int64)), int(np.prod(s[axis:], dtype=np.int64))]
            attrs = {"axis": axis} if axis != 1 or c.boolean() else {}
            return self.node("Flatten", [x], out, **attrs)
        if kind == "flatten":
            if len(s) < 3:
                return None
            target, out = [0, -1], [s[0], _numel(s)]
        elif kind == "split_dim":
            axes = [a for a in range(1, len(s)) if s[a] != N and s[a] >= 4 and _divisor(s[a]) > 1]
            if not axes or len(s) >= 5:
                return None
            a = c.choice(axes)
            f = _divisor(s[a])
            out = [*s[:a], f, s[a] // f, *s[a + 1:]]
            target = [0 if i == 0 and s[0] == N else d for i, d in enumerate(out)]
            if c.boolean(0.4):
                target[c.choice([i for i in range(len(out)) if i != 0 or s[0] != N])] = -1
        elif kind == "merge":
            if len(s) < 3:
                return None
            a = c.integer(1, len(s) - 2)
            out = [*s[:a], s[a] * s[a + 1], *s[a + 2:]]
            target = [0 if i == 0 else d for i, d in enumerate(out)]
            if c.boolean(0.4):
                target[a] = -1
        else:  # Shape → Gather(batch) → Concat(…, rest) → Reshape
            if len(s) < 3:
                return None
            shape = self.node_shape_of(x)
            head = self.node("Gather", [shape, self.ints([0])], [1], axis=0)
            rest = self.ints([-1] if c.boolean() else [_numel(s)])
            target_name = self.node("Concat", [head, rest], [2], axis=0)
            return self.node("Reshape", [x, target_name], [s[0], _numel(s)])
        return self.node("Reshape", [x, self.ints(target)], out)

    def node_shape_of(self, x) -> str:
        s = self.shapes[x]
        if self.opset >= 15 and self.c.boolean(0.3):
            return self.node("Shape", [x], [len(s)], start=0)
        return self.node("Shape", [x], [len(s)])

    def transpose(self, x):
        s, c = self.shapes[x], self.c
        if len(s) < 2:
            return None
        fixed = [0] if s[0] == N else []
        free = [a for a in range(len(s)) if a not in fixed]
        order = list(free)
        for i in range(len(order) - 1, 0, -1):
            j = c.integer(0, i)
            order[i], order[j] = order[j], order[i]
        perm = fixed + order
        if c.boolean(0.15) and not fixed:
            return self.node("Transpose", [x], list(reversed(s)))  # no perm: reverse
        return self.node("Transpose", [x], [s[p] for p in perm], perm=perm)

    def concat(self, x, pool):
        s, c = self.shapes[x], self.c
        axes = self.axes_of(s, batch_ok=False)
        if not axes:
            return None
        axis = c.choice(axes)
        partners = [t for t in pool if t != x and len(self.shapes[t]) == len(s)
                    and all(a == b or i == axis for i, (a, b) in enumerate(zip(self.shapes[t], s)))]
        if partners and c.boolean(0.5):
            other = c.choice(partners)
        elif N not in s and c.boolean(0.3):
            other_shape = list(s)
            other_shape[axis] = c.integer(1, 3)
            other = self.weight(other_shape, 0.5)
            self.shapes[other] = tuple(other_shape)
        else:
            other = self.node("Relu" if c.boolean() else "Neg", [x], s)
        out = list(s)
        out[axis] = s[axis] + self.shapes[other][axis]
        if _numel(out) > MAX_ELEMENTS:
            return None
        operands = [x, other] if c.boolean() else [other, x]
        return self.node("Concat", operands, out, axis=axis - len(s) if c.boolean(0.3) else axis)

    def split(self, x, pool):
        s, c = self.shapes[x], self.c
        axes = [a for a in self.axes_of(s, batch_ok=False) if s[a] >= 2]
        if not axes:
            return None
        axis = c.choice(axes)
        dim = s[axis]
        parts = c.integer(2, min(3, dim))
        attrs: dict[str, Any] = {"axis": axis}
        inputs = [x]
        form = c.choice(["sizes", "equal"])
        if form == "equal" and (self.opset >= 18 or dim % parts == 0):
            if self.opset >= 18:
                attrs["num_outputs"] = parts
                chunk = -(-dim // parts)
                sizes = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
                if len(sizes) != parts:  # e.g. 4 in 3 chunks of 2: not a valid num_outputs
                    return None
            else:
                sizes = [dim // parts] * parts
        else:
            cuts = sorted(set(c.integer(1, dim - 1) for _ in range(parts - 1)))
            sizes = [b - a for a, b in zip([0, *cuts], [*cuts, dim])]
            parts = len(sizes)
            if self.opset >= 13:
                inputs.append(self.ints(sizes))
            else:
                attrs["split"] = sizes
        shapes = [[*s[:axis], n, *s[axis + 1:]] for n in sizes]
        outs = self.node("Split", inputs, shapes, outputs=parts, **attrs)
        pool.extend(outs[1:])
        return outs[0]

    def slice(self, x):
        s, c = self.shapes[x], self.c
        axes = [a for a in self.axes_of(s, batch_ok=False)]
        if not axes:
            return None
        chosen = sorted(set(c.choice(axes) for _ in range(c.integer(1, 2))))
        starts, ends, steps, out = [], [], [], list(s)
        for a in chosen:
            dim = s[a]
            step = c.choice([1, 1, 1, 2, -1, -2])
            start = c.integer(-dim - 1, dim + 1)
            end = c.choice([c.integer(-dim - 1, dim + 1), INT64_MAX, -INT64_MAX - 1])
            n = len(range(*slice(start, end, step).indices(dim)))
            if n < 1:
                return None
            starts.append(start), ends.append(end), steps.append(step)
            out[a] = n
        inputs = [x, self.ints(starts), self.ints(ends)]
        use_axes = any(a != i for i, a in enumerate(chosen)) or c.boolean(0.7) or steps != [1] * len(steps)
        if use_axes:
            inputs.append(self.ints([a - len(s) if c.boolean(0.3) else a for a in chosen]))
            if steps != [1] * len(steps) or c.boolean(0.3):
                inputs.append(self.ints(steps))
        return self.node("Slice", inputs, out)

    def pad(self, x):
        s, c = self.shapes[x], self.c
        axes = self.axes_of(s, batch_ok=False)
        if not axes:
            return None
        modes = ["constant", "constant", "reflect", "edge"] + (["wrap"] if self.opset >= 19 else [])
        mode = c.choice(modes)
        use_axes = self.opset >= 18 and c.boolean(0.4)
        padded = sorted(set(c.choice(axes) for _ in range(c.integer(1, 2)))) if use_axes else list(range(len(s)))
        begin, end, out = [], [], list(s)
        for a in padded:
            if a not in axes:
                begin.append(0), end.append(0)
                continue
            limit = s[a] - 1 if mode == "reflect" else (s[a] if mode == "wrap" else 2)
            lo = -1 if mode == "constant" and s[a] > 2 else 0
            b, e = c.integer(lo, min(2, limit)), c.integer(lo, min(2, limit))
            begin.append(b), end.append(e)
            out[a] = s[a] + b + e
        if _numel(out) > MAX_ELEMENTS or min(d for d in out if d != N) < 1:
            return None
        attrs = {"mode": mode} if mode != "constant" or c.boolean() else {}
        inputs = [x, self.ints(begin + end)]
        if mode == "constant" and c.boolean(0.5):
            inputs.append(self.const(np.array(c.choice([0.0, 1.5, -2.0]), np.float32)))
        if use_axes:
            if len(inputs) == 2:
                inputs.append("")
            inputs.append(self.ints(padded))
        return self.node("Pad", inputs, out, **attrs)

    def resize(self, x):
        s, c = self.shapes[x], self.c
        if len(s) not in (3, 4):
            return None
        mode = c.choice(["nearest", "nearest", "linear"] + (["cubic"] if len(s) == 4 else []))
        attrs: dict[str, Any] = {"mode": mode}
        coord = c.choice(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"])
        if coord != "half_pixel" or c.boolean():
            attrs["coordinate_transformation_mode"] = coord
        if mode == "nearest" and c.boolean():
            attrs["nearest_mode"] = c.choice(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
        if mode == "cubic" and c.boolean():
            attrs["cubic_coeff_a"] = -0.5
        use_sizes = N not in s and c.boolean(0.3)
        out = list(s)
        if use_sizes:
            for a in range(2, len(s)):
                out[a] = c.integer(1, 2 * s[a])
        else:
            scales = [1.0, 1.0]
            for a in range(2, len(s)):
                factor = c.choice([0.5, 1.0, 2.0, 3.0, 1.5])
                scales.append(factor)
                out[a] = int(math.floor(s[a] * factor))
        if min(out[2:]) < 1 or _numel(out) > MAX_ELEMENTS:
            return None
        if self.opset < 13:
            roi = self.const(np.zeros([0], np.float32), "roi")
            if use_sizes:
                inputs = [x, roi, self.const(np.zeros([0], np.float32), "scales"), self.ints(out)]
            else:
                inputs = [x, roi, self.const(np.array(scales, np.float32), "scales")]
        elif use_sizes:
            inputs = [x, "", "", self.ints(out)]
        else:
            inputs = [x, "", self.const(np.array(scales, np.float32), "scales")]
        return self.node("Resize", inputs, out, **attrs)

    def expand(self, x):
        s, c = self.shapes[x], self.c
        ones = [a for a in range(1, len(s)) if s[a] == 1]
        if not ones:
            return None
        target = [1 if d == N else d for d in s]
        out = list(s)
        for a in ones:
            if c.boolean(0.7):
                target[a] = out[a] = c.integer(2, 5)
        if _numel(out) > MAX_ELEMENTS:
            return None
        return self.node("Expand", [x, self.ints(target)], out)

    def pool(self, x):
        s, c = self.shapes[x], self.c
        if len(s) not in (3, 4):
            return None
        op = c.choice(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"])
        if op.startswith("Global"):
            return self.node(op, [x], [*s[:2], *[1] * (len(s) - 2)])
        spatial = list(s[2:])
        ks = [c.integer(1, 3) for _ in spatial]
        strides = [c.integer(1, 2) for _ in spatial]
        dil = [1] * len(spatial)
        attrs: dict[str, Any] = {"kernel_shape": ks}
        if c.boolean(0.6):
            attrs["strides"] = strides
        else:
            strides = [1] * len(spatial)
        if (op == "MaxPool" or self.opset >= 19) and c.boolean(0.25):
            dil = [c.integer(1, 2) for _ in spatial]
            attrs["dilations"] = dil
        pads = [c.integer(0, ks[i % len(spatial)] - 1) if c.boolean(0.5) else 0 for i in range(2 * len(spatial))]
        if any(pads):
            attrs["pads"] = pads
        if op == "AveragePool" and any(pads) and c.boolean():
            attrs["count_include_pad"] = 1
        totals = [length + pads[i] + pads[i + len(spatial)] - (dil[i] * (ks[i] - 1) + 1)
                  for i, length in enumerate(spatial)]
        if min(totals) < 0:
            return None
        out = [t // st + 1 for t, st in zip(totals, strides)]
        ceiled = [-(-t // st) + 1 for t, st in zip(totals, strides)]
        # ceil_mode only where no last window starts in the end padding (runtimes disagree there)
        if c.boolean(0.25) and all(o == f or (o - 1) * st < length + pads[i]
                                   for i, (o, f, st, length) in enumerate(zip(ceiled, out, strides, spatial))):
            attrs["ceil_mode"] = 1
            out = ceiled
        return self.node(op, [x], [*s[:2], *out], **attrs)

    def softmax(self, x):
        s, c = self.shapes[x], self.c
        op = c.choice(["Softmax", "Softmax", "LogSoftmax"])
        axis = c.integer(-len(s), len(s) - 1)
        attrs = {"axis": axis} if c.boolean(0.8) else {}
        return self.node(op, [x], s, **attrs)

    def layernorm(self, x):
        s, c = self.shapes[x], self.c
        if self.opset < 17 or len(s) < 2:
            return None
        axis = c.integer(1, len(s) - 1)
        normalized = list(s[axis:])
        inputs = [x, self.weight(normalized, positive=True)]
        if c.boolean(0.7):
            inputs.append(self.weight(normalized, 0.3))
        attrs: dict[str, Any] = {}
        if axis != len(s) - 1 or c.boolean(0.5):
            attrs["axis"] = axis - len(s) if c.boolean(0.3) else axis
        if c.boolean(0.3):
            attrs["epsilon"] = 1e-3
        return self.node("LayerNormalization", inputs, s, **attrs)

    def reduce(self, x):
        s, c = self.shapes[x], self.c
        axes = self.axes_of(s, batch_ok=False)
        if len(s) < 2 or not axes:
            return None
        op = c.choice(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2"])
        chosen = sorted(set(c.choice(axes) for _ in range(c.integer(1, 2))))
        keep = c.boolean(0.6)
        if not keep and len(s) - len(chosen) < 2:
            keep = True
        out = [1 if a in chosen else d for a, d in enumerate(s)] if keep else [d for a, d in enumerate(s) if a not in chosen]
        attrs: dict[str, Any] = {} if keep and c.boolean() else {"keepdims": int(keep)}
        axes_values = [a - len(s) if c.boolean(0.3) else a for a in chosen]
        inputs = [x]
        if self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13):
            inputs.append(self.ints(axes_values))
        else:
            attrs["axes"] = axes_values
        return self.node(op, inputs, out, **attrs)

    def reduce_last(self, op: str, x) -> str:
        """``op`` over the last axis, keepdims=1, in the form the opset wants."""
        s = self.shapes[x]
        out = [*s[:-1], 1]
        if self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13):
            return self.node(op, [x, self.ints([-1])], out, keepdims=1)
        return self.node(op, [x], out, axes=[-1], keepdims=1)

    def pattern(self, x):
        """A decomposed op that a fusion pass looks for: GELU (erf form), HardSwish, layer
        norm, softmax, Max/Min with a constant (Clip), Expand to the same shape."""
        s, c = self.shapes[x], self.c
        f32 = lambda v: self.const(np.array(v, np.float32))  # noqa: E731
        kind = c.choice(["gelu", "hardswish", "layernorm", "softmax", "clip", "expand"])
        if kind == "gelu":
            if c.boolean():  # erf form
                inner = self.node("Erf", [self.node("Div", [x, f32(1.4142135)], s)], s)
            else:  # tanh approximation
                cube = self.node("Pow", [x, f32(3.0)], s) if c.boolean() else \
                    self.node("Mul", [self.node("Mul", [x, x], s), x], s)
                poly = self.node("Add", [x, self.node("Mul", [cube, f32(0.044715)], s)], s)
                inner = self.node("Tanh", [self.node("Mul", [poly, f32(0.7978846)], s)], s)
            half = self.node("Mul", [x, f32(0.5)], s)
            return self.node("Mul", [half, self.node("Add", [inner, f32(1.0)], s)], s)
        if kind == "hardswish":
            return self.node("Mul", [x, self.node("HardSigmoid", [x], s, alpha=1 / 6, beta=0.5)], s)
        if kind == "layernorm" and s[-1] != N:
            mean = self.reduce_last("ReduceMean", x)
            d = self.node("Sub", [x, mean], s)
            square = self.node("Pow", [d, f32(2.0)], s) if c.boolean() else self.node("Mul", [d, d], s)
            var = self.reduce_last("ReduceMean", square)
            std = self.node("Sqrt", [self.node("Add", [var, f32(1e-5)], self.shapes[var])], self.shapes[var])
            how = c.choice(["div", "reciprocal", "one_over"])
            if how == "div":
                y = self.node("Div", [d, std], s)
            elif how == "reciprocal":
                y = self.node("Mul", [d, self.node("Reciprocal", [std], self.shapes[std])], s)
            else:
                y = self.node("Mul", [d, self.node("Div", [f32(1.0), std], self.shapes[std])], s)
            y = self.node("Mul", [y, self.weight([s[-1]], positive=True)], s)
            return self.node("Add", [y, self.weight([s[-1]], 0.3)], s)
        if kind == "softmax":
            shifted = self.node("Sub", [x, self.reduce_last("ReduceMax", x)], s)
            e = self.node("Exp", [shifted], s)
            return self.node("Div", [e, self.reduce_last("ReduceSum", e)], s)
        if kind == "clip":
            y = self.node("Max", [x, f32(c.choice([0.0, -1.0]))], s)
            return self.node("Min", [y, f32(6.0)], s) if c.boolean() else y
        if N in s:
            return self.node("Expand", [x, self.node_shape_of(x)], s)
        return self.node("Expand", [x, self.ints(list(s) if c.boolean() else [1] * len(s))], s)

    def if_node(self, x, pool):
        """``If`` whose branches read outer tensors (``x``, maybe another activation, an outer
        initializer); the condition is a constant or computed from ``x``."""
        s, c = self.shapes[x], self.c
        if c.boolean(0.4):
            cond = self.const(np.array(c.boolean() if c.boolean() else [c.boolean()], bool), "cond")
        else:
            all_axes = list(range(len(s)))
            if self.opset >= 18:
                reduced = self.node("ReduceMean", [x], [], keepdims=0)
            elif self.opset >= 13:
                reduced = self.node("ReduceSum", [x, self.ints(all_axes)], [], keepdims=0)
            else:
                reduced = self.node("ReduceMean", [x], [], keepdims=0, axes=all_axes)
            cond = self.node("Greater", [reduced, self.const(np.array(0.0, np.float32))], [])
        same = [t for t in pool if t != x and self.shapes[t] == s]
        outer_weight = self.weight([d if d != N else 1 for d in s][-1:], 0.5)  # read from inside a branch
        branches = []
        for branch in ("then", "else"):
            outer_scope = self.scope
            self.scope = _Scope()
            kind = c.choice(["math"] * 4 + ["identity", "conv_bn", "dropout"])
            if kind == "identity":  # the branch returns the outer tensor itself
                out = self.name(f"{branch}_out")
                self.scope.nodes.append(helper.make_node("Identity", [x], [out], name=self.name("Identity")))
                branches.append(helper.make_graph(self.scope.nodes, self.name(f"{branch}_branch"), [],
                                                  [_value_info(out, s)], self.scope.inits))
                self.scope = outer_scope
                continue
            if kind == "conv_bn" and len(s) == 4:  # foldable and quantizable work inside a body
                y = self.node("Conv", [x, self.weight([s[1], s[1], 1, 1], 1 / math.sqrt(s[1]))], s)
                y = self.batchnorm(y)
            elif kind == "dropout":
                y = self.node("Dropout", [x], s)
            else:
                y = self.node(c.choice(["Relu", "Sigmoid", "Tanh", "Neg"]), [x], s)
            if c.boolean(0.6):
                y = self.node("Mul", [y, outer_weight], s)
            if same and c.boolean(0.5):
                y = self.node("Add", [y, c.choice(same)], s)
            if c.boolean(0.4):  # a constant made inside the branch
                y = self.node("Add", [y, self.weight([1], 0.5)], s)
            if c.boolean(0.15) and branch == "then":
                y = self.if_nested(y)
            out = self.name(f"{branch}_out")
            self.scope.nodes.append(helper.make_node("Identity", [y], [out], name=self.name("Identity")))
            body = helper.make_graph(self.scope.nodes, self.name(f"{branch}_branch"), [],
                                     [_value_info(out, s)], self.scope.inits)
            branches.append(body)
            self.scope = outer_scope
        self.ops.append("If(")
        return self.node("If", [cond], s, then_branch=branches[0], else_branch=branches[1])

    def if_nested(self, y):
        """A constant-condition If inside a branch, reading the branch's tensor ``y``."""
        s = self.shapes[y]
        cond = self.const(np.array(self.c.boolean(), bool), "cond")
        bodies = []
        for branch in ("then", "else"):
            outer = self.scope
            self.scope = _Scope()
            z = self.node(self.c.choice(["Relu", "Abs", "Neg"]), [y], s)
            out = self.name(f"{branch}_inner")
            self.scope.nodes.append(helper.make_node("Identity", [z], [out], name=self.name("Identity")))
            bodies.append(helper.make_graph(self.scope.nodes, self.name(f"{branch}_inner_branch"), [],
                                            [_value_info(out, s)], self.scope.inits))
            self.scope = outer
        return self.node("If", [cond], s, then_branch=bodies[0], else_branch=bodies[1])


def _divisor(n: int) -> int:
    """The smallest factor of ``n`` above 1 (``n`` itself when prime)."""
    for f in range(2, n):
        if n % f == 0:
            return f
    return 1


def _broadcastable(a, b):
    """The numpy broadcast of two tracked shapes (N broadcasts only with itself or 1), or None."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def _value_info(name: str, shape, dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


# Each family and how often it is picked; the one-tensor families take (builder, x), the rest
# (builder, x, pool).
_FAMILIES = [
    ("conv", 4), ("conv_transpose", 1), ("batchnorm", 2), ("gemm", 2), ("matmul", 2), ("unary", 3),
    ("binary", 3), ("reshape", 2), ("transpose", 1), ("concat", 2), ("split", 1), ("slice", 1), ("pad", 1),
    ("resize", 1), ("expand", 1), ("pool", 2), ("softmax", 1), ("layernorm", 1), ("reduce", 1), ("if_node", 2), ("pattern", 2),
]
_WITH_POOL = {"binary", "concat", "split", "if_node"}
_FOLDABLE = {"conv", "conv_transpose", "gemm", "matmul"}


def build_graph(c: Chooser, *, opsets=OPSETS, max_ops: int = 10) -> FuzzGraph:
    """Build one random graph from the choices of ``c``."""
    opset = c.choice(opsets)
    b = Builder(c, opset)
    batch = c.choice([N, N, 1, 2])
    rank = c.choice([4, 4, 3, 2])
    if rank == 4:
        shape = (batch, c.integer(1, 6), c.integer(2, 9), c.integer(2, 9))
    elif rank == 3:
        shape = (batch, c.integer(1, 6), c.integer(2, 12))
    else:
        shape = (batch, c.integer(1, 16))
    inputs = {"x": shape}
    if c.boolean(0.2):
        inputs["x2"] = shape
    for name, s in inputs.items():
        b.shapes[name] = s
    pool = list(inputs)
    x = "x"
    families = [f for f, weight in _FAMILIES for _ in range(weight)]
    steps = c.integer(2, max_ops)
    while len([o for o in b.ops if o not in ("Constant",)]) < steps:
        family = c.choice(families)
        method = getattr(b, family)
        y = method(x, pool) if family in _WITH_POOL else method(x)
        if y is None:
            if c.boolean(0.1):  # bounded retries: some shapes fit few families
                break
            continue
        if family in _FOLDABLE and c.boolean(0.4):  # the pattern fold-batchnorm looks for
            pool.append(y)
            y = b.batchnorm(y) or y
        x = y
        pool.append(x)
    if x in inputs:
        x = b.node("Relu", [x], b.shapes[x])
    outputs = [x]
    extra = [t for t in pool if t not in inputs and t != x]
    if extra and c.boolean(0.25):
        outputs.append(c.choice(extra))
    if c.boolean(0.05):  # an int64 output computed from shapes only
        outputs.append(b.node("Shape", [x], [len(b.shapes[x])]))
        b.dtypes[outputs[-1]] = "int64"
    if c.boolean(0.05):  # a constant output
        outputs.append(b.node("Constant", [], [2], value=numpy_helper.from_array(np.array([1.5, -2], np.float32))))
    types = {o: TensorProto.INT64 for o in outputs if b.dtypes.get(o) == "int64"}
    if c.boolean(0.1):  # node names are optional in ONNX (onnxruntime rejects duplicates)
        for node in b.scope.nodes:
            node.name = ""
    graph = helper.make_graph(
        b.scope.nodes, f"fuzz_{opset}",
        [_value_info(n, s) for n, s in inputs.items()],
        [_value_info(o, b.shapes[o], types.get(o, TensorProto.FLOAT)) for o in outputs],
        b.scope.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="presso-fuzz")
    proto.ir_version = ir_version_for(opset)
    return FuzzGraph(proto, opset, inputs, b.ops, batch=c.choice([1, 2, 3]) if batch == N else batch)

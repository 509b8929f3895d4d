"""Normalization rewrites: LayerNorm, softmax and tanh-GELU written out as elementwise chains
(as jax2tf and TF exporters write them) become one ``LayerNormalization`` / ``Softmax`` /
``Gelu`` node.

Written out, these chains compute statistics (E[x²] − E[x]², x³, exp) that no 8-bit grid can
hold, and an NPU that validates each op as a quantized unit must round every step; fused,
the engine keeps the statistics inside one kernel.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.analysis.shapes import infer_tensor_infos
from ...ir.edit import add_initializer, batch_names, replace_all_uses, unique_name
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from ._match import close, const_value, rewrite_each, scalar

# Ops that only move or broadcast values: a statistic seen through them is the same statistic.
_SHAPE_OPS = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity")


def _strip(tensor: gs.Tensor) -> gs.Tensor:
    """``tensor`` seen through Reshape/Expand/Unsqueeze/Squeeze producers."""
    while tensor.inputs and tensor.inputs[0].op in _SHAPE_OPS:
        tensor = tensor.inputs[0].inputs[0]
    return tensor


def _node(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    node = tensor.inputs[0] if tensor.inputs else None
    return node if node is not None and node.op in ops else None


def _reaches(t: gs.Tensor, x: gs.Tensor) -> bool:
    """``t`` is ``x``, possibly seen through Reshape/Expand/… producers."""
    while t is not x:
        if not t.inputs or t.inputs[0].op not in _SHAPE_OPS:
            return False
        t = t.inputs[0].inputs[0]
    return True


def _last_axis_reduce(node: gs.Node, rank: int | None, axis: int | None = None) -> bool:
    """A Reduce* over one axis only (the last, or ``axis``), from the attribute or the input."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        value = const_value(node.inputs[1])
        axes = None if value is None else [int(a) for a in np.asarray(value).ravel()]
    if axes is None or len(axes) != 1:
        return False
    if axis is not None and rank is not None:
        return axes[0] % rank == axis
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _operands(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    if len(node.inputs) == 2:
        if node.inputs[0] is tensor:
            return node.inputs[1]
        if node.inputs[1] is tensor:
            return node.inputs[0]
    return None


class _Stats:
    """Recognises mean and mean-of-squares of ``x`` over one axis (size ``n``)."""

    def __init__(self, x: gs.Tensor, rank: int, axis: int, n: int):
        self.x, self.rank, self.axis, self.n = x, rank, axis, n

    def _sum_times_inv_n(self, t: gs.Tensor, inner) -> bool:
        t = _strip(t)
        mean = _node(t, "ReduceMean")
        if mean is not None:
            return _last_axis_reduce(mean, self.rank, self.axis) and inner(mean.inputs[0])
        mul, div = _node(t, "Mul"), _node(t, "Div")
        red = None
        if mul is not None:
            for a, b in (mul.inputs, mul.inputs[::-1]):
                r = _node(_strip(a), "ReduceSum")
                if r is not None and self.n and close(scalar(b), 1.0 / self.n, 1e-4):
                    red = r
        elif div is not None and self.n and close(scalar(div.inputs[1]), float(self.n), 1e-4):
            red = _node(_strip(div.inputs[0]), "ReduceSum")
        return red is not None and _last_axis_reduce(red, self.rank, self.axis) and inner(red.inputs[0])

    def is_mean(self, t: gs.Tensor) -> bool:
        return self._sum_times_inv_n(t, lambda s: _reaches(s, self.x))

    def is_square_of(self, t: gs.Tensor, base) -> bool:
        t = _strip(t)
        mul, pw = _node(t, "Mul"), _node(t, "Pow")
        if mul is not None:
            return (mul.inputs[0] is mul.inputs[1] or _strip(mul.inputs[0]) is _strip(mul.inputs[1])) and base(mul.inputs[0])
        return pw is not None and close(scalar(pw.inputs[1]), 2.0) and base(pw.inputs[0])

    def is_variance(self, t: gs.Tensor) -> bool:
        t = _strip(t)
        clamp = _node(t, "Max")
        if clamp is not None:  # max(0, var) guards the E[x²] − E[x]² form against rounding
            for a, b in (clamp.inputs, clamp.inputs[::-1]):
                if close(scalar(a), 0.0) or (scalar(a) is not None and scalar(a) <= 0.0):
                    return self.is_variance(b)
            return False
        sub = _node(t, "Sub")
        if sub is not None:  # E[x²] − E[x]²
            return (self._sum_times_inv_n(sub.inputs[0], lambda s: self.is_square_of(s, lambda b: _reaches(b, self.x)))
                    and self.is_square_of(sub.inputs[1], self.is_mean))
        # E[(x − E[x])²]
        return self._sum_times_inv_n(t, lambda s: self.is_square_of(s, lambda d: self.is_centered(d)))

    def is_centered(self, t: gs.Tensor) -> bool:
        sub = _node(_strip(t), "Sub")
        return sub is not None and _reaches(sub.inputs[0], self.x) and self.is_mean(sub.inputs[1])


@register_pass("fuse-layernorm")
class FuseLayerNorm(Pass):
    """Replace a LayerNorm over the last axis written as elementwise ops by one
    ``LayerNormalization`` (opset ≥ 17; the model is left alone below).

    Recognised: ``(x − mean)·rsqrt(var + ε)·γ + β`` with mean as ReduceMean or
    ReduceSum·(1/n), var as E[(x − mean)²] or max(0, E[x²] − mean²), rsqrt as
    Reciprocal(Sqrt) or 1/Sqrt, optional γ/β constants, and Reshape/Expand broadcasts between
    the pieces. Preserves semantics (to float rounding).
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if model.opset < 17:
            return PassResult(changed=False, stats={"fused": 0, "skipped": "opset < 17"})
        infos = infer_tensor_infos(model)
        fused = rewrite_each(model, ("Sub",), lambda sub: self._fuse(model, sub, infos))
        return PassResult(changed=bool(fused), stats={"fused": fused})

    def _fuse(self, model: Model, sub: gs.Node, infos) -> bool:
        x = sub.inputs[0]
        info = infos.get(x.name)
        shape = list(info.shape) if info is not None and info.shape is not None else None
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            return False
        rank = len(shape)
        stats = next((st for st in (_Stats(x, rank, a, shape[a]) for a in reversed(range(rank)))
                      if st.is_mean(sub.inputs[1])), None)
        if stats is None:
            return False
        centered = sub.outputs[0]
        for mul in [c for c in centered.outputs if c.op == "Mul"]:
            factor = _operands(mul, centered)
            parsed = factor is not None and self._scale(factor, stats)
            if not parsed:
                continue
            gamma, eps = parsed
            n = stats.n
            out, beta = mul.outputs[0], None
            add = out.outputs[0] if len(out.outputs) == 1 and out.outputs[0].op == "Add" else None
            if add is not None and _operands(add, out) is not None:
                b = const_value(_strip(_operands(add, out)))
                if b is not None and b.size in (1, n):
                    beta, out = b, add.outputs[0]
            if gamma is not None and gamma.size not in (1, n):
                continue
            dtype = np.dtype(x.dtype) if x.dtype is not None else np.dtype(np.float32)
            g = add_initializer(model, f"{sub.name}_ln_gamma",
                                np.broadcast_to(gamma.ravel() if gamma is not None else np.ones(1, dtype), (n,)).astype(dtype))
            b_t = add_initializer(model, f"{sub.name}_ln_beta",
                                  np.broadcast_to(beta.ravel() if beta is not None else np.zeros(1, dtype), (n,)).astype(dtype))
            last = stats.axis == rank - 1
            perm = list(range(rank))
            perm[stats.axis], perm[-1] = perm[-1], perm[stats.axis]  # a swap is its own inverse
            source = x
            new_nodes = []
            if not last:
                source = gs.Variable(unique_name(model, f"{sub.name}_ln_in"), dtype=x.dtype)
                new_nodes.append(gs.Node("Transpose", name=unique_name(model, f"{sub.name}_ln_transpose_in"),
                                         attrs={"perm": perm}, inputs=[x], outputs=[source]))
            y = gs.Variable(unique_name(model, f"{out.name}_ln"), dtype=out.dtype)
            new_nodes.append(gs.Node("LayerNormalization", name=unique_name(model, f"{sub.name}_layernorm"),
                                     attrs={"axis": -1, "epsilon": float(eps)}, inputs=[source, g, b_t], outputs=[y]))
            if not last:
                back = gs.Variable(unique_name(model, f"{out.name}_ln_out"), dtype=out.dtype)
                new_nodes.append(gs.Node("Transpose", name=unique_name(model, f"{sub.name}_ln_transpose_out"),
                                         attrs={"perm": perm}, inputs=[y], outputs=[back]))
                y = back
            out_info = infos.get(out.name)
            if out_info is None or out_info.shape is None or list(out_info.shape) != shape:
                continue  # the pattern broadcast to another shape: not a plain LayerNorm
            model.graph.nodes.extend(new_nodes)
            replace_all_uses(model, out, y)
            return True
        return False

    def _scale(self, factor: gs.Tensor, stats: _Stats):
        """(γ or None, ε) when ``factor`` is rsqrt(var + ε)·γ."""
        factor = _strip(factor)
        gamma = None
        mul = _node(factor, "Mul")
        if mul is not None:
            for a, b in (mul.inputs, mul.inputs[::-1]):
                g = const_value(_strip(b))
                if g is not None:
                    gamma, factor = g.ravel(), _strip(a)
                    break
            else:
                return None
        recip, div = _node(factor, "Reciprocal"), _node(factor, "Div")
        if recip is not None:
            root = recip.inputs[0]
        elif div is not None and close(scalar(div.inputs[0]), 1.0):
            root = div.inputs[1]
        else:
            return None
        sqrt = _node(_strip(root), "Sqrt")
        if sqrt is None:
            return None
        add = _node(_strip(sqrt.inputs[0]), "Add")
        if add is None:
            return None
        for a, b in (add.inputs, add.inputs[::-1]):
            eps = scalar(b)
            if eps is not None and eps >= 0 and stats.is_variance(a):
                return gamma, eps
        return None


@register_pass("fuse-softmax")
class FuseSoftmax(Pass):
    """Replace ``exp(x − max(x)) / sum(exp(x − max(x)))`` over the last axis (the max may be
    clamped, reshaped or broadcast; softmax does not depend on the shift) by one ``Softmax``
    (opset ≥ 13). Preserves semantics (to float rounding)."""

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if model.opset < 13:
            return PassResult(changed=False, stats={"fused": 0, "skipped": "opset < 13"})
        infos = infer_tensor_infos(model)
        fused = rewrite_each(model, ("Div",), lambda div: self._fuse(model, div, infos))
        return PassResult(changed=bool(fused), stats={"fused": fused})

    def _fuse(self, model: Model, div: gs.Node, infos) -> bool:
        e = div.inputs[0]
        exp = _node(e, "Exp")
        total = _node(_strip(div.inputs[1]), "ReduceSum")
        if exp is None or total is None or _strip(total.inputs[0]) is not e:
            return False
        info = infos.get(e.name)
        rank = len(info.shape) if info is not None and info.shape is not None else None
        if not _last_axis_reduce(total, rank):
            return False
        sub = _node(exp.inputs[0], "Sub")
        x = exp.inputs[0] if sub is None else sub.inputs[0]
        if sub is not None and not self._row_max(sub.inputs[1], x, rank):
            return False
        out = div.outputs[0]
        y = gs.Variable(unique_name(model, f"{out.name}_softmax"), dtype=out.dtype, shape=out.shape)
        model.graph.nodes.append(gs.Node("Softmax", name=unique_name(model, f"{div.name}_softmax"),
                                         attrs={"axis": -1}, inputs=[x], outputs=[y]))
        replace_all_uses(model, out, y)
        return True

    @staticmethod
    def _row_max(t: gs.Tensor, x: gs.Tensor, rank: int | None) -> bool:
        t = _strip(t)
        clamp = _node(t, "Max")
        if clamp is not None and len(clamp.inputs) == 2:
            constant = [i for i in clamp.inputs if const_value(i) is not None]
            rest = [i for i in clamp.inputs if const_value(i) is None]
            if len(constant) != 1 or len(rest) != 1 or const_value(constant[0]).size != 1:
                return False
            t = _strip(rest[0])
        red = _node(t, "ReduceMax")
        return red is not None and red.inputs[0] is x and _last_axis_reduce(red, rank)


_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


@register_pass("fuse-gelu")
class FuseGelu(Pass):
    """Replace tanh-approximated GELU, ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``, by one
    ``Gelu{approximate=tanh}`` (opset 20; the model's opset is upgraded when a match is found).

    Preserves semantics (to float rounding).
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        matches = [t for t in model.nodes("Tanh") if self._match(model, t)]
        if not matches:
            return PassResult(changed=False, stats={"fused": 0})
        if model.opset < 20:
            from ..cleanup.upgrade_opset import UpgradeOpset

            UpgradeOpset(version=20).run(model, ctx)
            model.invalidate()
        fused = 0
        with batch_names(model):
            for tanh in model.nodes("Tanh"):
                found = self._match(model, tanh)
                if not found:
                    continue
                x, out = found
                y = gs.Variable(unique_name(model, f"{out.name}_gelu"), dtype=out.dtype, shape=out.shape)
                model.graph.nodes.append(gs.Node("Gelu", name=unique_name(model, f"{tanh.name}_gelu"),
                                                 attrs={"approximate": "tanh"}, inputs=[x], outputs=[y]))
                replace_all_uses(model, out, y)
                fused += 1
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
        return PassResult(changed=bool(fused), stats={"fused": fused, "opset": model.opset})

    def _match(self, model: Model, tanh: gs.Node):
        """(x, output) of the GELU around ``tanh``, else None."""
        scaled = _node(tanh.inputs[0], "Mul")
        if scaled is None:
            return None
        inner = next((a for a, b in (scaled.inputs, scaled.inputs[::-1]) if close(scalar(b), _SQRT_2_OVER_PI, 1e-4)), None)
        add = _node(inner, "Add") if inner is not None else None
        if add is None:
            return None
        for x, cube in (add.inputs, add.inputs[::-1]):
            if self._is_cubic(cube, x):
                break
        else:
            return None
        # 0.5·x·(1 + tanh): in any association of the two Muls
        t = tanh.outputs[0]
        if len(t.outputs) != 1 or t.outputs[0].op != "Add":
            return None
        plus = t.outputs[0]
        if not close(scalar(_operands(plus, t)), 1.0):
            return None
        h = plus.outputs[0]
        if len(h.outputs) != 1 or h.outputs[0].op != "Mul":
            return None
        m1 = h.outputs[0]
        other = _operands(m1, h)
        if other is x and scalar(other) is None:  # x·(1+tanh) then ·0.5
            m2 = m1.outputs[0].outputs[0] if len(m1.outputs[0].outputs) == 1 else None
            if m2 is None or m2.op != "Mul" or not close(scalar(_operands(m2, m1.outputs[0])), 0.5):
                return None
            return x, m2.outputs[0]
        if close(scalar(other), 0.5):  # 0.5·(1+tanh) then ·x
            m2 = m1.outputs[0].outputs[0] if len(m1.outputs[0].outputs) == 1 else None
            if m2 is None or m2.op != "Mul" or _operands(m2, m1.outputs[0]) is not x:
                return None
            return x, m2.outputs[0]
        return None

    @staticmethod
    def _is_cubic(t: gs.Tensor, x: gs.Tensor) -> bool:
        """``t`` is 0.044715·x³ (as Mul chains or Pow, in any order)."""
        factors: list[gs.Tensor] = []
        stack = [t]
        while stack:
            cur = stack.pop()
            mul = _node(cur, "Mul")
            pw = _node(cur, "Pow")
            if mul is not None and cur is not x:
                stack.extend(mul.inputs)
            elif pw is not None and close(scalar(pw.inputs[1]), 3.0):
                factors.extend([pw.inputs[0]] * 3)
            else:
                factors.append(cur)
            if len(factors) > 8:
                return False
        xs = [f for f in factors if f is x]
        consts = [scalar(f) for f in factors if f is not x]
        return len(xs) == 3 and len(consts) == 1 and close(consts[0], 0.044715, 1e-3)


__all__ = ["FuseGelu", "FuseLayerNorm", "FuseSoftmax"]

"""Broadcast and indexing rewrites: one-hot products become ``Gather``, redundant ``Expand``
nodes go, and ``Max``/``Min`` against a scalar constant become ``Clip``."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.analysis.shapes import infer_tensor_infos
from ...ir.edit import add_initializer, batch_names, replace_all_uses, unique_name
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from ._match import const_value, rewrite_each

_BROADCASTING = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Less", "Greater", "Pow", "Where")


def _shape(infos, tensor: gs.Tensor) -> list | None:
    if isinstance(tensor, gs.Constant):
        return list(np.asarray(tensor.values).shape)
    info = infos.get(tensor.name)
    return list(info.shape) if info is not None and info.shape is not None else None


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


@register_pass("onehot-to-gather")
class OneHotToGather(Pass):
    """Replace ``MatMul(Cast(Equal(indices, arange(K))), W)`` — a one-hot encoding multiplied by
    a constant ``W`` of K rows — by ``Gather(W, indices)`` (an embedding lookup).

    Needs: ``arange(K)`` constant along the last axis, the indices broadcast along a last axis
    of 1 (through Reshape/Expand), constant ``W`` [K, N], static shapes. Preserves semantics
    for indices in [0, K) (the one-hot form gives a zero row outside; models that one-hot
    their inputs feed valid indices, e.g. magika's bytes 0–256 against K = 257).
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        infos = infer_tensor_infos(model)
        rewritten = rewrite_each(model, ("MatMul",), lambda matmul: self._rewrite(model, matmul, infos))
        return PassResult(changed=bool(rewritten), stats={"rewritten": rewritten})

    def _rewrite(self, model: Model, matmul: gs.Node, infos) -> bool:
        weight = const_value(matmul.inputs[1])
        cast = matmul.inputs[0].inputs[0] if matmul.inputs[0].inputs else None
        if weight is None or weight.ndim != 2 or cast is None or cast.op != "Cast":
            return False
        equal = cast.inputs[0].inputs[0] if cast.inputs[0].inputs else None
        if equal is None or equal.op != "Equal":
            return False
        k = weight.shape[0]
        indices = None
        for a, b in (equal.inputs, equal.inputs[::-1]):
            iota = const_value(b)
            if iota is not None and iota.shape[-1:] == (k,) and np.array_equal(iota.reshape(-1, k)[0], np.arange(k)) \
                    and np.all(iota.reshape(-1, k) == np.arange(k)):
                indices = a
                break
        if indices is None:
            return False
        while indices.inputs and indices.inputs[0].op in ("Expand", "Identity"):
            indices = indices.inputs[0].inputs[0]
        idx_shape = _shape(infos, indices)
        out_shape = _shape(infos, matmul.outputs[0])
        if not (_static(idx_shape) and _static(out_shape)) or idx_shape[-1] != 1:
            return False
        info = infos.get(indices.name)
        dtype = indices.dtype if indices.dtype is not None else (info.dtype if info is not None else None)
        idx_dtype = np.dtype(dtype) if dtype is not None else None
        if idx_dtype is None or idx_dtype.kind not in "iu":
            return False
        table = add_initializer(model, f"{matmul.name}_table", weight)
        gathered = gs.Variable(unique_name(model, f"{matmul.name}_gathered"), dtype=matmul.outputs[0].dtype)
        gather = gs.Node("Gather", name=unique_name(model, f"{matmul.name}_gather"), attrs={"axis": 0},
                         inputs=[table, indices], outputs=[gathered])
        shape_c = add_initializer(model, f"{matmul.name}_shape", np.array(out_shape, dtype=np.int64))
        out = gs.Variable(unique_name(model, f"{matmul.name}_embedded"), dtype=matmul.outputs[0].dtype,
                          shape=out_shape)
        reshape = gs.Node("Reshape", name=unique_name(model, f"{matmul.name}_reshape"),
                          inputs=[gathered, shape_c], outputs=[out])
        model.graph.nodes.extend([gather, reshape])
        replace_all_uses(model, matmul.outputs[0], out)
        return True


@register_pass("remove-expand")
class RemoveExpand(Pass):
    """Remove an ``Expand`` whose broadcast changes nothing: to its input's own shape, or read
    only by broadcasting elementwise ops whose other operand already has the expanded shape.

    Needs static shapes. Preserves semantics.
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        infos = infer_tensor_infos(model)
        removed = 0
        for expand in model.nodes("Expand"):
            src, out = expand.inputs[0], expand.outputs[0]
            s_in, s_out = _shape(infos, src), _shape(infos, out)
            if not (_static(s_in) and _static(s_out)) or any(t is out for t in model.graph.outputs):
                continue
            same = s_in == s_out
            implied = bool(out.outputs) and all(
                c.op in _BROADCASTING and any(t is not out and _shape(infos, t) is not None
                                              and list(np.broadcast_shapes(tuple(_shape(infos, t)), tuple(s_in))) == s_out
                                              for t in c.inputs)
                for c in out.outputs)
            if same or implied:
                replace_all_uses(model, out, src)
                removed += 1
        if removed:
            model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            model.invalidate()
        return PassResult(changed=bool(removed), stats={"removed": removed})


@register_pass("max-to-clip")
class MaxToClip(Pass):
    """Rewrite ``Max(x, c)`` / ``Min(x, c)`` with a scalar constant ``c`` as ``Clip(x, c, ·)`` /
    ``Clip(x, ·, c)`` when ``x`` already has the output's shape (NPUs run Clip as one
    activation; a two-input Max needs a broadcast constant). Preserves semantics."""

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        infos = infer_tensor_infos(model)
        rewritten = 0
        with batch_names(model):
            for node in model.nodes("Max", "Min"):
                if len(node.inputs) != 2:
                    continue
                for x, c in (node.inputs, node.inputs[::-1]):
                    value = const_value(c)
                    if value is None or value.size != 1 or const_value(x) is not None:
                        continue
                    if _shape(infos, x) != _shape(infos, node.outputs[0]) or value.dtype.kind != "f":
                        continue
                    bound = add_initializer(model, f"{node.name}_bound", value.reshape(()))
                    empty = gs.Variable.empty()
                    new_inputs = [x, bound, empty] if node.op == "Max" else [x, empty, bound]
                    node.inputs.clear()
                    node.inputs.extend(new_inputs)
                    node.op = "Clip"
                    rewritten += 1
                    break
        if rewritten:
            model.graph.cleanup(remove_unused_graph_inputs=False)
            model.invalidate()
        return PassResult(changed=bool(rewritten), stats={"rewritten": rewritten})


__all__ = ["MaxToClip", "OneHotToGather", "RemoveExpand"]

"""Divide an activation's last-axis channels by constants without changing what its readers see
after their weights are multiplied by the same constants (SmoothQuant's migration).

:func:`fold_division` puts the division inside the nodes that compute the activation, when the
given layers are its only readers and every step is exact:

* ``LayerNormalization`` over the last axis with constant scale (and bias): both divided;
* ``MatMul`` / ``Gemm`` with a constant weight: the weight's output columns (and Gemm's ``C``)
  divided;
* ``Add`` / ``Sub``: every constant operand divided, every computed operand divided in turn;
* ``Mul``: one operand divided — a constant one (a scalar becomes a per-channel vector), else a
  computed one (as in GELU, ``(x · 0.5) · (1 + erf(x/√2))``: the 0.5 becomes ``0.5 / s``).

Every intermediate tensor on the way must be read by that one node and not be a graph output.
The plan is checked in full before anything changes. :func:`insert_division` is the fallback:
a new ``Mul`` by ``1/s`` on the edge to the layers only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, insert_node_on_edge, is_graph_output, producer

_MAX_DEPTH = 4  # how far back through Add/Mul chains the division may travel
Edit = Callable[[], None]


def fold_division(model: Model, tensor: gs.Variable, layers: Sequence[gs.Node], s: np.ndarray,
                  *, tag: str) -> str | None:
    """Divide ``tensor``'s last axis by ``s`` inside its producers; returns the producer's op
    (how it was folded) or None when that is not exact, and then changes nothing."""
    readers = {id(n) for n in layers}
    if is_graph_output(model, tensor) or not all(id(n) in readers for n in tensor.outputs):
        return None
    edits = _plan(model, tensor, np.asarray(s, np.float64), tag, 0)
    if edits is None:
        return None
    for edit in edits:
        edit()
    return producer(tensor).op


def insert_division(model: Model, tensor: gs.Variable, layers: Sequence[gs.Node], s: np.ndarray,
                    *, tag: str) -> gs.Node:
    """A new ``Mul(tensor, 1/s)`` that ``layers`` read instead of ``tensor`` (others keep it)."""
    dtype = tensor.dtype if tensor.dtype is not None and np.dtype(tensor.dtype).kind == "f" else np.float32
    inverse = add_initializer(model, f"{tensor.name}_{tag}_inv_scale", (1.0 / np.asarray(s, np.float64)).astype(dtype))
    return insert_node_on_edge(model, tensor, "Mul", name=f"{tensor.name}_{tag}", extra_inputs=[inverse],
                               only_for=layers)


def _plan(model: Model, tensor: gs.Variable, s: np.ndarray, tag: str, depth: int) -> list[Edit] | None:
    node = producer(tensor)
    if node is None or depth > _MAX_DEPTH:
        return None
    rank = len(tensor.shape) if tensor.shape is not None else None
    if node.op == "LayerNormalization":
        return _layer_norm(model, node, s, tag, rank)
    if node.op in ("MatMul", "Gemm"):
        return _weight_columns(model, node, s, tag)
    if node.op in ("Add", "Sub"):
        edits: list[Edit] = []
        for index, operand in enumerate(node.inputs):
            if isinstance(operand, gs.Constant):
                edit = _divide_constant(model, node, index, s, tag, rank)
                sub = None if edit is None else [edit]
            else:
                sub = _inner(model, node, operand, s, tag, depth)
            if sub is None:
                return None
            edits += sub
        return edits
    if node.op == "Mul" and len(node.inputs) == 2:
        constants = [i for i, t in enumerate(node.inputs) if isinstance(t, gs.Constant)]
        for index in constants:
            edit = _divide_constant(model, node, index, s, tag, rank)
            if edit is not None:
                return [edit]
        for index, operand in enumerate(node.inputs):
            if index not in constants:
                sub = _inner(model, node, operand, s, tag, depth)
                if sub is not None:
                    return sub
        return None
    return None


def _inner(model: Model, reader: gs.Node, operand: gs.Tensor, s: np.ndarray, tag: str, depth: int) -> list[Edit] | None:
    """Plan the division of a computed operand of ``reader`` (read by ``reader`` only)."""
    if is_graph_output(model, operand) or any(n is not reader for n in operand.outputs):
        return None
    if sum(1 for t in reader.inputs if t is operand) != 1:
        return None  # x · x: dividing the one tensor would divide the product twice
    return _plan(model, operand, s, tag, depth + 1)


def _layer_norm(model: Model, node: gs.Node, s: np.ndarray, tag: str, rank: int | None) -> list[Edit] | None:
    axis = int(node.attrs.get("axis", -1))
    if axis != -1 and (rank is None or axis != rank - 1):
        return None
    params = [i for i in (1, 2) if i < len(node.inputs) and node.inputs[i].name]
    if not all(isinstance(node.inputs[i], gs.Constant) and np.asarray(node.inputs[i].values).shape == s.shape
               for i in params):
        return None

    def edit() -> None:
        for i in params:
            old = np.asarray(node.inputs[i].values)
            node.inputs[i] = add_initializer(model, f"{node.inputs[i].name}_{tag}", (old / s).astype(old.dtype))

    return [edit]


def _weight_columns(model: Model, node: gs.Node, s: np.ndarray, tag: str) -> list[Edit] | None:
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    w = np.asarray(node.inputs[1].values)
    trans_b = node.op == "Gemm" and node.attrs.get("transB", 0)
    if w.ndim != 2 or w.dtype.kind != "f" or (w.shape[0] if trans_b else w.shape[1]) != len(s):
        return None
    bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
    if bias is not None:
        if not isinstance(bias, gs.Constant) or np.asarray(bias.values).shape[-1:] not in ((1,), s.shape):
            return None
        if np.asarray(bias.values).ndim > 2:
            return None

    def edit() -> None:
        scaled = w / s[:, None] if trans_b else w / s[None, :]
        node.inputs[1] = add_initializer(model, f"{node.inputs[1].name}_{tag}", scaled.astype(w.dtype))
        if bias is not None:
            old = np.asarray(bias.values)
            node.inputs[2] = add_initializer(model, f"{bias.name}_{tag}", (old / s).astype(old.dtype))

    return [edit]


def _divide_constant(model: Model, node: gs.Node, index: int, s: np.ndarray, tag: str,
                     rank: int | None) -> Edit | None:
    """Divide the constant operand ``index`` of an elementwise ``node`` by ``s`` along the last
    axis, broadcasting a size-1 last axis to ``len(s)``; None when the shapes do not allow it."""
    old = np.asarray(node.inputs[index].values)
    if old.dtype.kind != "f":
        return None
    limit = rank if rank is not None else 1
    if old.ndim > limit or (old.ndim and old.shape[-1] not in (1, len(s))):
        return None
    if old.ndim == 0:
        new = old / s
    else:
        new = old / s.reshape((1,) * (old.ndim - 1) + (-1,))
    name = node.inputs[index].name

    def edit() -> None:
        node.inputs[index] = add_initializer(model, f"{name}_{tag}", new.astype(old.dtype))

    return edit

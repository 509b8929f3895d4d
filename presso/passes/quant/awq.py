"""AWQ (Lin et al. 2023): scale salient input channels up before rounding, and the activation
down by the same factor, so that the channels that carry large activations lose less.

For the MatMuls that read one activation x (e.g. a transformer's Q, K and V projections) one
per-input-channel scale s = mean|x|^α (normalized so that max·min = 1) is searched over
α ∈ {0, 0.1, …, 1}, minimizing Σ_layers ‖x W − (x / s) · Q(diag(s) W)‖² on the calibration
rows, where Q is the same block round-to-nearest the final packing does (α = 0 is plain
round-to-nearest, so the search never does worse than ``rtn`` on the calibration data).

Applying s keeps the float model's function: each weight's rows are multiplied by s, and the
activation is divided by s where that is exact and free —

* a ``LayerNormalization`` (constant scale and bias) whose output only these MatMuls read:
  its scale and bias are divided by s;
* a ``MatMul`` with a constant [K', K] weight (optionally followed by an ``Add`` of a constant
  [K] bias) whose output only these MatMuls read: its weight columns (and bias) are divided by s;

— and otherwise by a new ``Mul`` by 1/s on the activation, read only by these MatMuls (other
readers, such as a residual connection, keep the unscaled tensor). The scaled weights are
then rounded by round-to-nearest like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, insert_node_on_edge, is_graph_output, producer
from . import nbits

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def search_scale(weights: Sequence[np.ndarray], rows: np.ndarray, mean_abs: np.ndarray, *, bits: int, block: int,
                 symmetric: bool) -> tuple[np.ndarray, float, float]:
    """(s [K] float32, the best α, its error relative to α = 0's) for weights [K, N_i] that read ``rows`` [R, K]."""
    x = rows.astype(np.float32)
    reference = [x @ w for w in weights]
    base = np.maximum(mean_abs.astype(np.float64), 1e-8)  # dead channels: a tiny, finite scale
    best = (np.ones(len(mean_abs), np.float32), 0.0, np.inf)
    first = None
    for alpha in ALPHAS:
        s = base**alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        scaled_x = x / s
        loss = 0.0
        for w, ref in zip(weights, reference):
            scaled = np.ascontiguousarray(w * s[:, None])
            q = nbits.dequantize(nbits.quantize_blocks(scaled, bits, block, symmetric), len(s), bits, symmetric)
            loss += float(np.sum((scaled_x @ q - ref).astype(np.float64) ** 2))
        first = loss if first is None else first
        if loss < best[2]:
            best = (s, alpha, loss)
    ratio = best[2] / first if first else 1.0
    return best[0], best[1], ratio


def apply_scale(model: Model, tensor: gs.Variable, matmuls: Sequence[gs.Node], s: np.ndarray) -> str:
    """Multiply the weight rows of ``matmuls`` (which all read ``tensor``) by ``s`` and divide
    ``tensor`` by ``s`` for them; returns how: ``layernorm``, ``matmul`` or ``mul``."""
    for node in matmuls:
        w = node.inputs[1]
        # a new initializer: the old one may be shared or mapped read-only from external data
        node.inputs[1] = add_initializer(model, f"{w.name}_awq", np.asarray(w.values) * s[:, None])
    readers = {id(n) for n in matmuls}
    only_ours = all(id(n) in readers for n in tensor.outputs) and not is_graph_output(model, tensor)
    if only_ours and _fold_into_producer(model, tensor, s):
        return producer(tensor).op if producer(tensor).op == "LayerNormalization" else "matmul"
    inverse = add_initializer(model, f"{tensor.name}_awq_inv_scale", (1.0 / s).astype(np.float32))
    insert_node_on_edge(model, tensor, "Mul", name=f"{tensor.name}_awq", extra_inputs=[inverse], only_for=matmuls)
    return "mul"


def _fold_into_producer(model: Model, tensor: gs.Variable, s: np.ndarray) -> bool:
    """Divide ``tensor`` by ``s`` inside the node that writes it, when that is exact."""
    node = producer(tensor)
    if node is None:
        return False
    k = len(s)
    if node.op == "LayerNormalization" and node.attrs.get("axis", -1) in (-1, len(tensor.shape or []) - 1):
        params = node.inputs[1:3]
        if all(isinstance(p, gs.Constant) and np.asarray(p.values).shape == (k,) for p in params):
            for index, p in enumerate(params, start=1):
                node.inputs[index] = add_initializer(model, f"{p.name}_awq", np.asarray(p.values) / s)
            return True
        return False
    bias = None
    if node.op == "Add":
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        others = [t for t in node.inputs if not isinstance(t, gs.Constant)]
        if len(constants) != 1 or len(others) != 1 or np.asarray(constants[0].values).shape != (k,):
            return False
        inner = producer(others[0])
        if inner is None or inner.op != "MatMul" or len(others[0].outputs) != 1 or is_graph_output(model, others[0]):
            return False
        bias, node = constants[0], inner
    if node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant):
        return False
    w = np.asarray(node.inputs[1].values)
    if w.ndim != 2 or w.shape[1] != k:
        return False
    node.inputs[1] = add_initializer(model, f"{node.inputs[1].name}_awq", w / s[None, :])
    if bias is not None:
        add = producer(tensor)
        index = next(i for i, t in enumerate(add.inputs) if t is bias)
        add.inputs[index] = add_initializer(model, f"{bias.name}_awq", np.asarray(bias.values) / s)
    return True

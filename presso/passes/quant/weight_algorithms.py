"""The data-aware algorithms of ``quantize-weights``: GPTQ and AWQ over a model's MatMuls.

Both read the calibration data once into memory (``samples`` samples) and group the MatMuls
by the activation they read (Q, K and V share one). Then:

* ``gptq``: sequential, layer group by layer group in graph order: the inputs of a group are
  measured on a working copy in which every earlier group already computes with its rounded
  weights, so each layer is rounded for the inputs it will really see (the paper's setting). Returns the packed blocks of every MatMul; the model itself is not changed here.
* ``awq``: one run of the float model measures every group's inputs; each group's scale is
  searched (:func:`awq.search_scale`) and applied to the model (:func:`awq.apply_scale`). The
  caller then rounds the scaled weights with round-to-nearest; nothing is returned.

``awq+gptq`` applies AWQ's scales first (without its clipping), then rounds with GPTQ.
With ``clip`` (both), each block's grid is chosen by :mod:`.clip_search` on the layer's
calibration inputs instead of from its largest weight (AWQ's ``auto_clip``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer
from ...ir.errors import PassError
from . import awq, gptq, layer_inputs, nbits
from .clip_search import clip_weights

AWQ_ROWS = 2048  # calibration rows (tokens) kept per activation for the α search


def groups_by_input(model: Model, matmuls: Sequence[gs.Node]) -> list[tuple[gs.Variable, list[gs.Node]]]:
    """(activation, the MatMuls reading it), in graph order of the first reader."""
    position = {id(n): i for i, n in enumerate(model.graph.nodes)}
    groups: dict[int, tuple[gs.Variable, list[gs.Node]]] = {}
    for node in sorted(matmuls, key=lambda n: position[id(n)]):
        groups.setdefault(id(node.inputs[0]), (node.inputs[0], []))[1].append(node)
    return list(groups.values())


def run_gptq(model: Model, matmuls: Sequence[gs.Node], feeds: list[dict], *, bits: int, block: int,
             symmetric: bool, act_order: bool, clip: bool) -> tuple[dict[str, nbits.Blocks], dict]:
    """{MatMul name: its GPTQ blocks}, and statistics, for ``matmuls`` of ``model``."""
    working = model.copy()
    by_name = {n.name: n for n in working.graph.nodes}
    result: dict[str, nbits.Blocks] = {}
    for tensor, nodes in groups_by_input(model, matmuls):
        stats = layer_inputs.collect(working, [tensor.name], feeds)[tensor.name]
        for node in nodes:
            weight = np.asarray(node.inputs[1].values)
            blocks, dequantized = gptq.gptq_blocks(weight, stats.hessian, bits=bits, block=block, symmetric=symmetric,
                                                   act_order=act_order, clip=clip, where=f"node '{node.name}'")
            result[node.name] = blocks
            # later groups see this layer as it will compute: its rounded weight
            twin = by_name[node.name]
            twin.inputs[1] = add_initializer(working, f"{node.inputs[1].name}_gptq", dequantized)
        working.invalidate()
    rows = int(sum(len(next(iter(f.values()))) for f in feeds))
    return result, {"calibration_samples": rows}


def run_awq(model: Model, matmuls: Sequence[gs.Node], feeds: list[dict], *, bits: int, block: int,
            symmetric: bool, clip: bool) -> dict:
    """Search and apply AWQ scales to ``matmuls`` of ``model`` (in place); returns statistics."""
    groups = groups_by_input(model, matmuls)
    stats = layer_inputs.collect(model, [t.name for t, _ in groups], feeds, keep_rows=AWQ_ROWS)
    folded: dict[str, int] = {}
    alphas = []
    for tensor, nodes in groups:
        entry = stats[tensor.name]
        weights = [np.asarray(n.inputs[1].values) for n in nodes]
        s, alpha, _ = awq.search_scale(weights, entry.sample, entry.mean_abs, bits=bits, block=block,
                                       symmetric=symmetric)
        alphas.append(alpha)
        if alpha > 0.0:  # α = 0 is s = 1: nothing to change
            how = awq.apply_scale(model, tensor, nodes, s)
            folded[how] = folded.get(how, 0) + 1
        if clip:  # the inputs are now x / s: their Gram matrix is G / (s sᵀ)
            gram = entry.gram / np.outer(s, s)
            for node in nodes:
                clipped = clip_weights(np.asarray(node.inputs[1].values), gram, bits=bits, block=block,
                                       symmetric=symmetric)
                node.inputs[1] = add_initializer(model, f"{node.inputs[1].name}_clip", clipped)
    model.invalidate()
    return {"awq_scaled": folded, "awq_mean_alpha": round(float(np.mean(alphas)), 3) if alphas else 0.0}


def require_data(ctx, algorithm: str) -> None:
    if ctx.data is None:
        raise PassError(f"quantize-weights{{algorithm={algorithm}}} needs calibration data",
                        where="pass 'quantize-weights'",
                        hint="give sample inputs with --data FILE.npz (or data= in Python), or use algorithm=rtn")

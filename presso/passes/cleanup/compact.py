"""`compact`: make a model's file small for deployment without changing what it computes.

Run it last: it renames internal tensors and nodes, so anything that addresses them by name
(``evaluate(..., outputs=[...])``, ``exclude`` patterns, pass logs) no longer finds the
original names. Graph input and output names never change. Preserves semantics.
"""

from __future__ import annotations

import hashlib
import itertools
import string
from collections.abc import Iterator
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from ...ir import Model
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass

# Names start with a letter and go on with letters, digits and '_' (valid identifiers in C,
# Python and TVM, which build symbols from them): 52 one-character names, 3,276 of two.
_FIRST = string.ascii_letters
_REST = string.ascii_letters + string.digits + "_"


@register_pass("compact")
class Compact(Pass):
    """Shrink the serialized model: short names, no value_info, no doc strings, no duplicates.

    - ``names=true``: every tensor and node that is not a graph input or output gets a short
      name (``a``, ``b``, … ``aB``…), the most used tensors the shortest. On PP-OCRv4 det int8
      names take ≈ 10% of the file; after this ≈ 1.5%.
    - ``value_info=true``: drops the recorded dtype/shape of intermediate tensors (onnxruntime
      and Presso infer them on load). Outputs of non-standard-domain ops keep theirs, since
      ``onnx.shape_inference`` cannot infer those.
    - ``doc_strings=true``: drops the graph's doc string.
    - ``dedupe=true``: constants with the same dtype, shape and bytes become one — Q/DQ
      scales, zero points and quantized constant operands, and small constants of other ops
      (Clip bounds, Resize scales) — and so do DequantizeLinear nodes of the same constants.
      Weights of Conv/MatMul/Gemm stay apart (onnxruntime's own rewrites of them depend on who
      else reads them). Calibration groups activations by their scale constant, so do not
      calibrate a compacted model again.
    - ``bias_scales=true``: per-channel int32 bias scales become ``Mul(input scale, weight
      scale)`` where that reproduces them bit for bit (see
      :func:`~presso.passes.quant.qdq.derive_bias_scales`); onnxruntime folds the Mul when it
      loads the model. Off by default: runtimes that need constant Q/DQ parameters without
      folding constants first (TensorRT's parser) refuse it.
    - ``annotations``: ``keep``; ``compact`` (default) keeps every annotation but stores pass
      history options only where they differ from the pass's defaults; ``drop`` removes all.

    Needs nothing. Preserves semantics.
    """

    preserves_semantics = True
    names: bool = True
    value_info: bool = True
    doc_strings: bool = True
    dedupe: bool = True
    bias_scales: bool = False
    annotations: Literal["keep", "compact", "drop"] = "compact"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        stats = {"deduplicated": 0, "renamed": 0, "value_info_dropped": 0, "bias_scales": 0}
        if self.dedupe:
            stats["deduplicated"] = deduplicate_initializers(model) + _merge_constant_dequantizers(model)
        if self.bias_scales:
            from ..quant.qdq import derive_bias_scales

            stats["bias_scales"] = derive_bias_scales(model)
        if self.value_info:
            stats["value_info_dropped"] = _drop_value_info(model)
        if self.doc_strings:
            model.graph.doc_string = ""
        if self.annotations == "drop":
            model.annotations.quant.clear()
            model.annotations.sparsity.clear()
            model.annotations.pruning.clear()
            model.annotations.history.clear()
        elif self.annotations == "compact":
            _compact_history(model)
        if self.names:
            renamed = shorten_names(model)
            stats["renamed"] = len(renamed)
            # for error messages about the compacted model (the backend names nodes this way)
            ctx.shared["compact.original_node_names"] = renamed
        return PassResult(changed=True, stats=stats)


def _short_names() -> Iterator[str]:
    for length in itertools.count(1):
        for first in _FIRST:
            for rest in itertools.product(_REST, repeat=length - 1):
                yield first + "".join(rest)


def shorten_names(model: Model) -> dict[str, str]:
    """Give every internal tensor and node a short name.

    Returns the original name of every renamed node, by its new name (to name nodes in error
    messages as the user knows them). Annotations keyed by tensor name follow the rename.
    Models with subgraphs (If/Loop/Scan) are left alone: their bodies may refer to outer
    tensors by name.
    """
    graph = model.graph
    if any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph))
           for node in graph.nodes for v in node.attrs.values()):
        return {}
    interface = {id(t) for t in [*graph.inputs, *graph.outputs]}
    kept = {t.name for t in [*graph.inputs, *graph.outputs]}
    uses: dict[int, int] = {}
    tensors: dict[int, gs.Tensor] = {}
    for node in graph.nodes:
        for t in [*node.inputs, *node.outputs]:
            if t.name and id(t) not in interface:
                tensors[id(t)] = t
                uses[id(t)] = uses.get(id(t), 0) + 1
    # the most referenced tensors get the shortest names (each use writes the name once more)
    order = sorted(tensors.values(), key=lambda t: -uses[id(t)])
    fresh = (name for name in _short_names() if name not in kept)
    renamed: dict[str, str] = {}
    for tensor in order:
        new = next(fresh)
        renamed[tensor.name] = new
        if tensor.name != new:
            _own_proto(tensor)
            tensor.name = new
    # All at once: a new name may be an old name of another tensor. Annotations of tensors no
    # longer in the graph go (their names could now mean another tensor).
    annotations = model.annotations
    for table in (annotations.quant, annotations.sparsity):
        entries = dict(table)
        table.clear()
        table.update({renamed[k]: v for k, v in entries.items() if k in renamed})
        table.update({k: v for k, v in entries.items() if k in kept})
    # Node names live in their own namespace in ONNX (and onnxruntime): start again at "a".
    node_names = _short_names()
    original = {}
    for node in graph.nodes:
        new = next(node_names)
        original[new] = node.name
        node.name = new
    model.reserved_names.clear()
    return original


def _own_proto(tensor: gs.Tensor) -> None:
    """Give a lazily loaded constant its own TensorProto before it is renamed.

    graphsurgeon exports such a constant by writing its name into the TensorProto it was
    imported from — the caller's ``onnx.ModelProto`` when the model came from one, shared by
    every ``Model.copy()``. Renaming without this would rename the caller's initializer.
    """
    if isinstance(tensor, gs.Constant) and type(tensor._values) is LazyValues:
        own = onnx.TensorProto()
        own.CopyFrom(tensor._values.tensor)
        tensor._values = LazyValues(own)


# Onnxruntime rewrites a DequantizeLinear of a weight that feeds one of these ops by itself
# (DQ → MatMul/Gemm with float activations becomes MatMulNBits) only while the DQ and its
# initializer have no other user: sharing them would change which kernel runs.
_UNSHARED_WEIGHT_OPS = {"MatMul", "Gemm"}
# Ops whose weights and biases onnxruntime may rewrite in place (Conv+Add, Conv+Mul fusions)
# when nothing else reads them: their own constants are never shared.
_WEIGHT_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# Other constants are shared only when this small: Clip bounds, Resize scales, the 6 of a
# hard-swish (exporters repeat them per node; onnxruntime's fusions only read their values).
_SMALL_BYTES = 64


def _shareable(node: gs.Node) -> bool:
    """A Q/DQ node whose constant inputs may be shared with other Q/DQ nodes."""
    if node.op == "QuantizeLinear":
        return True
    return node.op == "DequantizeLinear" and not any(
        c.op in _UNSHARED_WEIGHT_OPS for out in node.outputs for c in out.outputs)


def _may_share(tensor: gs.Constant) -> bool:
    for consumer in tensor.outputs:
        if consumer.op in ("QuantizeLinear", "DequantizeLinear"):
            if not _shareable(consumer):
                return False
        elif consumer.op in _WEIGHT_OPS or tensor.values.nbytes > _SMALL_BYTES:
            return False
    return True


def deduplicate_initializers(model: Model) -> int:
    """Make consumers of identical constants (dtype, shape, bytes) read one copy.

    Shared are the constants of Q/DQ nodes (scales, zero points, quantized constant operands:
    onnxruntime's QDQ fusions compare those by value) and small constants of other ops,
    never the weights of Conv/MatMul/Gemm or what a DQ → MatMul/Gemm reads (onnxruntime
    rewrites those only while nothing else uses them). Returns how many inputs now read a
    shared copy.
    """
    first: dict[tuple, gs.Constant] = {}
    replaced = 0
    interface = {id(t) for t in [*model.graph.inputs, *model.graph.outputs]}
    for node in model.graph.nodes:
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant) or not tensor.name or id(tensor) in interface:
                continue
            values = tensor.values
            if not isinstance(values, np.ndarray) or not _may_share(tensor):
                continue
            data = values.tobytes()
            key = (str(values.dtype), values.shape, hashlib.blake2b(data, digest_size=16).digest())
            kept = first.setdefault(key, tensor)
            if kept is not tensor and kept.values.tobytes() == data:
                node.inputs[index] = kept
                replaced += 1
    if replaced:
        model.graph.cleanup(remove_unused_graph_inputs=False)
    return replaced


def _merge_constant_dequantizers(model: Model) -> int:
    """DequantizeLinear nodes that read the same constants with the same attributes: keep one."""
    seen: dict[tuple, gs.Node] = {}
    outputs = {id(t) for t in model.graph.outputs}
    merged = 0
    for node in model.nodes("DequantizeLinear"):
        if (not all(isinstance(t, gs.Constant) for t in node.inputs) or id(node.outputs[0]) in outputs
                or not _shareable(node)):
            continue
        key = (tuple(id(t) for t in node.inputs), tuple(sorted((k, repr(v)) for k, v in node.attrs.items())))
        kept = seen.setdefault(key, node)
        if kept is node:
            continue
        out = node.outputs[0]
        for consumer in list(out.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is out:
                    consumer.inputs[i] = kept.outputs[0]
        node.outputs.clear()
        merged += 1
    if merged:
        model.graph.cleanup(remove_unused_graph_inputs=False)
    return merged


def _drop_value_info(model: Model) -> int:
    interface = {id(t) for t in [*model.graph.inputs, *model.graph.outputs]}
    dropped = 0
    for node in model.graph.nodes:
        if node.domain not in ("", "ai.onnx", None):
            continue
        for out in node.outputs:
            if id(out) in interface or not isinstance(out, gs.Variable):
                continue
            if out.dtype is not None or out.shape is not None:
                out.dtype, out.shape = None, None
                dropped += 1
    return dropped


def _compact_history(model: Model) -> None:
    """Keep each history entry's pass name and only the options that differ from its defaults."""
    from ..registry import available_passes

    passes = available_passes()
    for entry in model.annotations.history:
        cls = passes.get(entry.get("pass"))
        options = entry.get("options")
        if cls is None or not isinstance(options, dict):
            continue
        defaults = {k: spec.default for k, spec in cls.options.items()}
        entry["options"] = {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}

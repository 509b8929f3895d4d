"""Per-layer precision of a calibrated Q/DQ model: which layers there are, and how to put one
layer (or all but one) back in higher precision.

A *layer* is a node of the top graph (not a Q/DQ itself) that reads at least one
DequantizeLinear output: its quantization is the rounding of the values it reads (activations,
weights, biases), the part onnxruntime fuses into one int8 kernel with the Q on its output.
Levels, from cheapest to most precise:

- ``int8``: as calibrated.
- ``a16w8``: the layer reads its activations unrounded and keeps its int8 weights (weights and
  size as int8; only Conv/ConvTranspose/Gemm/MatMul weights: other constant operands go float). This is the CPU form of 16-bit activations: onnxruntime has no 16-bit
  conv/matmul kernel, so a uint16 Q/DQ there is a float kernel anyway, with 16-bit rounding
  added; the float activation is the same kernel without that rounding.
- ``float``: the layer reads float activations and float weights (the dequantized weights, so
  a bias-corrected bias stays corrected).

Edits rewire the layer's inputs from a DequantizeLinear to what it stands for
(``qdq.float_source``); Q/DQ pairs left without readers are removed by the graph cleanup.
These edits work on the model before ``fold-qdq``. Not semantics-preserving by themselves
(they undo part of the quantization).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, producer
from ...ir.errors import PassError
from .qdq import float_source

LEVELS = ("int8", "a16w8", "float")
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def layers(model: Model) -> list[gs.Node]:
    """The quantized layers of a Q/DQ model (see the module docstring), in graph order."""
    found = []
    for node in model.graph.nodes:
        if node.op in _QDQ_OPS:
            continue
        if any(_dq_of(t) is not None for t in node.inputs):
            found.append(node)
    return found


def layer_names(model: Model) -> list[str]:
    names = [node.name for node in layers(model)]
    if len(set(names)) != len(names) or not all(names):
        raise PassError("the quantized layers need unique, non-empty node names",
                        hint="run the model through `presso opt -p fold-constants` or name its nodes")
    return names


def _dq_of(tensor: gs.Tensor) -> gs.Node | None:
    node = producer(tensor) if isinstance(tensor, gs.Variable) else None
    return node if node is not None and node.op == "DequantizeLinear" else None


def is_activation_dq(dq: gs.Node) -> bool:
    """True when the DQ stands for a computed tensor (its Q reads a non-constant)."""
    q = producer(dq.inputs[0])
    return q is not None and q.op == "QuantizeLinear" and not isinstance(q.inputs[0], gs.Constant)


class _Rewirer:
    """Rewires node inputs from a DQ to its float source, materializing dequantized constants
    once. With a ``reference`` (the float model with the same node names), a constant input
    takes the reference's own value (the bias before ``bias-correction`` moved it)."""

    def __init__(self, model: Model, reference: Model | None = None):
        self.model = model
        self.constants: dict[str, gs.Tensor] = {}
        self.reference = {n.name: n for n in reference.graph.nodes} if reference is not None else {}

    def source(self, dq: gs.Node, node: gs.Node, index: int) -> gs.Tensor | None:
        original = self.reference.get(node.name)
        if original is not None and original.op == node.op and index < len(original.inputs) and not is_activation_dq(dq):
            value = original.inputs[index]
            stored = np.asarray(dq.inputs[0].values if isinstance(dq.inputs[0], gs.Constant)
                                else producer(dq.inputs[0]).inputs[0].values)
            if isinstance(value, gs.Constant) and np.size(value.values) == stored.size:
                key = f"reference:{value.name}"
                if key not in self.constants:
                    values = np.asarray(value.values).reshape(stored.shape)
                    self.constants[key] = add_initializer(self.model, f"{value.name}_float", values)
                return self.constants[key]
        key = dq.outputs[0].name
        if key not in self.constants:
            source = float_source(dq)
            if isinstance(source, np.ndarray):
                source = add_initializer(self.model, f"{dq.inputs[0].name}_float", source)
            self.constants[key] = source
        return self.constants[key]

    def rewire(self, node: gs.Node, keep: Callable[[gs.Node], bool]) -> int:
        changed = 0
        for index, tensor in enumerate(node.inputs):
            dq = _dq_of(tensor)
            if dq is None or keep(dq):
                continue
            source = self.source(dq, node, index)
            if source is not None:
                node.inputs[index] = source
                changed += 1
        original = self.reference.get(node.name)
        if (original is not None and original.op == node.op and len(node.inputs) > len(original.inputs)
                and all(isinstance(t, gs.Constant) for t in node.inputs[len(original.inputs):])):
            # an input that bias-correction added to a bias-less conv: the float layer has none
            while len(node.inputs) > len(original.inputs):
                del node.inputs[-1]
        return changed

    def finish(self, changed: int) -> None:
        if changed:
            self.model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            self.model.invalidate()


def _keep_for(level: str, node: gs.Node) -> Callable[[gs.Node], bool]:
    if level == "int8":
        return lambda dq: True
    if level == "a16w8":
        # Only the weights of weight ops stay int8: a constant operand of an Add/Mul (a LayerNorm
        # gain, a hard-swish offset) is a few bytes whose rounding buys no integer kernel here.
        return lambda dq: not is_activation_dq(dq) and node.op in WEIGHT_OPS
    if level == "float":
        return lambda dq: False
    raise PassError(f"unknown precision level '{level}'", hint=f"use one of {', '.join(LEVELS)}")


def apply_precision(model: Model, plan: Mapping[str, str], reference: Model | None = None) -> int:
    """Put each named layer at its level (``int8``, ``a16w8``, ``float``), in place; returns how
    many inputs were rewired. ``reference``: the float model with the same node names
    (:func:`float_reference`), whose weights and biases float layers take. An unknown layer
    name is a :class:`PassError`."""
    by_name = {node.name: node for node in layers(model)}
    unknown = sorted(set(plan) - set(by_name))
    if unknown:
        raise PassError(f"unknown quantized layer(s) {unknown[:5]}", hint="list them with "
                        "`presso inspect MODEL --sensitivity`; names are those of the quantized model's nodes")
    rewirer = _Rewirer(model, reference)
    changed = sum(rewirer.rewire(by_name[name], _keep_for(level, by_name[name])) for name, level in plan.items())
    rewirer.finish(changed)
    return changed


def leave_float(model: Model, names: Iterable[str], level: str = "float", reference: Model | None = None) -> int:
    """Every named layer at ``level`` (default float), in place."""
    return apply_precision(model, {name: level for name in names}, reference)


def float_reference(model: Model, ctx=None, **insert_options) -> Model:
    """The float model as ``insert-qdq`` prepares it (folded BatchNorm, constants, opset), with
    the node names the quantized model will have: a copy through ``insert-qdq`` and back."""
    from .insert_qdq import InsertQDQ
    from .qdq import strip_qdq

    reference = model.copy()
    if not reference.nodes(*_QDQ_OPS):
        from ..base import PassContext

        InsertQDQ(**insert_options).run(reference, ctx if ctx is not None else PassContext(progress=False))
    strip_qdq(reference)
    return reference


def quantize_only(model: Model, name: str, reference: Model | None = None) -> int:
    """Keep only layer ``name`` quantized (its inputs, and the Q/DQ on its output that the
    next layers read, which is part of its int8 kernel); every other layer reads float."""
    by_name = {node.name: node for node in layers(model)}
    if name not in by_name:
        raise PassError(f"unknown quantized layer '{name}'")
    outputs = {t.name for t in by_name[name].outputs}

    def reads_layer_output(dq: gs.Node) -> bool:
        q = producer(dq.inputs[0])
        return q is not None and q.op == "QuantizeLinear" and q.inputs[0].name in outputs

    rewirer = _Rewirer(model, reference)
    changed = sum(rewirer.rewire(node, reads_layer_output) for node_name, node in by_name.items() if node_name != name)
    rewirer.finish(changed)
    return changed


def weight_of(node: gs.Node) -> np.ndarray | None:
    """The float weight a layer reads through a DQ of a constant (the largest such input)."""
    best = None
    for tensor in node.inputs:
        dq = _dq_of(tensor)
        if dq is None or is_activation_dq(dq):
            continue
        q = producer(dq.inputs[0])
        source = q.inputs[0] if q is not None and q.op == "QuantizeLinear" else None
        values = source.values if isinstance(source, gs.Constant) else float_source(dq)
        if values is not None and np.asarray(values).dtype.kind == "f" and (best is None or np.size(values) > np.size(best)):
            best = np.asarray(values)
    return best


def activation_sources(node: gs.Node) -> list[str]:
    """Names of the float tensors a layer's activation DQs stand for."""
    names = []
    for tensor in node.inputs:
        dq = _dq_of(tensor)
        if dq is not None and is_activation_dq(dq):
            names.append(producer(dq.inputs[0]).inputs[0].name)
    return names


def weight_bytes(model: Model) -> int:
    """Bytes of the model's initializers (what a saved model's size is made of)."""
    total = 0
    for tensor in model.graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            total += int(np.asarray(tensor.values).nbytes)
    return total

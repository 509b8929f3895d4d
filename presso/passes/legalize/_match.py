"""Small pattern-matching helpers shared by the legalization passes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import batch_names, producer


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a constant tensor (an initializer or a Constant node's output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        value = node.attrs["value"]
        return np.asarray(value.values if isinstance(value, gs.Constant) else value)
    return None


def scalar(tensor: gs.Tensor) -> float | None:
    """The value of a constant with a single element, else None."""
    value = const_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """For a two-input node reading ``tensor``, the other input."""
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] is tensor:
        return node.inputs[1]
    if node.inputs[1] is tensor:
        return node.inputs[0]
    return None


def only_consumer(tensor: gs.Tensor, model) -> gs.Node | None:
    """The single node reading ``tensor`` when it is not also a graph output."""
    if len(tensor.outputs) != 1 or any(t is tensor for t in model.graph.outputs):
        return None
    return tensor.outputs[0]


def close(value: float | None, want: float, tol: float = 1e-5) -> bool:
    return value is not None and abs(value - want) <= tol * max(1.0, abs(want))


def rewrite_each(model: Model, ops: tuple[str, ...], rewrite: Callable[[gs.Node], bool]) -> int:
    """Call ``rewrite(node)`` on every node of the ``ops`` types that still has outputs (an
    earlier rewrite may have consumed it); returns how many it rewrote. Names are batched, and
    a graph that changed is cleaned up and sorted again."""
    count = 0
    with batch_names(model):
        for node in model.nodes(*ops):
            if node.outputs and rewrite(node):
                count += 1
    if count:
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
    return count

"""Use-def helpers: the only way passes rewire the graph.

graphsurgeon keeps producer (``tensor.inputs``) and consumer (``tensor.outputs``) lists in
sync when a node's ``inputs``/``outputs`` lists are edited; these helpers add the rules that
keep the *graph* valid too: graph outputs keep their names, names stay unique, and removed
nodes are fully detached.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .model import Model


def unique_name(model: Model, base: str) -> str:
    """A tensor/node name starting with ``base`` that is not used in the graph yet."""
    # Reserved names cover tensors created but not wired into the graph yet.
    taken = set(model.graph.tensors().keys()) | {n.name for n in model.graph.nodes}
    taken |= model.reserved_names
    candidates = itertools.chain([base], (f"{base}_{i}" for i in itertools.count(1)))
    name = next(c for c in candidates if c not in taken)
    model.reserved_names.add(name)
    return name


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def is_graph_output(model: Model, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in model.graph.outputs)


def is_graph_input(model: Model, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in model.graph.inputs)


def replace_all_uses(model: Model, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` (and the graph outputs) use ``new`` instead.

    If ``old`` is a graph output, ``new`` takes over its name so that the model's interface
    does not change; ``old`` is renamed out of the way.
    """
    if old is new:
        return
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    if is_graph_output(model, old):
        outputs = model.graph.outputs
        for i, t in enumerate(outputs):
            if t is old:
                outputs[i] = new
        name = old.name
        old.name = unique_name(model, name + "_replaced")
        new.name = name
        if isinstance(new, gs.Variable) and isinstance(old, gs.Variable):
            new.dtype = new.dtype or old.dtype
            new.shape = new.shape or old.shape


def insert_node_on_edge(
    model: Model,
    tensor: gs.Tensor,
    op: str,
    *,
    name: str | None = None,
    extra_inputs: Sequence[gs.Tensor] = (),
    attrs: dict | None = None,
    only_for: Iterable[gs.Node] | None = None,
    domain: str | None = None,
) -> gs.Node:
    """Insert ``op`` between ``tensor`` and its consumers (all, or ``only_for``).

    The new node reads ``[tensor, *extra_inputs]`` and writes a new tensor that the consumers
    read instead. If ``tensor`` is a graph output and all uses move, the new output takes the
    graph output's place and name.
    """
    node_name = unique_name(model, name or f"{tensor.name}_{op}")
    out = gs.Variable(unique_name(model, f"{node_name}_out"), dtype=tensor.dtype, shape=tensor.shape)
    node = gs.Node(op=op, name=node_name, attrs=dict(attrs or {}), inputs=[tensor, *extra_inputs],
                   outputs=[out], domain=domain)
    model.graph.nodes.append(node)
    targets = list(tensor.outputs) if only_for is None else list(only_for)
    for consumer in targets:
        if consumer is node:
            continue
        for i, t in enumerate(consumer.inputs):
            if t is tensor:
                consumer.inputs[i] = out
    if only_for is None and is_graph_output(model, tensor):
        replace_all_uses(model, tensor, out)
    return node


def add_node(model: Model, op: str, inputs: Sequence[gs.Tensor], *, name: str | None = None,
             attrs: dict | None = None, num_outputs: int = 1, dtype=None, shape=None,
             domain: str | None = None) -> gs.Node:
    """Append a new node with fresh output variables."""
    node_name = unique_name(model, name or op)
    outputs = [
        gs.Variable(unique_name(model, f"{node_name}_out{i}" if num_outputs > 1 else f"{node_name}_out"),
                    dtype=dtype, shape=shape)
        for i in range(num_outputs)
    ]
    node = gs.Node(op=op, name=node_name, attrs=dict(attrs or {}), inputs=list(inputs),
                   outputs=outputs, domain=domain)
    model.graph.nodes.append(node)
    return node


def detach_node(model: Model, node: gs.Node) -> None:
    """Remove ``node`` from the graph, clearing its links (its outputs must be unused)."""
    node.inputs.clear()
    node.outputs.clear()
    model.graph.nodes.remove(node)


def remove_node(model: Model, node: gs.Node, *, input_index: int = 0, output_index: int = 0) -> bool:
    """Remove a pass-through node, reconnecting its consumers to ``node.inputs[input_index]``.

    Returns False (and changes nothing) when that is not possible without changing the
    model's interface: the output is a graph output and the input is a graph input or
    another graph output.
    """
    src = node.inputs[input_index]
    dst = node.outputs[output_index]
    if is_graph_output(model, dst) and (is_graph_input(model, src) or is_graph_output(model, src)
                                        or isinstance(src, gs.Constant)):
        return False
    other_outputs_used = any(
        (t.outputs or is_graph_output(model, t)) for j, t in enumerate(node.outputs) if j != output_index
    )
    if other_outputs_used:
        return False
    replace_all_uses(model, dst, src)
    detach_node(model, node)
    return True


def add_initializer(model: Model, name: str, values: np.ndarray, *, exact_name: bool = False) -> gs.Constant:
    """Create a constant tensor (an initializer once exported) with a unique name."""
    final = name if exact_name else unique_name(model, name)
    return gs.Constant(final, np.ascontiguousarray(values))


def set_constant(tensor: gs.Constant, values: np.ndarray) -> None:
    """Replace the data of a constant tensor in place (all users see the new values)."""
    tensor.values = np.ascontiguousarray(values)

"""Use-def helpers: the only way passes rewire the graph.

graphsurgeon keeps producer (``tensor.inputs``) and consumer (``tensor.outputs``) lists in
sync when a node's ``inputs``/``outputs`` lists are edited; these helpers add the rules that
keep the *graph* valid too: graph outputs keep their names, names stay unique, and removed
nodes are fully detached.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx_graphsurgeon as gs

from .model import Model


def unique_name(model: Model, base: str) -> str:
    """A tensor/node name starting with ``base`` that is not used in the graph yet.

    The first of ``base``, ``base_1``, ``base_2``, … that names no node, no tensor and no
    name handed out before (reserved names cover tensors created but not wired in yet).
    """
    return _unique_names(model, [base])[0]


@contextmanager
def batch_names(model: Model) -> Iterator[None]:
    """Walk the graph for names once for a whole burst of edits, instead of once per name.

    Inside the block, ``unique_name`` (and the helpers that use it) check against the names
    the graph had on entry plus every name handed out since: a pass with hundreds of edits
    stays linear on big graphs (DenseNet). Only for code that creates names through the
    helpers: a name invented by hand inside the block is not seen. Names removed inside the
    block stay taken, which only skips a suffix.
    """
    if model._name_cache is not None:  # nested: the outer block's cache is already live
        yield
        return
    model._name_cache = _used_names(model.graph)
    try:
        yield
    finally:
        model._name_cache = None


def _taken_names(model: Model) -> set[str]:
    return model._name_cache if model._name_cache is not None else _used_names(model.graph)


def _unique_names(model: Model, bases: Sequence[str]) -> list[str]:
    """``unique_name`` for several bases in order, walking the graph once."""
    taken = _taken_names(model)
    names = []
    for base in bases:
        candidates = itertools.chain([base], (f"{base}_{i}" for i in itertools.count(1)))
        name = next(c for c in candidates if c not in taken and c not in model.reserved_names)
        model.reserved_names.add(name)
        names.append(name)
    return names


def _used_names(graph: gs.Graph) -> set[str]:
    # One plain walk over the nodes. Outside `batch_names` the graph may have been edited in
    # any way since the last call, so nothing is cached; the walk is still ~5x cheaper than
    # graph.tensors(), which builds an ordered map and checks every tensor for duplicates.
    names = {t.name for t in graph.inputs}
    names.update(t.name for t in graph.outputs)
    add = names.add
    for node in graph.nodes:
        add(node.name)
        for t in node.inputs:
            add(t.name)
        for t in node.outputs:
            add(t.name)
    names.discard("")  # empty optional inputs are not names
    return names


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
        _take_over_graph_output(model, old, new)


def _take_over_graph_output(model: Model, old: gs.Tensor, new: gs.Tensor) -> None:
    """``new`` replaces graph output ``old`` under ``old``'s name; ``old`` gets a fresh name."""
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
    targets = list(tensor.outputs) if only_for is None else list(only_for)
    node = gs.Node(op=op, name=node_name, attrs=dict(attrs or {}), inputs=[tensor, *extra_inputs],
                   outputs=[out], domain=domain)
    _insert_in_order(model.graph, node, targets)
    for consumer in targets:
        if consumer is node:
            continue
        for i, t in enumerate(consumer.inputs):
            if t is tensor:
                consumer.inputs[i] = out
    if only_for is None and is_graph_output(model, tensor):
        _take_over_graph_output(model, tensor, out)  # not replace_all_uses: the new node reads it
    return node


def _insert_in_order(graph: gs.Graph, node: gs.Node, consumers_: Sequence[gs.Node]) -> None:
    """Place ``node`` after the producers of its inputs and before ``consumers_`` in the list,
    so that a topologically sorted graph stays sorted; toposort when no such place exists."""
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    after = max((position.get(id(t.inputs[0]), -1) for t in node.inputs if t.inputs), default=-1)
    before = min((position[id(c)] for c in consumers_ if id(c) in position), default=len(graph.nodes))
    if after < before:
        graph.nodes.insert(after + 1, node)
    else:
        graph.nodes.append(node)
        graph.toposort()


def add_node(model: Model, op: str, inputs: Sequence[gs.Tensor], *, name: str | None = None,
             attrs: dict | None = None, num_outputs: int = 1, dtype=None, shape=None,
             domain: str | None = None) -> gs.Node:
    """Append a new node with fresh output variables."""
    node_name = unique_name(model, name or op)
    out_names = _unique_names(model, [f"{node_name}_out{i}" if num_outputs > 1 else f"{node_name}_out"
                                      for i in range(num_outputs)])
    outputs = [gs.Variable(n, dtype=dtype, shape=shape) for n in out_names]
    node = gs.Node(op=op, name=node_name, attrs=dict(attrs or {}), inputs=list(inputs),
                   outputs=outputs, domain=domain)
    model.graph.nodes.append(node)
    return node


def detach_node(model: Model, node: gs.Node) -> None:
    """Remove ``node`` from the graph, clearing its links (its outputs must be unused)."""
    node.inputs.clear()
    node.outputs.clear()
    # by identity: list.remove compares with graphsurgeon's Node.__eq__, which walks attributes
    nodes = model.graph.nodes
    del nodes[next(i for i, n in enumerate(nodes) if n is node)]


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

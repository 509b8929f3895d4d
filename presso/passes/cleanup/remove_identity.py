"""`remove-identity`: drop Identity nodes and inference-time Dropout."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import remove_node
from ...ir.subgraphs import bodies
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("remove-identity")
class RemoveIdentity(Pass):
    """Remove Identity nodes and Dropout nodes (a no-op at inference), reconnecting consumers.

    A Dropout whose ``training_mode`` input is not a constant false, or whose mask output is
    used, stays. A node linking a graph input straight to a graph output stays too, since
    removing it would rename the model's interface. Inside If/Loop/Scan bodies only nodes whose
    output stays inside the body go: a body output must be produced by the body itself (an
    Identity that hands an outer value out of a branch is how ONNX spells "return x").
    Preserves semantics.
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        removed = {"Identity": 0, "Dropout": 0}
        for node in model.nodes("Identity", "Dropout"):
            if _removable(node) and remove_node(model, node):
                removed[node.op] += 1
        in_bodies = 0
        for body in list(bodies(model.graph)):
            in_bodies += _remove_in_body(body.graph)
        return PassResult(changed=bool(sum(removed.values()) or in_bodies),
                          stats={"identity_removed": removed["Identity"], "dropout_removed": removed["Dropout"],
                                 "removed_in_bodies": in_bodies})


def _removable(node: gs.Node) -> bool:
    return node.op == "Identity" or _is_inference_dropout(node)


def _remove_in_body(graph: gs.Graph) -> int:
    outputs = {id(t) for t in graph.outputs}
    removed = 0
    for node in [n for n in graph.nodes if n.op in ("Identity", "Dropout")]:
        src, dst = node.inputs[0], node.outputs[0]
        if not _removable(node) or id(dst) in outputs or any(t.outputs for t in node.outputs[1:]):
            continue
        for consumer in list(dst.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is dst:
                    consumer.inputs[i] = src
        node.inputs.clear()
        node.outputs.clear()
        del graph.nodes[next(i for i, n in enumerate(graph.nodes) if n is node)]
        removed += 1
    return removed


def _is_inference_dropout(node: gs.Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False  # the mask is consumed
    if len(node.inputs) >= 3 and node.inputs[2].name:
        training = node.inputs[2]
        return isinstance(training, gs.Constant) and not bool(training.values)
    return True

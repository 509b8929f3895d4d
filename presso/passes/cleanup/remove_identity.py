"""`remove-identity`: drop Identity nodes and inference-time Dropout."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import remove_node
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("remove-identity")
class RemoveIdentity(Pass):
    """Remove Identity nodes and Dropout nodes (a no-op at inference), reconnecting consumers.

    A Dropout whose ``training_mode`` input is not a constant false, or whose mask output is
    used, stays. A node linking a graph input straight to a graph output stays too, since
    removing it would rename the model's interface. Preserves semantics.
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        removed = {"Identity": 0, "Dropout": 0}
        for node in model.nodes("Identity", "Dropout"):
            if node.op == "Dropout" and not _is_inference_dropout(node):
                continue
            if remove_node(model, node):
                removed[node.op] += 1
        return PassResult(changed=any(removed.values()),
                          stats={"identity_removed": removed["Identity"], "dropout_removed": removed["Dropout"]})


def _is_inference_dropout(node: gs.Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False  # the mask is consumed
    if len(node.inputs) >= 3 and node.inputs[2].name:
        training = node.inputs[2]
        return isinstance(training, gs.Constant) and not bool(training.values)
    return True

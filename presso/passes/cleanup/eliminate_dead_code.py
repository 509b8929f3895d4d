"""`eliminate-dead-code`: remove nodes, outputs and initializers that no graph output needs."""

from __future__ import annotations

from ...ir import Model
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("eliminate-dead-code")
class EliminateDeadCode(Pass):
    """Remove every node whose outputs reach no graph output, and unused initializers.

    Graph inputs stay (they are the model's interface) unless ``remove_unused_inputs=true``.
    Preserves semantics.
    """

    preserves_semantics = True
    remove_unused_inputs: bool = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        nodes_before = len(model.graph.nodes)
        inits_before = len(model.initializers())
        inputs_before = len(model.graph.inputs)
        model.graph.cleanup(remove_unused_node_outputs=False,
                            remove_unused_graph_inputs=self.remove_unused_inputs)
        removed_nodes = nodes_before - len(model.graph.nodes)
        removed_inits = inits_before - len(model.initializers())
        removed_inputs = inputs_before - len(model.graph.inputs)
        return PassResult(
            changed=bool(removed_nodes or removed_inits or removed_inputs),
            stats={"nodes_removed": removed_nodes, "initializers_removed": removed_inits,
                   "inputs_removed": removed_inputs},
        )

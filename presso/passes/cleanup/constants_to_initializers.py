"""`constants-to-initializers`: turn `Constant` nodes into initializers."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import detach_node, is_graph_output
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass

_VALUE_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


@register_pass("constants-to-initializers")
class ConstantsToInitializers(Pass):
    """Replace every ``Constant`` node by an initializer holding the same value.

    Exporters such as Paddle2ONNX keep weights in Constant nodes; quantization, pruning and
    backends look for weights among the initializers. Constants that are graph outputs, or
    hold sparse/string values, stay. Preserves semantics.
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        converted = 0
        for node in model.nodes("Constant"):
            out = node.outputs[0]
            if is_graph_output(model, out):
                continue
            value = _constant_value(node)
            if value is None:
                continue
            const = gs.Constant(out.name, value)
            for consumer in list(out.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is out:
                        consumer.inputs[i] = const
            detach_node(model, node)
            converted += 1
        return PassResult(changed=bool(converted), stats={"converted": converted})


def _constant_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        values = value.values if isinstance(value, gs.Constant) else value
        return np.asarray(values) if isinstance(values, np.ndarray) else None
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None

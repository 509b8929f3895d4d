"""Integer-form cleanups for engines that run every op as a quantized unit (the QNN HTP):
`drop-saturated-activations` removes a Relu/Clip that the following QuantizeLinear clamps
anyway; `share-table-qparams` lets an embedding Gather keep its table's grid."""

from __future__ import annotations

import numpy as np

from ...ir import Model
from ...ir.edit import detach_node, is_graph_output
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass
from .qdq import qparams
from .scheme import INTEGER_TYPES


@register_pass("drop-saturated-activations")
class DropSaturatedActivations(Pass):
    """Remove ``Relu``/``Clip`` nodes that the following QuantizeLinear makes redundant.

    ``Q(Relu(x)) = Q(x)`` when Q's smallest representable value, ``scale·(qmin − zero_point)``,
    is 0 (a calibrated Relu output: zero point at qmin); likewise for ``Clip(lo, hi)`` when
    Q's representable range lies inside [lo, hi]. Onnxruntime's CPU kernels fuse such
    activations; the QNN HTP validates each op as its own quantized unit, and one
    requantization less (the producer's Q then covers only the kept range) is both faster and
    closer to the fake-quant model. Needs: constant per-tensor Q parameters, constant Clip
    bounds. Preserves semantics exactly (Q saturates where the activation clamped).
    """

    preserves_semantics = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        dropped = 0
        for node in model.nodes("Relu", "Clip"):
            if self._redundant(model, node):
                x, y = node.inputs[0], node.outputs[0]
                for q in list(y.outputs):
                    q.inputs[0] = x
                detach_node(model, node)
                dropped += 1
        if dropped:
            model.graph.toposort()
            model.invalidate()
        return PassResult(changed=bool(dropped), stats={"dropped": dropped})

    @staticmethod
    def _redundant(model: Model, node) -> bool:
        y = node.outputs[0]
        if not y.outputs or is_graph_output(model, y) or not node.inputs:
            return False
        lo, hi = 0.0, np.inf
        if node.op == "Clip":
            bounds = []
            for i in (1, 2):
                t = node.inputs[i] if len(node.inputs) > i else None
                if t is None or not t.name:
                    bounds.append(None)
                    continue
                values = getattr(t, "values", None)
                if values is None or np.asarray(values).size != 1:
                    return False
                bounds.append(float(np.asarray(values).reshape(())))
            lo = -np.inf if bounds[0] is None else bounds[0]
            hi = np.inf if bounds[1] is None else bounds[1]
        for q in y.outputs:
            params = qparams(q) if q.op == "QuantizeLinear" else None
            if params is None or params.axis is not None:
                return False
            scale = float(np.asarray(params.scale.values).reshape(()))
            zero = int(np.asarray(params.zero_point.values).reshape(()))
            _, qmin, qmax, _ = INTEGER_TYPES[params.dtype]
            low, high = scale * (qmin - zero), scale * (qmax - zero)
            # Q's range must lie inside [lo, hi], with the lower bound met exactly (0 for Relu)
            if not (low >= lo and high <= hi * (1 + 1e-6) + 1e-12):
                return False
        return True



@register_pass("share-table-qparams")
class ShareTableQParams(Pass):
    """Give a ``Gather`` from a quantized constant table (an embedding) the table's own scale
    and zero point on its output, so the lookup moves integers without requantizing.

    The gathered values are table entries, so the table's grid holds them exactly; the QNN
    HTP needs it (a Gather whose output encoding differs from its table's fails graph
    finalization when calibration saw only part of the table). Needs: a per-tensor
    DequantizeLinear of an integer constant feeding the Gather, and only QuantizeLinear
    readers of its output. Lossy with respect to the calibrated output range (it keeps more
    precision, never less, when calibration saw the whole table).
    """

    preserves_semantics = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        shared = 0
        for gather in model.nodes("Gather"):
            dq = gather.inputs[0].inputs[0] if gather.inputs[0].inputs else None
            params = qparams(dq) if dq is not None and dq.op == "DequantizeLinear" else None
            if params is None or params.axis is not None or params.implicit_zero \
                    or getattr(dq.inputs[0], "values", None) is None:
                continue
            readers = gather.outputs[0].outputs
            if not readers or any(q.op != "QuantizeLinear" or qparams(q) is None for q in readers):
                continue
            if any(qparams(q).dtype != params.dtype for q in readers):
                continue
            for q in readers:
                q.inputs[1] = params.scale
                q.inputs[2] = params.zero_point
            shared += 1
        if shared:
            model.graph.cleanup(remove_unused_graph_inputs=False)
            model.invalidate()
        return PassResult(changed=bool(shared), stats={"shared": shared})


__all__ = ["DropSaturatedActivations", "ShareTableQParams"]

"""Lower a Presso model to a Relax ``IRModule`` through TVM's ONNX frontend.

Two steps. :func:`prepare` copies the model, expands QOperator ops (QLinearConv, …) into
their DQ → op → Q form, fixes the input shapes the user gave (``--shape``),
and runs the target's legalization pipeline plus batch-norm folding, so that shape subgraphs
(computed Reshape targets, as in magika's and PP-OCR cls' models) become constants that the
frontend accepts. :func:`to_relax` imports the cleaned model with weights bound as constants,
turns any frontend failure into a :class:`BackendError` that names the ONNX node, and with
``int8="arith"`` rewrites quantized Conv/MatMul into integer arithmetic (:mod:`.int8`).
Preserves semantics (the passes it runs do; the int8 rewrite up to the final rescale's rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from ...ir import Model, dynamic_inputs, fix_input_shapes
from ...ir.errors import BackendError, PressoError
from ...passes import PassManager
from ..target import Target
from .int8 import MODES, Int8Report, expand_qoperators
from .int8 import rewrite as rewrite_int8

# Presso passes that TVM needs on top of the target's legalization: BN folded into the conv
# (the Relax frontend would otherwise keep a separate batch_norm kernel after every conv).
_TVM_EXTRA_PASSES = "fold-batchnorm,fold-constants,eliminate-dead-code"


def prepare(model: Model, target: Target, shapes: Mapping[str, Sequence[int]] | None = None, *,
            int8: str = "float") -> Model:
    """A cleaned copy of ``model`` with ``shapes`` fixed, ready for the Relax frontend.

    With ``int8="arith"`` it also stores quantized weights as integers (``fold-qdq``: a
    QuantizeLinear of a constant weight, as onnxruntime's quantize_static leaves computed
    weights, becomes an integer initializer), which the integer rewrite needs.
    """
    model = model.copy()
    expand_qoperators(model)  # QLinearConv & co. have no Relax converter; their DQ → op → Q form does
    if shapes:
        try:
            fix_input_shapes(model, shapes)
        except PressoError as exc:
            raise BackendError(str(exc), hint="check --shape NAME=D0,D1,... against the model's inputs") from exc
    pipeline = f"{target.legalize},{_TVM_EXTRA_PASSES}"
    if int8 == "arith" and any(node.op == "QuantizeLinear" for node in model.graph.nodes):
        pipeline += ",fold-qdq{check_load=false},eliminate-dead-code"
    PassManager.parse(pipeline).run(model)
    return model


def to_relax(model: Model, *, int8: str = "float", int8_report: Int8Report | None = None, avx2: bool = False):
    """Import ``model`` into a Relax ``IRModule`` (weights bound as constants).

    ``int8``: "float" keeps the frontend's dequantize → float Conv/MatMul; "arith" runs them
    with 8-bit operands and int32 accumulation (:func:`.int8.rewrite`, which fills ``int8_report``;
    ``avx2``: the target has AVX2, so qualifying matmuls get the vpmaddubsw kernel).

    Raises :class:`BackendError` naming the first node TVM cannot take: an op with no
    converter, a non-ONNX domain, or a converter that fails on this node's attributes/shapes.
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    proto = model.to_proto()
    _check_ops(proto, frontend)
    for name, shape in dynamic_inputs(model).items():
        if shape is None:
            raise BackendError(f"input '{name}' has no shape, so TVM cannot compile it",
                               where=f"input '{name}'", hint=f"fix it with --shape {name}=D0,D1,...")
    importer = frontend.ONNXGraphImporter({}, {}, keep_params_in_input=False, sanitize=True)
    try:
        mod = importer.from_onnx(proto.graph, model.opset)
    except Exception as exc:  # the frontend raises many kinds (ValueError, TVMError, ...)
        node = _failing_node(proto, importer)
        where = f"node '{node.name}' ({node.op_type})" if node is not None else "the model's outputs"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise BackendError(f"TVM's ONNX frontend cannot convert {where}: {first_line}", where=where,
                           hint="fix the shapes with --shape, simplify the node with `presso opt`, "
                                "or compile with --backend onnxruntime") from exc
    if int8 not in MODES:
        raise BackendError(f"unknown int8 mode '{int8}'", hint=f"valid modes: {', '.join(MODES)}")
    if int8 == "arith":  # before FoldConstant, which would fold the weights' dequantize into floats
        mod = rewrite_int8(mod, int8_report, avx2=avx2)
    # Inference-only forms (batch_norm → scale/shift) and constant folding before legalization.
    seq = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                    relax.transform.CanonicalizeBindings(),
                                    relax.transform.FoldConstant()])
    return seq(mod)


def _check_ops(proto: onnx.ModelProto, frontend) -> None:
    converters = frontend._get_convert_map()
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise BackendError(f"TVM cannot compile node '{node.name}' ({node.domain}::{node.op_type}): "
                               "only the default ONNX domain is supported",
                               where=f"node '{node.name}' ({node.op_type})",
                               hint="compile with --backend onnxruntime, or replace the custom op")
        if node.op_type not in converters and node.op_type not in ("If", "Constant"):
            raise BackendError(f"TVM's ONNX frontend has no converter for node '{node.name}' ({node.op_type})",
                               where=f"node '{node.name}' ({node.op_type})",
                               hint="compile with --backend onnxruntime, or rewrite the op with `presso opt`")


def _failing_node(proto: onnx.ModelProto, importer) -> onnx.NodeProto | None:
    """The first node (graph order = import order) whose outputs the importer never produced."""
    converted = importer._nodes
    for node in proto.graph.node:
        if any(out and out not in converted for out in node.output):
            return node
    return None

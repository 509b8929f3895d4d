"""`presso.quantize`: a QuantScheme given directly reaches insert-qdq through PassContext.scheme."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import presso
from presso.passes import PassContext, PassManager
from presso.passes.quant.scheme import named_scheme


def _conv_model() -> presso.Model:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    return presso.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _activation_types(model: presso.Model) -> set[int]:
    proto = model.to_proto()
    inits = {t.name: t for t in proto.graph.initializer}
    return {inits[n.input[2]].data_type for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[2] in inits}


def test_quantize_with_a_scheme_object_uses_it():
    data = {"x": np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    model = _conv_model()
    signed = presso.quantize(model, data, scheme=named_scheme("int8-symmetric"), method="minmax",
                             fold=False, progress=False)
    unsigned = presso.quantize(model, data, scheme=named_scheme("u8s8"), method="minmax", fold=False,
                               progress=False)
    assert _activation_types(signed) == {TensorProto.INT8}
    assert _activation_types(unsigned) == {TensorProto.UINT8}
    onnx.checker.check_model(signed.to_proto(), full_check=True)


def test_pass_context_scheme_beats_the_targets():
    from presso.backends.target import get_target

    model = _conv_model()
    ctx = PassContext(target=get_target("int8-symmetric"), scheme=named_scheme("u8s8"), progress=False)
    PassManager.parse("insert-qdq").run(model, ctx=ctx)
    assert _activation_types(model) == {TensorProto.UINT8}

"""The batch-axis helpers shared by pruning, training and calibration."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from presso.ir import PressoError, evaluate, infer_tensor_infos, load
from presso.ir.analysis.batch import concrete_batch, feed_batch, static_batch


def _model(batch):
    """x[batch, 4] → MatMul → Reshape to [batch, 2, 2] (the target's batch entry 0 copies it)."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    target = numpy_helper.from_array(np.array([0, 2, 2], np.int64), "t")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "t"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, 2])], [w, target])
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_static_and_feed_batch():
    assert static_batch(_model("N")) is None and feed_batch(_model("N"), 16) == 16
    assert static_batch(_model(4)) == 4 and feed_batch(_model(4), 16) == 4


def test_concrete_batch_fixes_inside_and_restores_after():
    model = _model("N")
    with concrete_batch(model, 1) as size:
        assert size == 1
        assert infer_tensor_infos(model)["h"].shape == (1, 4)
    assert model.graph.inputs[0].shape == ["N", 4] and model.graph.outputs[0].shape[0] == "N"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert evaluate(model, {"x": x})["y"].shape == (3, 2, 2)


def test_a_batch_baked_inside_the_block_keeps_the_fixed_size():
    model = _model("N")
    with concrete_batch(model, 1):
        model.graph.nodes[1].inputs[1].values = np.array([1, 2, 2], np.int64)  # a fold would do this
        model.invalidate()
    assert model.graph.inputs[0].shape == [1, 4]  # still valid: it runs batches of 1


def test_other_dynamic_axes_are_an_error_with_a_fitting_example():
    with pytest.raises(PressoError) as info:
        with concrete_batch(_dynamic_features(), 1, needs="this"):
            pass
    assert "--shape x=1,128" in str(info.value)


def _dynamic_features():
    model = _model("N")
    model.graph.inputs[0].shape = ["N", "features"]
    model.invalidate()
    return model

"""Shape/dtype inference and fixing dynamic input dimensions."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, rand, vi
from onnx import helper

from presso.ir import PressoError, dynamic_inputs, evaluate, fix_input_shapes, infer_tensor_infos, load


def _dynamic():
    return make_proto([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c"], ["y"], name="relu")],
                      [vi("x", ["batch", 3, "h", "w"])], [vi("y", ["batch", 4, "h", "w"])],
                      [init("w", rand((4, 3, 3, 3)))])


def test_infer_tensor_infos_static_and_symbolic():
    model = load(_dynamic())
    infos = infer_tensor_infos(model)
    assert infos["c"].shape[:2] == ("batch", 4) and not infos["c"].is_static
    assert all(isinstance(d, str) for d in infos["c"].shape[2:])  # symbolic, not guessed
    assert infos["w"].shape == (4, 3, 3, 3) and infos["w"].nbytes == 4 * 108
    assert infos["c"].dtype == np.float32 and infos["c"].nbytes is None


def test_fix_input_shapes_by_input_and_by_dim_name():
    model = load(_dynamic())
    assert dynamic_inputs(model) == {"x": ["batch", 3, "h", "w"]}
    assert fix_input_shapes(model, {"x": [2, 3, 16, 16]}) == ["x"]
    assert dynamic_inputs(model) == {}
    assert infer_tensor_infos(model)["c"].shape == (2, 4, 16, 16)
    out = evaluate(model, {"x": rand((2, 3, 16, 16))})["y"]
    assert out.shape == (2, 4, 16, 16)

    model = load(_dynamic())
    assert fix_input_shapes(model, dims={"batch": 1}) == ["x"]
    assert list(model.graph.inputs[0].shape) == [1, 3, "h", "w"]


@pytest.mark.parametrize("shapes, message", [
    ({"nope": [1, 3, 8, 8]}, "unknown input"),
    ({"x": [1, 3, 8]}, "rank 4"),
    ({"x": [1, 5, 8, 8]}, "static size 3 on axis 1"),
])
def test_fix_input_shapes_errors(shapes, message):
    with pytest.raises(PressoError, match=message):
        fix_input_shapes(load(_dynamic()), shapes)


def test_inference_survives_unknown_custom_domain_ops():
    proto = make_proto([helper.make_node("Relu", ["x"], ["a"], name="r"),
                        helper.make_node("Mystery", ["a"], ["y"], name="m", domain="com.example")],
                       [vi("x", [2, 3])], [vi("y", [2, 3])])
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    infos = infer_tensor_infos(load(proto))
    assert infos["a"].shape == (2, 3)


def test_fix_input_shapes_keeps_axes_given_as_none():
    model = load(_dynamic())
    fix_input_shapes(model, {"x": [4, None, None, 32]})
    assert list(model.graph.inputs[0].shape) == [4, 3, "h", 32]

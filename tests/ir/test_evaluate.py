"""Reference evaluation: any tensor by name, and clear errors for bad feeds."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, rand, vi
from onnx import helper

from presso.ir import CalibrationError, PressoError, evaluate, load


@pytest.fixture(scope="module")
def model():
    w = rand((4, 3), seed=1)
    return load(make_proto([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                            helper.make_node("Relu", ["h"], ["y"], name="relu")],
                           [vi("x", [2, 4])], [vi("y", [2, 3])], [init("w", w)]))


def test_graph_outputs_by_default_and_intermediates_on_request(model):
    x = rand((2, 4))
    w = model.tensor("w").values
    out = evaluate(model, {"x": x})
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], np.maximum(x @ w, 0), rtol=1e-6)
    both = evaluate(model, {"x": x}, outputs=["h", "y", "w", "x"])
    assert list(both) == ["h", "y", "w", "x"]
    np.testing.assert_allclose(both["h"], x @ w, rtol=1e-6)
    np.testing.assert_array_equal(both["w"], w)  # constants come from their stored values
    np.testing.assert_array_equal(both["x"], x)  # inputs as fed


def test_sessions_follow_graph_changes(model):
    clone = model.copy()
    x = {"x": rand((2, 4))}
    before = evaluate(clone, x)["y"]
    clone.tensor("w").values = -clone.tensor("w").values
    clone.invalidate()
    after = evaluate(clone, x)["y"]
    assert not np.allclose(before, after)


@pytest.mark.parametrize("feeds, message", [
    ({"z": np.zeros((2, 4), np.float32)}, "missing \\['x'\\], unexpected \\['z'\\]"),
    ({"x": np.zeros((2, 4), np.int64)}, "dtype int64"),
    ({"x": np.zeros((2, 4, 1), np.float32)}, "rank 2"),
    ({"x": np.zeros((3, 4), np.float32)}, "size 3 on axis 0"),
])
def test_bad_feeds_raise_calibration_error(model, feeds, message):
    with pytest.raises(CalibrationError, match=message):
        evaluate(model, feeds)


def test_float64_feeds_are_converted(model):
    x = rand((2, 4)).astype(np.float64)
    np.testing.assert_allclose(evaluate(model, {"x": x})["y"], evaluate(model, {"x": x.astype(np.float32)})["y"])


def test_unknown_tensor_name(model):
    with pytest.raises(PressoError, match="unknown tensor"):
        evaluate(model, {"x": rand((2, 4))}, outputs=["nope"])

"""drop-saturated-activations: a Relu/Clip that the following Q clamps anyway goes; others stay."""

from __future__ import annotations

import numpy as np
from _graphs import init, make_proto, ops, rand, run_pipeline, vi
from onnx import helper


def _graph(activation: str, zero_point: int, hi: float = 6.0):
    extra = ["lo", "hi"] if activation == "Clip" else []
    nodes = [helper.make_node(activation, ["x", *extra], ["a"], name="act"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    inits = [init("s", np.float32(0.02)), init("z", np.uint8(zero_point)), init("lo", np.float32(0)),
             init("hi", np.float32(hi))]
    return make_proto(nodes, [vi("x", [64])], [vi("y", [64])], inits)


def test_relu_and_clip_before_a_saturating_q_go():
    x = {"x": rand((64,)) * 4}
    for act in ("Relu", "Clip"):
        model, stats = run_pipeline(_graph(act, 0), "drop-saturated-activations", x, atol=0, rtol=0)
        assert stats["dropped"] == 1 and ops(model) == ["QuantizeLinear", "DequantizeLinear"]


def test_activations_the_q_does_not_cover_stay():
    x = {"x": rand((64,)) * 4}
    model, stats = run_pipeline(_graph("Relu", 10), "drop-saturated-activations", x)  # Q holds negatives
    assert stats["dropped"] == 0 and ops(model)[0] == "Relu"
    model, stats = run_pipeline(_graph("Clip", 0, hi=2.0), "drop-saturated-activations", x)  # Q reaches 5.1 > 2
    assert stats["dropped"] == 0 and ops(model)[0] == "Clip"

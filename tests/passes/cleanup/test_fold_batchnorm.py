"""fold-batchnorm into Conv, grouped Conv, ConvTranspose, Gemm, MatMul; Mul/Add fallback; eps_check."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, ops, rand, run_pipeline, vi
from onnx import helper

from presso.ir import load
from presso.passes import PassManager


def _bn_inits(c, seed=10, var=None):
    rng = np.random.default_rng(seed)
    return [init("g", rng.uniform(0.5, 2, c).astype(np.float32)), init("be", rng.standard_normal(c).astype(np.float32)),
            init("mu", rng.standard_normal(c).astype(np.float32)),
            init("var", (rng.uniform(0.1, 2, c) if var is None else var).astype(np.float32))]


def _bn(x="h", y="y", eps=1e-3):
    return helper.make_node("BatchNormalization", [x, "g", "be", "mu", "var"], [y], name="bn", epsilon=eps)


CASES = {
    "conv": ([helper.make_node("Conv", ["x", "w", "b"], ["h"], name="p", pads=[1, 1, 1, 1])],
             [1, 4, 6, 6], [1, 6, 6, 6], 6, [("w", (6, 4, 3, 3)), ("b", (6,))]),
    "conv_grouped": ([helper.make_node("Conv", ["x", "w"], ["h"], name="p", group=2)],
                     [1, 4, 6, 6], [1, 6, 4, 4], 6, [("w", (6, 2, 3, 3))]),
    "depthwise": ([helper.make_node("Conv", ["x", "w", "b"], ["h"], name="p", group=4)],
                  [1, 4, 6, 6], [1, 4, 4, 4], 4, [("w", (4, 1, 3, 3)), ("b", (4,))]),
    "conv_transpose": ([helper.make_node("ConvTranspose", ["x", "w", "b"], ["h"], name="p", strides=[2, 2])],
                       [1, 4, 3, 3], [1, 6, 7, 7], 6, [("w", (4, 6, 3, 3)), ("b", (6,))]),
    "conv_transpose_grouped": ([helper.make_node("ConvTranspose", ["x", "w"], ["h"], name="p", group=2)],
                               [1, 4, 3, 3], [1, 6, 5, 5], 6, [("w", (4, 3, 3, 3))]),
    "gemm": ([helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="p")],
             [3, 8], [3, 5], 5, [("w", (8, 5)), ("b", (5,))]),
    "gemm_transB": ([helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="p", transB=1)],
                    [3, 8], [3, 5], 5, [("w", (5, 8)), ("b", (1, 5))]),
    "matmul": ([helper.make_node("MatMul", ["x", "w"], ["h"], name="p")],
               [3, 8], [3, 5], 5, [("w", (8, 5))]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_folds_into_producer(case):
    nodes, x_shape, y_shape, c, weights = CASES[case]
    proto = make_proto([*nodes, _bn()], [vi("x", x_shape)], [vi("y", y_shape)],
                       [init(n, rand(s, seed=i)) for i, (n, s) in enumerate(weights)] + _bn_inits(c))
    model, stats = run_pipeline(proto, "fold-batchnorm", {"x": rand(x_shape, seed=99)}, rtol=1e-5)
    assert "BatchNormalization" not in ops(model)
    assert stats["folded"] == 1 and stats["to_mul_add"] == 0
    assert ops(model) == ([nodes[0].op_type, "Add"] if case == "matmul" else [nodes[0].op_type])
    assert model.output_names() == ["y"]


def test_standalone_bn_becomes_mul_add():
    # the producer (Relu) has no weights to fold into
    proto = make_proto([helper.make_node("Relu", ["x"], ["h"], name="r"), _bn()],
                       [vi("x", [2, 3, 4, 4])], [vi("y", [2, 3, 4, 4])], _bn_inits(3))
    model, stats = run_pipeline(proto, "fold-batchnorm", {"x": rand((2, 3, 4, 4))})
    assert ops(model) == ["Relu", "Mul", "Add"] and stats["to_mul_add"] == 1
    model2 = load(proto)
    PassManager.parse("fold-batchnorm{standalone=false}").run(model2)
    assert "BatchNormalization" in ops(model2)


def test_shared_producer_output_is_not_folded_into():
    # the conv output also feeds a second consumer: folding would change that consumer
    proto = make_proto([helper.make_node("Conv", ["x", "w"], ["h"], name="p"), _bn(),
                        helper.make_node("Relu", ["h"], ["z"], name="r")],
                       [vi("x", [1, 2, 4, 4])], [vi("y", [1, 3, 4, 4]), vi("z", [1, 3, 4, 4])],
                       [init("w", rand((3, 2, 1, 1)))] + _bn_inits(3))
    model, stats = run_pipeline(proto, "fold-batchnorm", {"x": rand((1, 2, 4, 4))})
    assert stats["folded"] == 0 and stats["to_mul_add"] == 1


def test_gemm_with_alpha_or_per_row_bias_is_not_folded_into():
    for attrs, bias in (({"alpha": 2.0}, (5,)), ({}, (3, 5))):
        proto = make_proto([helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="p", **attrs), _bn()],
                           [vi("x", [3, 8])], [vi("y", [3, 5])],
                           [init("w", rand((8, 5))), init("b", rand(bias, seed=3))] + _bn_inits(5))
        model, stats = run_pipeline(proto, "fold-batchnorm", {"x": rand((3, 8), seed=5)})
        assert stats["folded"] == 0 and stats["to_mul_add"] == 1


def test_eps_check_leaves_a_bn_with_nonpositive_variance():
    var = np.array([1.0, -1.0, 0.5], np.float32)  # σ² + ε < 0 on channel 1
    proto = make_proto([helper.make_node("Conv", ["x", "w"], ["h"], name="p"), _bn(eps=1e-5)],
                       [vi("x", [1, 2, 3, 3])], [vi("y", [1, 3, 3, 3])], [init("w", rand((3, 2, 1, 1)))] + _bn_inits(3, var=var))
    model = load(proto)
    report = PassManager.parse("fold-batchnorm{eps_check=true}").run(model)
    assert "BatchNormalization" in ops(model)
    assert report.records[0].result.stats["skipped"] == 1
    assert "variance" in report.records[0].result.log[0]


def test_bn_with_graph_output_keeps_name():
    proto = make_proto([helper.make_node("Conv", ["x", "w"], ["h"], name="p"), _bn(y="out")],
                       [vi("x", [1, 2, 3, 3])], [vi("out", [1, 3, 3, 3])], [init("w", rand((3, 2, 1, 1)))] + _bn_inits(3))
    model, _ = run_pipeline(proto, "fold-batchnorm", {"x": rand((1, 2, 3, 3))})
    assert model.output_names() == ["out"] and ops(model) == ["Conv"]


@pytest.mark.parametrize("op, w_shape, bias_shape", [
    ("ConvTranspose", (4, 6, 2, 2), (1, 6, 1, 1)),  # as Paddle2ONNX writes it (PP-OCR det head)
    ("Conv", (6, 4, 1, 1), (6, 1, 1)),
    ("Gemm", (4, 6), (6,)),
])
def test_add_of_per_channel_bias_between_producer_and_bn_folds_too(op, w_shape, bias_shape):
    rank2 = op == "Gemm"
    x_shape, y_shape = ([2, 4], [2, 6]) if rank2 else ([1, 4, 3, 3], [1, 6, 4, 4] if op == "ConvTranspose" else [1, 6, 3, 3])
    proto = make_proto([helper.make_node(op, ["x", "w"], ["h"], name="p"),
                        helper.make_node("Add", ["bias", "h"], ["hb"], name="add"), _bn(x="hb")],
                       [vi("x", x_shape)], [vi("y", y_shape)],
                       [init("w", rand(w_shape)), init("bias", rand(bias_shape, seed=7))] + _bn_inits(6))
    model, stats = run_pipeline(proto, "fold-batchnorm", {"x": rand(x_shape, seed=3)})
    assert ops(model) == [op] and stats["folded"] == 1


def test_add_that_is_not_per_channel_falls_back_to_mul_add():
    proto = make_proto([helper.make_node("Conv", ["x", "w"], ["h"], name="p"),
                        helper.make_node("Add", ["h", "bias"], ["hb"], name="add"), _bn(x="hb")],
                       [vi("x", [1, 4, 3, 3])], [vi("y", [1, 6, 3, 3])],
                       [init("w", rand((6, 4, 1, 1))), init("bias", rand((1, 1, 3, 3), seed=7))] + _bn_inits(6))
    model, stats = run_pipeline(proto, "fold-batchnorm", {"x": rand((1, 4, 3, 3), seed=3)})
    assert stats["folded"] == 0 and stats["to_mul_add"] == 1

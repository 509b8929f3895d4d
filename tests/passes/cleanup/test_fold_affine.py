"""fold-affine: Mul/Add by a per-channel constant folds into the Conv, ConvTranspose or Gemm
before it, and nothing else folds."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, ops, rand, run_pipeline, vi
from onnx import helper

from presso.ir import evaluate, fix_input_shapes, load
from presso.passes import PassManager
from presso.tools import zoo

_CONV = helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", pads=[1, 1, 1, 1])
_CONV_WEIGHTS = [init("w", rand((6, 4, 3, 3), seed=1)), init("b", rand((6,), seed=2))]


def _affine(op, const, x="h", y="y", name=None):
    return helper.make_node(op, [const, x] if op == "Mul" else [x, const], [y], name=name or op.lower())


def test_conv_then_scalar_mul_then_channel_add_fold_completely():
    # PP-LCNetV3's learnable affine block: Conv → Mul(scalar) → Add(scalar); here the Add is per channel
    proto = make_proto([_CONV, _affine("Mul", "s", y="m"), _affine("Add", "a", x="m")],
                       [vi("x", [1, 4, 6, 6])], [vi("y", [1, 6, 6, 6])],
                       [*_CONV_WEIGHTS, init("s", np.array([1.7], np.float32)),
                        init("a", rand((1, 6, 1, 1), seed=3))])
    model, stats = run_pipeline(proto, "fold-affine", {"x": rand([1, 4, 6, 6], seed=9)})
    assert ops(model) == ["Conv"] and (stats["muls"], stats["adds"]) == (1, 1)


@pytest.mark.parametrize("case", ["conv_transpose", "gemm_transB"])
def test_other_linear_producers(case):
    if case == "conv_transpose":
        producer = helper.make_node("ConvTranspose", ["x", "w"], ["h"], name="p", group=2, strides=[2, 2])
        weights, x_shape, y_shape, const = [init("w", rand((4, 3, 3, 3), seed=1))], [1, 4, 3, 3], [1, 6, 7, 7], (6, 1, 1)
    else:
        producer = helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="p", transB=1)
        weights, x_shape, y_shape, const = [init("w", rand((5, 8), seed=1)), init("b", rand((5,), seed=2))], [3, 8], [3, 5], (5,)
    proto = make_proto([producer, _affine("Mul", "s")], [vi("x", x_shape)], [vi("y", y_shape)],
                       [*weights, init("s", rand(const, seed=4))])
    model, stats = run_pipeline(proto, "fold-affine", {"x": rand(x_shape, seed=9)})
    assert ops(model) == [producer.op_type] and stats["muls"] == 1


CANNOT_FOLD = {
    # the constant varies along a spatial axis, not per channel
    "spatial_constant": ([_CONV, _affine("Mul", "s")], [init("s", rand((1, 1, 6, 6), seed=4))], ["y"]),
    # the constant broadcasts the result to a larger shape
    "broadcasting": ([_CONV, _affine("Add", "s")], [init("s", rand((2, 6, 1, 1), seed=4))], ["y"]),
    # the conv output is also read elsewhere: its unscaled value must survive
    "shared_output": ([_CONV, _affine("Mul", "s"), helper.make_node("Relu", ["h"], ["r"], name="relu")],
                      [init("s", rand((1,), seed=4))], ["y", "r"]),
    # a MatMul has no bias input: an Add after it is already the folded form
    "matmul_add": ([helper.make_node("MatMul", ["x", "w2"], ["h"], name="mm"), _affine("Add", "s")],
                   [init("w2", rand((6, 6), seed=5)), init("s", rand((6,), seed=4))], ["y"]),
}


@pytest.mark.parametrize("case", sorted(CANNOT_FOLD))
def test_leaves_what_it_cannot_fold(case):
    nodes, consts, outputs = CANNOT_FOLD[case]
    matmul = case == "matmul_add"
    x_shape = [6, 6] if matmul else [1, 4, 6, 6]
    shapes = {"y": [6, 6] if matmul else ([2, 6, 6, 6] if case == "broadcasting" else [1, 6, 6, 6]), "r": [1, 6, 6, 6]}
    proto = make_proto(nodes, [vi("x", x_shape)], [vi(o, shapes[o]) for o in outputs],
                       ([] if matmul else _CONV_WEIGHTS) + consts)
    model, stats = run_pipeline(proto, "fold-affine", {"x": rand(x_shape, seed=9)})
    assert ops(model) == [n.op_type for n in nodes] and stats == {"muls": 0, "adds": 0}


def test_ppocr_det_learnable_affine_blocks_fold_on_real_images():
    images = zoo.ppocr_det_inputs(2, size=320)
    original = load(zoo.ppocr_det_model())
    fix_input_shapes(original, {"x": [1, 3, 320, 320]})
    model = original.copy()
    report = PassManager.parse("constants-to-initializers,fold-batchnorm,fold-affine,eliminate-dead-code").run(model)
    stats = report.records[2].result.stats
    assert stats["muls"] >= 20 and stats["adds"] >= 20, stats
    for i in range(2):
        want = next(iter(evaluate(original, {"x": images[i:i + 1]}).values()))
        got = next(iter(evaluate(model, {"x": images[i:i + 1]}).values()))
        np.testing.assert_allclose(got, want, atol=2e-4)

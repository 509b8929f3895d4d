"""The differentiable executor against onnxruntime: tiny graphs per op, gradients, real models."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

from presso.ir import evaluate, fix_input_shapes, load  # noqa: E402
from presso.ir.errors import UnsupportedOpError  # noqa: E402
from presso.passes import PassManager  # noqa: E402
from presso.passes.train.executor import GraphExecutor, default_trainable, run_numpy  # noqa: E402
from presso.tools import zoo  # noqa: E402

from _train_models import make_model, small_cnn  # noqa: E402

F = TensorProto.FLOAT
I64 = TensorProto.INT64
rng = np.random.default_rng(0)


def _f(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _vi(name, dtype=F, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def assert_matches_ort(model, feeds, atol=1e-5, rtol=1e-4):
    ref = evaluate(model, feeds)
    got = run_numpy(model, feeds)
    for name, value in ref.items():
        assert got[name].shape == value.shape, name
        scale = max(1.0, float(np.abs(value).max()) if value.size else 1.0)
        np.testing.assert_allclose(got[name].astype(np.float64), value.astype(np.float64),
                                   atol=atol + rtol * scale, err_msg=name)


# One node (with its attributes and constant inputs) per case; input "x" of the given shape.
CASES = {
    "conv_same_upper_group": ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", group=2,
                                                strides=[2, 1])], (2, 4, 7, 6), {"w": _f(6, 2, 3, 2)}),
    "conv_asym_pads_dil": ([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 2, 1], dilations=[2, 1])],
                           (1, 3, 9, 8), {"w": _f(4, 3, 3, 3), "b": _f(4)}),
    "conv1d": ([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])], (2, 3, 10), {"w": _f(5, 3, 3)}),
    "convT_pads_outpad": ([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1],
                                            output_padding=[1, 1])], (1, 4, 5, 5), {"w": _f(4, 3, 3, 3), "b": _f(3)}),
    "convT_group_same": ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=2,
                                           auto_pad="SAME_UPPER")], (1, 4, 4, 5), {"w": _f(4, 2, 3, 3)}),
    "convT_output_shape": ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3, 2],
                                             output_shape=[10, 8])], (1, 2, 3, 4), {"w": _f(2, 3, 3, 3)}),
    "gemm_trans_alpha": ([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transA=1, alpha=0.5, beta=2.0)],
                         (5, 3), {"w": _f(5, 4), "b": _f(4)}),
    "matmul_batched": ([helper.make_node("MatMul", ["x", "w"], ["y"])], (2, 3, 4), {"w": _f(4, 6)}),
    "batchnorm": ([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
                  (2, 3, 4, 4), {"g": _f(3), "b": _f(3), "m": _f(3), "v": np.abs(_f(3)) + 0.5}),
    "layernorm": ([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-2)], (2, 3, 4, 5),
                  {"g": _f(4, 5), "b": _f(4, 5)}),
    "instancenorm": ([helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"])], (2, 3, 4, 4),
                     {"g": _f(3), "b": _f(3)}),
    "lrn": ([helper.make_node("LRN", ["x"], ["y"], size=3, alpha=1e-2, beta=0.75, bias=2.0)], (1, 6, 4, 4), {}),
    "hardsigmoid": ([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)], (3, 7), {}),
    "hardswish": ([helper.make_node("HardSwish", ["x"], ["y"])], (3, 7), {}),
    "clip": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], (3, 7),
             {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
    "leakyrelu_tanh": ([helper.make_node("LeakyRelu", ["x"], ["t"], alpha=0.2),
                        helper.make_node("Tanh", ["t"], ["y"])], (3, 7), {}),
    "prelu_sigmoid": ([helper.make_node("PRelu", ["x", "s"], ["t"]), helper.make_node("Sigmoid", ["t"], ["y"])],
                      (2, 3, 4), {"s": _f(3, 1)}),
    "maxpool_ceil_pads": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                            pads=[1, 0, 1, 1], ceil_mode=1)], (1, 2, 8, 9), {}),
    "avgpool_exclude_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2],
                                              pads=[1, 0, 0, 1])], (1, 2, 7, 6), {}),
    "avgpool_same_lower": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], auto_pad="SAME_LOWER",
                                             count_include_pad=1, strides=[2, 2])], (1, 2, 6, 7), {}),
    "global_pools": ([helper.make_node("GlobalAveragePool", ["x"], ["a"]), helper.make_node("GlobalMaxPool", ["x"], ["b"]),
                      helper.make_node("Add", ["a", "b"], ["y"])], (2, 3, 5, 4), {}),
    "resize_nearest_asym_floor": ([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                                                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                                  (1, 2, 3, 4), {"s": np.array([1, 1, 2, 2], np.float32)}),
    "resize_linear_half_pixel": ([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear")], (1, 2, 4, 5),
                                 {"s": np.array([1, 1, 1.5, 2.5], np.float32)}),
    "resize_linear_align_sizes": ([helper.make_node("Resize", ["x", "", "", "z"], ["y"], mode="linear",
                                                    coordinate_transformation_mode="align_corners")], (1, 2, 4, 5),
                                  {"z": np.array([1, 2, 7, 3], np.int64)}),
    "concat_split": ([helper.make_node("Split", ["x", "sp"], ["a", "b"], axis=1),
                      helper.make_node("Concat", ["b", "a"], ["y"], axis=1)], (2, 5, 3), {"sp": np.array([2, 3], np.int64)}),
    "slice_negative_step": ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], (4, 6, 5),
                            {"st": np.array([-1, 1], np.int64), "en": np.array([-100, 5], np.int64),
                             "ax": np.array([1, 2], np.int64), "sp": np.array([-2, 2], np.int64)}),
    "reshape_transpose_flatten": ([helper.make_node("Reshape", ["x", "s"], ["r"]),
                                   helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
                                   helper.make_node("Flatten", ["t"], ["y"], axis=1)], (2, 3, 4),
                                  {"s": np.array([0, 4, -1], np.int64)}),
    "squeeze_unsqueeze": ([helper.make_node("Unsqueeze", ["x", "a"], ["u"]), helper.make_node("Squeeze", ["u", "b"], ["y"])],
                          (2, 1, 3), {"a": np.array([0, -1], np.int64), "b": np.array([0, 2], np.int64)}),
    "softmax_logsoftmax": ([helper.make_node("Softmax", ["x"], ["s"], axis=1),
                            helper.make_node("LogSoftmax", ["x"], ["l"], axis=-1),
                            helper.make_node("Add", ["s", "l"], ["y"])], (2, 3, 4), {}),
    "elementwise": ([helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Sub", ["m", "x"], ["s"]),
                     helper.make_node("Div", ["s", "c"], ["d"]), helper.make_node("Max", ["d", "x", "c"], ["mx"]),
                     helper.make_node("Abs", ["mx"], ["a"]), helper.make_node("Sqrt", ["a"], ["q"]),
                     helper.make_node("Pow", ["q", "p"], ["pw"]), helper.make_node("Exp", ["pw"], ["e"]),
                     helper.make_node("Sum", ["e", "x", "c"], ["y"])],
                    (2, 3), {"c": np.array([0.5, -2.0, 1.5], np.float32), "p": np.array(1.5, np.float32)}),
    "gather_neg_indices": ([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], (2, 5, 3),
                           {"i": np.array([[0, -1], [2, 3]], np.int64)}),
    "reductions": ([helper.make_node("ReduceMean", ["x", "ax"], ["a"], keepdims=1),
                    helper.make_node("ReduceSum", ["x", "ax"], ["b"], keepdims=1),
                    helper.make_node("ReduceMax", ["x", "ax"], ["c"], keepdims=1),
                    helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "c"], ["y"])],
                   (2, 3, 4), {"ax": np.array([1, -1], np.int64)}),
    "expand_shape_cast": ([helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Cast", ["sh"], ["shf"], to=F),
                           helper.make_node("ReduceSum", ["shf"], ["n"], keepdims=0),
                           helper.make_node("Expand", ["x", "e"], ["ex"]), helper.make_node("Mul", ["ex", "n"], ["y"])],
                          (3, 1), {"e": np.array([2, 3, 4], np.int64)}),
    "where_equal_pad": ([helper.make_node("Greater", ["x", "z"], ["g"]), helper.make_node("Where", ["g", "x", "z"], ["w"]),
                         helper.make_node("Pad", ["w", "pd"], ["y"], mode="reflect")], (2, 3, 4),
                        {"z": np.array(0.0, np.float32), "pd": np.array([0, 0, 1, 0, 0, 2], np.int64)}),
    "qdq_per_channel": ([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1),
                         helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)], (2, 3, 4),
                        {"s": np.array([0.02, 0.1, 0.5], np.float32), "zp": np.array([0, 3, -2], np.int8)}),
    "qdq_uint8": ([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                   helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])], (5, 7),
                  {"s": np.array(0.01, np.float32), "zp": np.array(128, np.uint8)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    nodes, shape, inits = CASES[case]
    model = make_model(nodes, [_vi("x", F, list(shape))], [_vi("y")], inits, opset=19)
    assert_matches_ort(model, {"x": _f(*shape) * 2})


def test_old_opset_attribute_forms():
    # opset 11: Squeeze/Unsqueeze axes and Split sizes are attributes; Softmax coerces to 2-D.
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]), helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             helper.make_node("Split", ["s"], ["a", "b"], axis=2, split=[1, 3]),
             helper.make_node("Concat", ["b", "a"], ["c"], axis=2), helper.make_node("Softmax", ["c"], ["y"], axis=1)]
    model = make_model(nodes, [_vi("x", F, [2, 3, 4])], [_vi("y")], opset=11)
    assert_matches_ort(model, {"x": _f(2, 3, 4)})


def test_unsupported_op_names_the_node():
    model = make_model([helper.make_node("Relu", ["x"], ["r"], name="ok"),
                        helper.make_node("NonMaxSuppression", ["r", "s"], ["y"], name="nms_node")],
                       [_vi("x", F, [1, 4, 4]), _vi("s", F, [1, 1, 4])], [_vi("y", I64)])
    with pytest.raises(UnsupportedOpError, match="nms_node"):
        GraphExecutor(model)


def _gradcheck(executor, names, x_shape, output: str) -> bool:
    """torch.autograd.gradcheck of ``output`` w.r.t. input ``x`` and the parameters ``names``."""
    keys = [f"params.{executor._keys[n]}" for n in names]

    def fn(x, *values):
        return torch.func.functional_call(executor, dict(zip(keys, values)), ({"x": x},))[output]

    x = torch.randn(*x_shape, dtype=torch.float64, requires_grad=True)
    values = [executor.trainable()[n].detach().clone().requires_grad_(True) for n in names]
    return torch.autograd.gradcheck(fn, (x, *values), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_match_finite_differences_in_float64():
    """torch.autograd.gradcheck through Conv, BN, Relu, pooling, Gemm and Softmax."""
    model = small_cnn(channels=2, classes=3, size=4)
    executor = GraphExecutor(model, float_dtype=torch.float64)
    assert {"w1", "w2", "fc", "gamma", "beta", "b1", "fcb"} <= set(executor.trainable())
    assert "mean" not in executor.trainable() and "var" not in executor.trainable()  # statistics stay
    assert _gradcheck(executor, ["w1", "gamma", "w2", "fc"], (2, 1, 4, 4), "probs")


def test_gradients_through_activation_zoo_in_float64():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"]), helper.make_node("HardSigmoid", ["h"], ["hs"]),
             helper.make_node("Mul", ["h", "hs"], ["m"]), helper.make_node("LeakyRelu", ["m"], ["l"]),
             helper.make_node("Resize", ["l", "", "sc"], ["r"], mode="linear"),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("LayerNormalization", ["p", "g", "b"], ["y"], axis=1)]
    model = make_model(nodes, [_vi("x", F, [1, 2, 3, 3])], [_vi("y")],
                       {"w": _f(3, 2, 3, 3), "sc": np.array([1, 1, 2, 2], np.float32), "g": _f(3, 3, 3),
                        "b": _f(3, 3, 3)})
    executor = GraphExecutor(model, float_dtype=torch.float64)
    assert _gradcheck(executor, sorted(executor.trainable()), (1, 2, 3, 3), "y")


def test_fake_quant_gradients_are_straight_through_and_lsq():
    model = make_model([helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["q"], name="q"),
                        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["wq"]),
                        helper.make_node("MatMul", ["x", "wq"], ["y"])],
                       [_vi("x", F, [1, 3])], [_vi("y")],
                       {"w": np.array([[0.26], [-0.04], [2.0]], np.float32), "s": np.array(0.1, np.float32),
                        "zp": np.array(0, np.int8)})
    executor = GraphExecutor(model, learn_scales=True)
    x = torch.ones(1, 3)
    executor({"x": x})["y"].sum().backward()
    w, s = executor.trainable()["w"], executor.trainable()["s"]
    assert torch.allclose(w.grad, torch.ones(3, 1))  # STE: the gradient passes through round()
    # LSQ: d(wq)/ds = round(w/s) - w/s inside the range, times the gradient scale 1/sqrt(N·qmax)
    expected = ((3 - 2.6) + (0 + 0.4) + (20 - 20)) * (1 / np.sqrt(3 * 127))
    assert s.grad.item() == pytest.approx(expected, rel=1e-4)
    assert executor({"x": x})["y"].item() == pytest.approx(0.3 + 0.0 + 2.0, abs=1e-6)


def test_write_back_updates_initializers_and_outputs():
    model = small_cnn()
    executor = GraphExecutor(model)
    with torch.no_grad():
        executor.trainable()["fc"].mul_(2.0)
    x = _f(3, 1, 8, 8)
    expected = executor({"x": torch.from_numpy(x)}, ["logits"])["logits"].detach().numpy()
    written = executor.write_back()
    model.invalidate()
    assert "fc" in written
    np.testing.assert_allclose(evaluate(model, {"x": x}, ["logits"])["logits"], expected, atol=1e-5)


def test_default_trainable_skips_quant_params_and_scalars():
    model = make_model([helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Add", ["m", "v"], ["a"]),
                        helper.make_node("Clip", ["a", "lo", "hi"], ["y"])],
                       [_vi("x", F, [2, 3])], [_vi("y")],
                       {"k": np.array(0.5, np.float32), "v": _f(3), "lo": np.array(0, np.float32),
                        "hi": np.array(6, np.float32)})
    assert default_trainable(model) == {"v"}


# ---- real models ---------------------------------------------------------------------------
def _prepared(path, shapes=None):
    model = load(path)
    if shapes:
        fix_input_shapes(model, shapes)
    PassManager.parse("constants-to-initializers,fold-constants").run(model)
    return model


def test_magika_matches_onnxruntime():
    features, _ = zoo.magika_dataset(6)
    model = _prepared(zoo.magika_model())
    assert_matches_ort(model, {"bytes": features})


def test_ppocr_cls_matches_onnxruntime():
    images, _ = zoo.ppocr_cls_inputs(3)
    model = _prepared(zoo.ppocr_cls_model(), {"x": [3, 3, 48, 192]})
    assert_matches_ort(model, {"x": images})


def test_ppocr_det_matches_onnxruntime():
    images = zoo.ppocr_det_inputs(1, size=96)
    model = _prepared(zoo.ppocr_det_model(), {"x": [1, 3, 96, 96]})
    assert_matches_ort(model, {"x": images}, atol=1e-4)


@pytest.mark.parametrize("name", ["squeezenet", pytest.param("shufflenet", marks=pytest.mark.slow)])
def test_light_models_with_random_weights_match_onnxruntime(name):
    # The light models ship constant weights (outputs would be uniform); random weights make
    # the comparison meaningful. Intermediate logits are compared too, before the softmax.
    model = _prepared(zoo.light_model(name))
    local = np.random.default_rng(1)
    for tensor in model.initializers().values():
        values = np.asarray(tensor.values)
        if values.dtype == np.float32 and values.ndim > 1:
            fan_in = int(np.prod(values.shape[1:]))
            tensor.values = (local.standard_normal(values.shape) / np.sqrt(fan_in)).astype(np.float32)
        elif values.dtype == np.float32 and values.ndim == 1:  # biases, BN parameters (variance > 0)
            tensor.values = local.uniform(0.5, 1.5, values.shape).astype(np.float32)
    model.invalidate()
    x = local.standard_normal([1, 3, 224, 224]).astype(np.float32)
    name_in = model.input_names()[0]
    softmax = model.nodes("Softmax")[-1]
    logits = softmax.inputs[0].name
    ref = evaluate(model, {name_in: x}, [logits])[logits]
    got = run_numpy(model, {name_in: x}, [logits])[logits]
    assert np.abs(ref).max() > 1e-3  # a non-degenerate comparison
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))

"""Scale/zero-point math against the ONNX definition and onnxruntime's QuantizeLinear."""

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from presso.passes.quant.qmath import compute_qparams, dequantize, quantize

_ONNX_TYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
               "uint16": TensorProto.UINT16, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}


def _ort_quantize(x, scale, zero, dtype):
    """onnxruntime's integers; 4-bit ones come back through a DequantizeLinear (numpy cannot
    receive int4 from onnxruntime), as (q − zero) · scale."""
    zt = helper.make_tensor("z", _ONNX_TYPES[dtype], [], [int(zero)])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])]
    out_type = _ONNX_TYPES[dtype]
    if "4" in dtype:
        nodes.append(helper.make_node("DequantizeLinear", ["y", "s", "z"], ["d"]))
        out_type = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "q",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], out_type, [x.size])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [float(scale)]), zt])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int4", "uint4"])
def test_quantize_matches_onnxruntime_including_ties_and_saturation(dtype):
    scale = np.float32(0.25)  # a power of two: x / scale is exact, so .5 ties really occur
    zero = {"int8": 3, "uint8": 128, "int16": -5, "uint16": 30000, "int4": 1, "uint4": 8}[dtype]
    halves = np.arange(-40, 40, dtype=np.float32) * 0.5 * scale  # k + 0.5 steps: round half to even
    rng = np.random.default_rng(0)
    big = np.array([1e9, -1e9, 70000.0, -70000.0], dtype=np.float32)  # saturates every type
    x = np.concatenate([halves, rng.standard_normal(2000).astype(np.float32) * 40, big])
    ours = quantize(x, scale, np.array(zero, dtype=np.int64), dtype)
    theirs = np.asarray(_ort_quantize(x, scale, zero, dtype))
    if "4" in dtype:
        theirs = np.rint(theirs / scale).astype(np.int64) + zero
    np.testing.assert_array_equal(ours.astype(np.int64), theirs.astype(np.int64))
    # 2.5 → 2 and 3.5 → 4 (half to even) before the zero point
    assert int(quantize(np.float32([0.625]), scale, np.array(0), "int8")[0]) == 2
    assert int(quantize(np.float32([0.875]), scale, np.array(0), "int8")[0]) == 4


def test_four_bit_storage_uses_ml_dtypes():
    q = quantize(np.float32([-9, 0, 7.2]), np.float32(1.0), np.array(0), "int4")
    assert q.dtype == np.dtype(ml_dtypes.int4)
    assert q.astype(np.int64).tolist() == [-8, 0, 7]


@pytest.mark.parametrize("dtype,symmetric", [("int8", True), ("uint8", False), ("int8", False), ("uint16", False)])
def test_qparams_cover_the_range_and_keep_zero_exact(dtype, symmetric):
    scale, zero = compute_qparams(-1.5, 3.0, dtype, symmetric)
    x = np.float32([-1.5, 0.0, 3.0])
    back = dequantize(quantize(x, scale, zero, dtype), scale, zero)
    assert back[1] == 0.0
    assert np.max(np.abs(back - x)) <= float(scale)


def test_zero_range_never_gives_a_zero_scale():
    for dtype in ["int8", "uint8", "int4"]:
        for symmetric in (True, False):
            scale, _ = compute_qparams(0.0, 0.0, dtype, symmetric)
            assert float(scale) > 0


def test_per_channel_parameters_broadcast_along_the_axis():
    w = np.stack([np.linspace(-1, 1, 9), np.linspace(-10, 10, 9)]).astype(np.float32)
    lo, hi = w.min(axis=1), w.max(axis=1)
    scale, zero = compute_qparams(lo, hi, "int8", True)
    q = quantize(w, scale, zero, "int8", axis=0)
    assert q[:, -1].tolist() == [127, 127]
    np.testing.assert_allclose(dequantize(q, scale, zero, axis=0), w, atol=float(scale.max()) / 2 + 1e-6)

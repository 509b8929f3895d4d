"""quantize-weights (MatMulNBits) and quantize-dynamic (DynamicQuantizeLinear + MatMulInteger)."""

import numpy as np
import pytest

from quant_graphs import matmul_net
from presso.ir import evaluate
from presso.passes import PassManager
from presso.passes.verify import compare_outputs


@pytest.mark.parametrize("bits,block,symmetric,bound", [(4, 32, True, 0.16), (4, 64, False, 0.16), (4, 128, True, 0.16),
                                                       (8, 32, True, 0.33)])
def test_quantize_weights_lowers_to_matmulnbits(matmul_data, bits, block, symmetric, bound):
    model = matmul_net(k=256, n=128)
    data = {"x": np.random.default_rng(0).standard_normal((4, 16, 256)).astype(np.float32)}
    reference = model.copy()
    pipeline = f"quantize-weights{{bits={bits},block={block},symmetric={str(symmetric).lower()}}}"
    stats = PassManager.parse(pipeline).run(model).records[0].result.stats
    assert stats["matmuls"] == 2 and not model.nodes("MatMul")
    assert [n.domain for n in model.nodes("MatMulNBits")] == ["com.microsoft"] * 2
    assert stats["weight_bytes_ratio"] <= bound
    err = compare_outputs([evaluate(reference, data)], [evaluate(model, data)])
    assert err.cosine > (0.99 if bits == 4 else 0.9999), err
    # the bytes really stored: packed blocks + scales (+ zero points) per weight
    stored = sum(np.asarray(t.values).nbytes for n in model.nodes("MatMulNBits") for t in n.inputs[1:])
    assert stored <= bound * (256 * 128 + 128 * 8) * 4


def test_quantize_dynamic(matmul_model, matmul_data):
    reference = matmul_model.copy()
    stats = PassManager.parse("quantize-dynamic").run(matmul_model).records[0].result.stats
    assert stats["quantized"] == 2
    assert len(matmul_model.nodes("DynamicQuantizeLinear")) == 2 and len(matmul_model.nodes("MatMulInteger")) == 2
    err = compare_outputs([evaluate(reference, matmul_data)], [evaluate(matmul_model, matmul_data)])
    assert err.cosine > 0.999 and err.sqnr_db > 25, err


def test_quantize_dynamic_gemm_with_transposed_weight_and_bias():
    from onnx import TensorProto, helper

    from presso.ir import load
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 10)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0, name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()), helper.make_tensor("b", TensorProto.FLOAT, [6], b)])
    model = load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    data = {"x": rng.standard_normal((32, 10)).astype(np.float32)}
    expected = 0.5 * data["x"] @ w.T + 2.0 * b
    PassManager.parse("quantize-dynamic{per_channel=false}").run(model)
    np.testing.assert_allclose(evaluate(model, data)["y"], expected, atol=0.1)

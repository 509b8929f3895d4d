"""quantize-weights (MatMulNBits) and quantize-dynamic (DynamicQuantizeLinear + MatMulInteger)."""

import numpy as np
import pytest

from _graphs import init, make_proto, rand, reference, vi
from onnx import helper
from quant_graphs import matmul_net
from presso.ir import evaluate, load
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


def test_quantize_weights_replaces_gemm_and_embedding_gather():
    # ids → Gather(table) → Gemm(transB, alpha, beta, bias): both become 4-bit onnxruntime kernels
    table = rand((50, 64), seed=1)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Gemm", ["e", "w", "b"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0)]
    proto = make_proto(nodes, [vi("ids", [4], np.int64)], [vi("y", [4, 16])],
                       [init("table", table), init("w", rand((16, 64), seed=2)), init("b", rand((16,), seed=3))])
    feeds = {"ids": np.array([0, 7, 49, 3], np.int64)}
    expected = reference(proto, feeds)["y"]
    model = load(proto)
    stats = PassManager.parse("quantize-weights{bits=4,block=32}").run(model).records[0].result.stats
    assert (stats["matmuls"], stats["gathers"]) == (1, 1)
    assert {"GatherBlockQuantized", "MatMulNBits", "Add"} <= {n.op for n in model.graph.nodes}
    assert not model.nodes("Gemm") and not model.nodes("Gather")
    got = evaluate(model, feeds)["y"]
    # two 4-bit roundings (table and weight) in blocks of 32: SQNR well above 15 dB
    sqnr = 10 * np.log10(np.sum(expected**2) / np.sum((got - expected) ** 2))
    assert sqnr > 15, sqnr
    # the gathered rows are the table rounded the way onnxruntime's own quantizer rounds it
    blocks = table.reshape(50, 2, 32)
    high, low = blocks.max(-1, keepdims=True), blocks.min(-1, keepdims=True)
    scale = np.where(np.abs(high) > np.abs(low), high, low) / -8.0
    dequantized = (np.clip(np.round(blocks / scale), -8, 7) * scale).reshape(50, 64)
    gathered = model.nodes("GatherBlockQuantized")[0].outputs[0].name
    rows = evaluate(model, feeds, [gathered])[gathered]
    np.testing.assert_allclose(rows, dequantized[feeds["ids"]], rtol=1e-6, atol=1e-7)

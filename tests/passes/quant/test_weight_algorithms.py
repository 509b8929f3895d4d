"""quantize-weights{algorithm=gptq|awq}: the MatMulNBits layout in numpy, GPTQ's error
compensation and AWQ's scaling on tiny graphs, each checked against onnxruntime."""

import numpy as np
import pytest
from onnx import helper

from _graphs import init, make_proto, reference, vi
from presso.ir import PassError, evaluate, load
from presso.passes import PassManager
from presso.passes.quant import awq, gptq, nbits


def correlated_inputs(count: int, k: int, *, seed: int, outliers=()) -> np.ndarray:
    """Rows of a low-rank signal plus noise (what makes GPTQ's Hessian informative), with a few
    channels much larger than the rest (AWQ's salient channels)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((8, k))  # fixed: calibration and test alike
    x = rng.standard_normal((count, 8)) @ mix + 0.3 * rng.standard_normal((count, k))
    for channel in outliers:
        x[:, channel] *= 20.0
    return x.astype(np.float32)


def matmul_chain(k: int = 64, n: int = 48, m: int = 32):
    """x[B, k] → MatMul(W1) → Relu → MatMul(W2) → y; returns (proto, W1, W2)."""
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    w2 = (rng.standard_normal((n, m)) / np.sqrt(n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return make_proto(nodes, [vi("x", ["B", k])], [vi("y", ["B", m])], [init("w1", w1), init("w2", w2)]), w1, w2


def quantize(proto, pipeline: str, data=None):
    model = load(proto)
    stats = PassManager.parse(pipeline).run(model, data=data).records[0].result.stats
    return model, stats


def relative_error(expected: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


# ---- the block layout ---------------------------------------------------------------------
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_pack_writes_the_bytes_of_onnxruntimes_quantizer(bits, symmetric):
    w = np.random.default_rng(0).standard_normal((80, 24)).astype(np.float32)  # K not a multiple of the block
    kernel = nbits.quantize_blocks(w, bits, 32, symmetric)
    scales, zeros = nbits.block_params(w, bits, 32, symmetric)
    group = np.arange(80) // 32
    q = nbits.round_to_grid(w, scales.T[group], zeros.T[group], bits)
    ours = nbits.pack(q, scales, zeros, bits, 32, symmetric)
    np.testing.assert_array_equal(ours.packed, kernel.packed)
    np.testing.assert_array_equal(ours.scales, kernel.scales)
    if not symmetric:
        np.testing.assert_array_equal(ours.zeros, kernel.zeros)
    # and dequantize is what MatMulNBits computes with
    x = np.random.default_rng(1).standard_normal((5, 80)).astype(np.float32)
    proto = make_proto([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", ["B", 80])], [vi("y", ["B", 24])],
                       [init("w", w)])
    model, _ = quantize(proto, f"quantize-weights{{bits={bits},block=32,symmetric={str(symmetric).lower()}}}")
    np.testing.assert_allclose(evaluate(model, {"x": x})["y"], x @ nbits.dequantize(ours, 80, bits, symmetric),
                               rtol=1e-4, atol=1e-4)


# ---- GPTQ ---------------------------------------------------------------------------------
def test_gptq_round_compensates_error_on_correlated_inputs():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((128, 40)) / 10).astype(np.float32)
    x = correlated_inputs(2000, 128, seed=4).astype(np.float64)
    h = 2 * x.T @ x / len(x)
    blocks, dequantized = gptq.gptq_blocks(w, h, bits=4, block=32, symmetric=True)
    rtn = nbits.dequantize(nbits.quantize_blocks(w, 4, 32, True), 128, 4, True)
    test = correlated_inputs(500, 128, seed=5)
    gptq_error, rtn_error = relative_error(test @ w, test @ dequantized), relative_error(test @ w, test @ rtn)
    assert gptq_error < 0.8 * rtn_error, (gptq_error, rtn_error)
    np.testing.assert_allclose(nbits.dequantize(blocks, 128, 4, True), dequantized, rtol=0, atol=1e-6)
    # the grid is round-to-nearest's: same scales, every value on it
    np.testing.assert_array_equal(blocks.scales, nbits.quantize_blocks(w, 4, 32, True).scales)


@pytest.mark.parametrize("options", ["algorithm=gptq,act_order=false", "algorithm=gptq", "algorithm=awq+gptq"])
def test_gptq_pass_beats_round_to_nearest_and_runs_in_onnxruntime(options):
    proto, _, _ = matmul_chain()
    calib = {"x": correlated_inputs(256, 64, seed=1)}
    test = {"x": correlated_inputs(200, 64, seed=2)}
    expected = reference(proto, test)["y"]
    gptq_model, stats = quantize(proto, f"quantize-weights{{{options}}}", calib)
    rtn_model, _ = quantize(proto, "quantize-weights")
    ops = {n.op for n in gptq_model.graph.nodes}
    assert stats["matmuls"] == 2 and {"MatMulNBits", "Relu"} <= ops <= {"MatMulNBits", "Relu", "Mul"}
    gptq_error = relative_error(expected, evaluate(gptq_model, test)["y"])
    rtn_error = relative_error(expected, evaluate(rtn_model, test)["y"])
    assert gptq_error < 0.85 * rtn_error, (gptq_error, rtn_error)


def test_gptq_without_data_names_the_data_option():
    proto, _, _ = matmul_chain()
    with pytest.raises(PassError, match="--data"):
        quantize(proto, "quantize-weights{algorithm=gptq}")


def test_gptq_skips_padding_rows_of_a_masked_input():
    # the Hessian of x counts only rows whose mask is 1: padding rows full of garbage change nothing
    from presso.passes.quant import layer_inputs

    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.int64)
    proto = make_proto([helper.make_node("Identity", ["x"], ["y"], name="id"),
                        helper.make_node("Identity", ["mask"], ["m"], name="idm")],
                       [vi("x", ["B", "S", 8]), vi("mask", ["B", "S"], np.int64)], [vi("y", ["B", "S", 8]),
                                                                                    vi("m", ["B", "S"], np.int64)])
    stats = layer_inputs.collect(load(proto), ["y"], [{"x": x, "mask": mask}])["y"]
    valid = x[mask.astype(bool)]
    assert stats.rows == 7
    np.testing.assert_allclose(stats.gram, valid.T.astype(np.float64) @ valid, rtol=1e-6)


# ---- AWQ ----------------------------------------------------------------------------------
def layernorm_net(k: int = 64, n: int = 48, *, residual: bool):
    """x → LayerNormalization → MatMul(W) [→ Add(LN output): a second reader of the LN output]."""
    rng = np.random.default_rng(7)
    gamma = rng.uniform(0.5, 1.5, k).astype(np.float32)
    gamma[[3, 17, 40]] = 12.0  # salient channels, as transformers' LayerNorms make them
    beta = (0.1 * rng.standard_normal(k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w"], ["mm"], name="mm")]
    if residual:
        nodes.append(helper.make_node("Add", ["mm", "ln"], ["y"], name="res"))
        assert n == k
    else:
        nodes.append(helper.make_node("Identity", ["mm"], ["y"], name="out"))
    inits = [init("gamma", gamma), init("beta", beta), init("w", w)]
    return make_proto(nodes, [vi("x", ["B", "S", k])], [vi("y", ["B", "S", n])], inits)


@pytest.mark.parametrize("residual,how", [(False, "LayerNormalization"), (True, "mul")])
def test_awq_folds_into_layernorm_only_when_exact(residual, how):
    k = 64
    proto = layernorm_net(k, k if residual else 48, residual=residual)
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((32, 8, k)).astype(np.float32)}
    test = {"x": rng.standard_normal((32, 8, k)).astype(np.float32)}
    expected = reference(proto, test)["y"]
    # the scaling alone keeps the float model's outputs
    model = load(proto)
    mm = model.node("mm")
    s = np.random.default_rng(1).uniform(0.5, 2.0, k).astype(np.float32)
    assert awq.apply_scale(model, mm.inputs[0], [mm], s) == how
    np.testing.assert_allclose(evaluate(model, test)["y"], expected, rtol=1e-4, atol=1e-4)
    assert bool(model.nodes("Mul")) == (how == "mul")
    # the pass: searched scales, lower error than round-to-nearest
    awq_model, stats = quantize(proto, "quantize-weights{algorithm=awq}", calib)
    rtn_model, _ = quantize(proto, "quantize-weights")
    assert stats["awq_mean_alpha"] > 0
    awq_error = relative_error(expected, evaluate(awq_model, test)["y"])
    rtn_error = relative_error(expected, evaluate(rtn_model, test)["y"])
    assert awq_error < 0.9 * rtn_error, (awq_error, rtn_error)


def test_awq_folds_into_a_preceding_matmul_and_its_bias():
    proto, w1, _ = matmul_chain()
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
             helper.make_node("MatMul", ["hb", "w2"], ["y"], name="mm2")]
    proto.graph.ClearField("node")
    proto.graph.node.extend(nodes)
    proto.graph.initializer.append(init("b", np.linspace(-1, 1, 48).astype(np.float32)))
    test = {"x": correlated_inputs(16, 64, seed=3)}
    model = load(proto)
    mm2 = model.node("mm2")
    s = np.random.default_rng(2).uniform(0.5, 2.0, 48).astype(np.float32)
    assert awq.apply_scale(model, mm2.inputs[0], [mm2], s) == "matmul"
    assert not model.nodes("Mul")
    np.testing.assert_allclose(evaluate(model, test)["y"], reference(proto, test)["y"], rtol=1e-4, atol=1e-4)


def test_awq_search_never_loses_to_round_to_nearest_on_its_data():
    rng = np.random.default_rng(4)
    x = correlated_inputs(512, 64, seed=6, outliers=(5, 33))
    weights = [(rng.standard_normal((64, 32)) / 8).astype(np.float32) for _ in range(2)]
    s, alpha, ratio = awq.search_scale(weights, x, np.abs(x).mean(0), bits=4, block=32, symmetric=True)
    assert ratio <= 1.0 and 0.0 <= alpha <= 1.0 and s.shape == (64,)
    assert alpha > 0 and ratio < 0.9  # outlier channels: scaling them up pays

"""`prune-channels` on exported-style graphs: a dynamic batch (kept dynamic), computed Reshape
targets, the prepare step, the warning when nothing is removed, and norms=true (LayerNorm and
its written-out form)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from presso.ir import evaluate, load
from presso.ir.analysis.batch import shape_example, shape_hint
from presso.passes import PassManager
from presso.passes.prune import channel_groups

C, K, N = 16, 6, 5  # hidden channels, input features, outputs


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 0.5, (K, C)).astype(np.float32),
        "b1": rng.normal(0, 0.1, C).astype(np.float32),
        "g": rng.uniform(0.5, 1.5, C).astype(np.float32),
        "beta": rng.normal(0, 0.1, C).astype(np.float32),
        "w2": rng.normal(0, 0.5, (C, N)).astype(np.float32),
    }


def _model(nodes, weights, *, batch="batch", extra_inits=()):
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()] + list(extra_inits)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, N])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return load(onnx.shape_inference.infer_shapes(proto))


def layernorm_model(seed: int = 0, *, written_out: bool = False, batch="batch"):
    """x[B,4,K] → MatMul(w1)+b1 → LayerNorm over C (γ, β) → Relu → MatMul(w2) → y[B,4,N]."""
    weights = _weights(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h"])]
    extra = []
    if written_out:  # as jax2tf writes it: sums scaled by a shared constant 1/C, E[x²] − E[x]²
        extra = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
                 numpy_helper.from_array(np.array(1 / C, np.float32), "inv_c"),
                 numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
        nodes += [
            helper.make_node("ReduceSum", ["h", "axes"], ["s1"]),
            helper.make_node("Mul", ["s1", "inv_c"], ["mean"]),
            helper.make_node("Mul", ["h", "h"], ["sq"]),
            helper.make_node("ReduceSum", ["sq", "axes"], ["s2"]),
            helper.make_node("Mul", ["s2", "inv_c"], ["ex2"]),
            helper.make_node("Mul", ["mean", "mean"], ["mean2"]),
            helper.make_node("Sub", ["ex2", "mean2"], ["var"]),
            helper.make_node("Add", ["var", "eps"], ["var_eps"]),
            helper.make_node("Sqrt", ["var_eps"], ["std"]),
            helper.make_node("Reciprocal", ["std"], ["rstd"]),
            helper.make_node("Mul", ["rstd", "g"], ["scale"]),  # a computed per-channel scale
            helper.make_node("Sub", ["h", "mean"], ["centered"]),
            helper.make_node("Mul", ["centered", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "beta"], ["n"]),
            # the same 1/C constant read by a statistic of the other axis: it must keep its value
            helper.make_node("ReduceSum", ["x", "axes"], ["xs"]),
            helper.make_node("Mul", ["xs", "inv_c"], ["xs_scaled"]),
            helper.make_node("Add", ["n", "xs_scaled"], ["n2"]),
        ]
        last = "n2"
    else:
        nodes.append(helper.make_node("LayerNormalization", ["h", "g", "beta"], ["n"], axis=-1, epsilon=1e-5))
        last = "n"
    nodes += [helper.make_node("Relu", [last], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return _model(nodes, weights, batch=batch, extra_inits=extra), weights


def layernorm_reference(x, w, keep, *, written_out: bool):
    """The pruned network in numpy: LayerNorm over the kept channels only."""
    h = x @ w["w1"][:, keep] + w["b1"][keep]
    mean = h.mean(-1, keepdims=True)
    var = (h * h).mean(-1, keepdims=True) - mean**2
    n = (h - mean) / np.sqrt(var + 1e-5) * w["g"][keep] + w["beta"][keep]
    if written_out:
        n = n + x.sum(-1, keepdims=True) / C
    return np.maximum(n, 0) @ w["w2"][keep]


def _feeds(batch: int, seed: int = 1):
    return {"x": np.random.default_rng(seed).normal(size=(batch, 4, K)).astype(np.float32)}


def _prune(model, text):
    return PassManager.parse(text).run(model).records[-1].result


@pytest.mark.parametrize("written_out", [False, True])
def test_norms_true_prunes_through_a_layernorm_and_normalizes_the_kept_channels(written_out):
    model, weights = layernorm_model(written_out=written_out)
    result = _prune(model, "prune-channels{ratio=0.5,round_to=1,min_channels=1,norms=true}")
    assert result.stats["removed"] == C // 2
    onnx.checker.check_model(model.to_proto(), full_check=True)
    (record,) = [r for r in model.annotations.pruning if r.channels_before == C]
    keep = np.setdiff1d(np.arange(C), record.removed)
    feeds = _feeds(3)
    got = evaluate(model, feeds)["y"]
    np.testing.assert_allclose(got, layernorm_reference(feeds["x"], weights, keep, written_out=written_out),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("written_out", [False, True])
def test_norms_false_excludes_the_normalized_group_and_says_how_to_prune_it(written_out, caplog):
    groups = channel_groups(layernorm_model(written_out=written_out, batch=2)[0])
    hidden = next(g for g in groups.groups if g.channels == C)
    assert hidden.excluded and "norms=true" in hidden.reason
    model, _ = layernorm_model(written_out=written_out)
    with caplog.at_level(logging.WARNING, logger="presso"):
        result = _prune(model, "prune-channels{ratio=0.5,norms=false}")
    assert result.stats["removed"] == 0
    assert "removed nothing" in caplog.text and "norms=true" in caplog.text


def test_a_dynamic_batch_is_picked_for_pruning_and_stays_dynamic_in_the_output():
    model, _ = layernorm_model()
    reference = evaluate(model, _feeds(1))["y"]
    _prune(model, "prune-channels{ratio=0.5,round_to=1,min_channels=1,norms=false,criterion=random}")
    assert model.graph.inputs[0].shape[0] == "batch"
    assert model.graph.outputs[0].shape[0] == "batch"
    proto = model.to_proto()
    onnx.checker.check_model(proto, full_check=True)
    # the group feeds a LayerNorm, so norms=false prunes nothing there: the model is unchanged
    np.testing.assert_allclose(evaluate(model, _feeds(1))["y"], reference, rtol=1e-5, atol=1e-6)
    several = evaluate(model, _feeds(3))["y"]
    one_by_one = np.concatenate([evaluate(model, {"x": _feeds(3)["x"][i:i + 1]})["y"] for i in range(3)])
    np.testing.assert_allclose(several, one_by_one, rtol=1e-5, atol=1e-6)


def computed_reshape_model(seed: int = 0):
    """A Reshape whose target is ``Concat(Shape(x)[:1], [4·C])`` (a dynamic batch, as
    exporters write it) between two MatMuls, after an Expand (jax's BroadcastTo) to
    ``Cast(Concat(Shape(x)[:1], [4], [C]))``."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (K, C)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4 * C, N)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", w1), ("w2", w2),
        ("zero", np.array([0], np.int64)), ("one", np.array([1], np.int64)),
        ("flat", np.array([4 * C], np.int64)), ("c4", np.array([4], np.int64)), ("cc", np.array([C], np.int64))]]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "c4", "cc"], ["expand_to"], axis=0),
        helper.make_node("Cast", ["expand_to"], ["expand_to_i64"], to=TensorProto.INT64),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Expand", ["h", "expand_to_i64"], ["hs"]),
        helper.make_node("Relu", ["hs"], ["r"]),
        helper.make_node("Concat", ["batch", "flat"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return load(onnx.shape_inference.infer_shapes(proto))


def test_a_computed_reshape_target_is_rewritten_and_the_batch_stays_dynamic():
    model = computed_reshape_model()
    assert not channel_groups(model).prunable_groups  # with a symbolic batch the shapes are unknown
    before = evaluate(model, _feeds(2))["y"]
    result = _prune(model, "prune-channels{ratio=0.5,round_to=1,min_channels=1,prepare=false}")
    assert result.stats["removed"] == C // 2
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert model.graph.inputs[0].shape[0] == "batch"
    for batch in (1, 3):
        y = evaluate(model, _feeds(batch))["y"]
        assert y.shape == (batch, N)
    assert not np.allclose(evaluate(model, _feeds(2))["y"], before)  # lossy, but it ran


def test_prepare_folds_what_pins_channels_and_prepare_false_warns_with_the_reason(caplog):
    def model_with_constant_node_target():
        model = computed_reshape_model()
        # a computed target that folding turns into a constant (no batch involved)
        proto = model.to_proto()
        for node in proto.graph.node:
            if node.op_type == "Reshape":
                node.input[1] = "folded_target"
        proto.graph.node.insert(0, helper.make_node("Add", ["fixed", "zero"], ["folded_target"]))
        proto.graph.initializer.append(numpy_helper.from_array(np.array([-1, 4 * C], np.int64), "fixed"))
        return load(proto)

    model = model_with_constant_node_target()
    with caplog.at_level(logging.WARNING, logger="presso"):
        result = _prune(model, "prune-channels{ratio=0.5,round_to=1,min_channels=1,prepare=false}")
    assert result.stats["removed"] == 0
    assert "removed nothing" in caplog.text and "computed target shape" in caplog.text
    model = model_with_constant_node_target()
    result = _prune(model, "prune-channels{ratio=0.5,round_to=1,min_channels=1}")
    assert result.stats["removed"] == C // 2 and result.stats["prepared_fold-constants"] == 1
    assert evaluate(model, _feeds(3))["y"].shape == (3, N)


@pytest.mark.parametrize(("shape", "example"), [
    (["unk__214", 2048], "1,2048"),
    (["batch", 3, "h", "w"], "1,3,224,224"),
    ([None, "seq"], "1,128"),
    ([4, 3, 32, 32], "4,3,32,32"),
])
def test_shape_hints_fit_the_input(shape, example):
    assert ",".join(map(str, shape_example(shape))) == example
    assert shape_hint("bytes", shape) == f"--shape bytes={example}"

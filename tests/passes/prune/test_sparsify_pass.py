"""The `sparsify` pass: N:M and unstructured magnitude pruning, annotations, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from prune_graphs import GraphBuilder, feeds_for

from presso.ir import PipelineError, evaluate, load, save
from presso.passes import PassManager, parse_pipeline


def layers_model(seed: int = 0):
    b = GraphBuilder(shape=(1, 8, 8, 8), seed=seed)
    h = b.relu(b.conv("x", 8, 16))
    h = b.relu(b.conv(h, 16, 24, k=1))
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)
    out = b.gemm(pooled, 24, 16)
    w = b.const(np.random.default_rng(seed).normal(size=(16, 8)).astype(np.float32), "mm")
    return b.build(b.op("MatMul", [out, w]))


def run(model, text: str):
    return PassManager.parse(text, verify=True).run(model).records[-1].result


def weights(model):
    """(node, weight values, input axis) of every layer."""
    axes = {"Conv": 1, "Gemm": 1, "MatMul": 0}  # the Gemm here has transB=1
    return [(n, np.asarray(n.inputs[1].values), axes[n.op]) for n in model.nodes("Conv", "Gemm", "MatMul")]


@pytest.mark.parametrize("pattern, n, m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_leaves_exactly_n_nonzeros_in_every_block_along_the_input_axis(pattern, n, m):
    model = layers_model()
    result = run(model, f"sparsify{{pattern={pattern}}}")
    onnx.checker.check_model(model.to_proto())
    evaluate(model, feeds_for(model))
    checked = 0
    for node, w, axis in weights(model):
        if w.shape[axis] % m:
            continue  # the first conv has 8 input channels: fine for both
        blocks = np.moveaxis(w, axis, -1).reshape(-1, m)
        assert np.all(np.count_nonzero(blocks, axis=1) == n), node.name
        spec = model.annotations.sparsity[node.inputs[1].name]
        assert (spec.pattern, spec.axis) == (pattern, axis) and spec.ratio == pytest.approx(1 - n / m)
        checked += 1
    assert checked == 4 and result.stats["sparsity"] == pytest.approx(1 - n / m)


def test_nm_keeps_the_largest_magnitudes():
    model = layers_model()
    original = {n.name: w.copy() for n, w, _ in weights(model)}
    run(model, "sparsify{pattern=2:4}")
    for node, w, axis in weights(model):
        before = np.moveaxis(original[node.name], axis, -1).reshape(-1, 4)
        after = np.moveaxis(w, axis, -1).reshape(-1, 4)
        kept_min = np.where(after != 0, np.abs(before), np.inf).min(axis=1)
        dropped_max = np.where(after == 0, np.abs(before), -np.inf).max(axis=1)
        assert np.all(kept_min >= dropped_max)


def test_layers_whose_input_axis_does_not_divide_are_left_dense():
    b = GraphBuilder(shape=(1, 3, 8, 8))
    model = b.build(b.conv(b.relu(b.conv("x", 3, 8)), 8, 4))
    result = run(model, "sparsify{pattern=2:4}")
    assert list(result.stats["layers"]) == ["conv2"]
    assert any("conv1" in line and "multiple of 4" in line for line in result.log)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured_sparsity(scope):
    model = layers_model()
    run(model, f"sparsify{{pattern=unstructured,sparsity=0.75,scope={scope}}}")
    counts = [(np.count_nonzero(w == 0), w.size) for _, w, _ in weights(model)]
    zeros, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if scope == "layer":
        assert all(z == int(0.75 * size) for z, size in counts)
    else:
        assert zeros == int(0.75 * total)
        assert len({round(z / s, 2) for z, s in counts}) > 1  # one threshold: layers differ


def test_keep_leaves_matching_layers_dense():
    model = layers_model()
    result = run(model, "sparsify{pattern=2:4,keep=^gemm}")
    assert "gemm1" not in result.stats["layers"]
    gemm = model.node("gemm1")
    assert np.count_nonzero(gemm.inputs[1].values == 0) == 0


def test_annotation_survives_save_and_load(tmp_path):
    model = layers_model()
    run(model, "sparsify{pattern=2:4}")
    save(model, tmp_path / "sparse.onnx")
    loaded = load(tmp_path / "sparse.onnx")
    assert loaded.annotations.sparsity == model.annotations.sparsity and loaded.annotations.sparsity


def test_pruning_after_sparsify_updates_or_drops_the_annotation():
    model = layers_model()
    run(model, "sparsify{pattern=2:4}")
    PassManager.parse("prune-channels{ratio=0.5,scope=layer,round_to=4,min_channels=4}").run(model)
    names = {t for t in model.initializers()}
    assert model.annotations.sparsity and set(model.annotations.sparsity) <= names
    for name, spec in model.annotations.sparsity.items():
        w = np.asarray(model.initializers()[name].values)
        blocks = np.moveaxis(w, spec.axis, -1).reshape(-1, 4)
        assert np.all(np.count_nonzero(blocks, axis=1) <= 2)


def test_bad_options():
    with pytest.raises(PipelineError, match="sparsity"):
        parse_pipeline("sparsify{sparsity=1.5}")
    with pytest.raises(PipelineError, match="pattern"):
        parse_pipeline("sparsify{pattern=3:4}")
    with pytest.raises(PipelineError, match="regex"):
        parse_pipeline("sparsify{keep=*x}")


def test_weights_written_as_constant_nodes_are_sparsified_too():
    # Paddle exports (PP-OCR) write every weight as a Constant node, not an initializer
    proto = layers_model().to_proto()
    graph = proto.graph
    for tensor in list(graph.initializer):
        graph.node.insert(0, onnx.helper.make_node("Constant", [], [tensor.name], value=tensor))
    del graph.initializer[:]
    model = load(proto)
    assert model.nodes("Constant")
    result = run(model, "sparsify{pattern=2:4}")
    assert result.stats["sparsity"] == 0.5 and not model.nodes("Constant")
    assert all(np.count_nonzero(w == 0) == w.size // 2 for _, w, _ in weights(model))

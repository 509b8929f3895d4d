"""The `channel-groups` analysis on tiny graphs, and exact removal of all-zero channels."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from prune_graphs import GraphBuilder, assert_exact_removal

from presso.passes.prune import channel_groups


def group_of(analysis, source: str):
    return next(g for g in analysis.groups if source in g.sources)


def test_residual_add_ties_producers():
    b = GraphBuilder()
    a = b.relu(b.bn(b.conv("x", 8, 16), 16))
    c = b.conv(a, 16, 16)
    s = b.op("Add", [a, c])
    out = b.conv(s, 16, 4)
    model = b.build(out)
    analysis = channel_groups(model)
    g = group_of(analysis, "conv1")
    assert "conv2" in g.sources  # the residual branch's conv
    assert g.channels == 16 and len(g.prunable) == 16
    last = group_of(analysis, "conv3")
    assert last.excluded and "graph output" in last.reason
    assert_exact_removal(model)


def test_concat_keeps_offsets():
    b = GraphBuilder()
    x1 = b.conv("x", 8, 6)
    x2 = b.conv("x", 8, 10)
    cat = b.op("Concat", [x1, x2], axis=1)
    out = b.conv(b.relu(cat), 16, 4)
    model = b.build(out)
    analysis = channel_groups(model)
    ids = analysis.maps[cat].ids
    g1, g2 = group_of(analysis, "conv1"), group_of(analysis, "conv2")
    assert g1 is not g2 and (g1.channels, g2.channels) == (6, 10)
    assert np.array_equal(analysis.root(ids[:6]), g1.units) and np.array_equal(analysis.root(ids[6:]), g2.units)
    assert_exact_removal(model)


def test_flatten_into_gemm_moves_channel_blocks():
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 4))
    flat = b.op("Flatten", [x], axis=1)
    out = b.gemm(flat, 4 * 64, 5)
    model = b.build(out)
    analysis = channel_groups(model)
    conv = group_of(analysis, "conv1")
    (gemm_in,) = [p for p in analysis.params if p.node.op == "Gemm" and p.role == "in"]
    assert len(gemm_in.ids) == 256
    assert np.array_equal(analysis.root(gemm_in.ids), np.repeat(conv.units, 64))
    assert_exact_removal(model)


def test_depthwise_conv_moves_input_and_output_together():
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 16))
    dw = b.relu(b.conv(x, 16, 16, group=16))
    out = b.conv(dw, 16, 4)
    model = b.build(out)
    analysis = channel_groups(model)
    assert not any(g.sources == ["conv2"] for g in analysis.groups)  # no new channels of its own
    assert np.array_equal(analysis.root(analysis.maps[dw].ids), group_of(analysis, "conv1").units)
    removed = assert_exact_removal(model)
    dw_node = next(n for n in model.nodes("Conv") if n.name == "conv2")
    assert dw_node.attrs["group"] == 16 - len(removed & set(group_of(analysis, "conv1").units))


def test_grouped_conv_keeps_per_group_counts_equal():
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 12))
    g = b.relu(b.conv(x, 12, 12, group=3))
    out = b.conv(g, 12, 4)
    model = b.build(out)
    analysis = channel_groups(model)
    assert group_of(analysis, "conv1").channels == 4  # local channel j leaves all 3 groups at once
    assert group_of(analysis, "conv2").channels == 4
    assert_exact_removal(model)
    node = model.node("conv2")
    w = node.inputs[1].values
    assert node.attrs["group"] == 3 and w.shape[0] % 3 == 0


def test_channel_shuffle():
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 12, group=1))
    r1 = b.op("Reshape", [x, b.const(np.array([1, 3, 4, 8, 8], np.int64))])
    t = b.op("Transpose", [r1], perm=[0, 2, 1, 3, 4])
    r2 = b.op("Reshape", [t, b.const(np.array([1, 12, 8, 8], np.int64))])
    out = b.conv(r2, 12, 4)
    model = b.build(out)
    analysis = channel_groups(model)
    assert group_of(analysis, "conv1").channels == 4  # a unit is one index of the 4-wide axis
    assert_exact_removal(model)


def test_squeeze_excitation_ties_scale_to_features():
    b = GraphBuilder()
    a = b.relu(b.conv("x", 8, 16))
    pooled = b.op("GlobalAveragePool", [a])
    squeeze = b.relu(b.conv(pooled, 16, 4, k=1))
    excite = b.op("HardSigmoid", [b.conv(squeeze, 4, 16, k=1)])
    scaled = b.op("Mul", [a, excite])
    out = b.conv(scaled, 16, 4)
    model = b.build(out)
    analysis = channel_groups(model)
    features = group_of(analysis, "conv1")
    assert any(s.startswith("conv") for s in features.sources if s != "conv1")  # the excite conv
    assert group_of(analysis, "conv2").channels == 4  # the squeeze bottleneck is its own group
    assert_exact_removal(model)


def test_split_slice_pad_resize():
    b = GraphBuilder(opset=18)
    x = b.relu(b.conv("x", 8, 16))
    s1, s2 = b.op("Split", [x, b.const(np.array([6, 10], np.int64))], outputs=2, axis=1)
    y1 = b.conv(s1, 6, 4)
    sl = b.op("Slice", [s2, b.const(np.array([2], np.int64)), b.const(np.array([9], np.int64)),
                        b.const(np.array([1], np.int64))])
    y2 = b.conv(sl, 7, 4)
    padded = b.op("Pad", [x, b.const(np.array([0, 1, 0, 0, 0, 2, 0, 0], np.int64))])
    y3 = b.conv(padded, 19, 4)
    up = b.op("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y4 = b.op("MaxPool", [b.conv(up, 16, 4)], kernel_shape=[2, 2], strides=[2, 2])
    out = b.op("Sum", [y1, y2, y3, y4])
    model = b.build(out)
    analysis = channel_groups(model)
    assert group_of(analysis, "conv1").channels == 16
    assert list(analysis.maps[padded].ids[:1]) == [-1]  # padded channels can never be removed
    assert_exact_removal(model, seed=2)


def test_reshape_merging_rows_into_features():
    """magika's Dense → Reshape [1, 16, 6] → [1, 4, 24] → Dense: each feature repeats 4 times."""
    b = GraphBuilder(shape=(1, 16, 8))
    h = b.op("MatMul", ["x", b.const(np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32))])
    h = b.op("Tanh", [b.op("Add", [h, b.const(np.ones((1, 1, 6), np.float32))])])
    r = b.op("Reshape", [h, b.const(np.array([1, 4, 24], np.int64))])
    out = b.op("MatMul", [r, b.const(np.random.default_rng(1).normal(size=(24, 5)).astype(np.float32))])
    model = b.build(out)
    analysis = channel_groups(model)
    first = group_of(analysis, "matmul1")
    assert np.array_equal(analysis.root(analysis.maps[r].ids), np.tile(first.units, 4))
    assert_exact_removal(model)


@pytest.mark.parametrize("op, attrs, reason", [
    ("LRN", {"size": 3}, "normalizes across neighbouring channels"),
    ("Softmax", {"axis": 1}, "normalizes across them"),
    ("DepthToSpace", {"blocksize": 2}, "no rule"),
    ("ReduceMean", {"axes": [1]}, "reduces across them"),
])
def test_cross_channel_ops_exclude_the_group_with_a_reason(op, attrs, reason):
    b = GraphBuilder(opset=13)
    x = b.relu(b.conv("x", 8, 16))
    y = b.op(op, [x], **attrs)
    model = b.build(y)
    analysis = channel_groups(model)
    g = group_of(analysis, "conv1")
    assert g.excluded and reason in g.reason
    assert reason.split()[0] in analysis.table()


def test_graph_input_channels_are_fixed():
    b = GraphBuilder()
    x = b.conv("x", 8, 8)
    s = b.op("Add", [x, "x"])  # residual with the graph input: those channels cannot go
    model = b.build(b.conv(s, 8, 4))
    g = group_of(channel_groups(model), "conv1")
    assert g.excluded and "cannot be pruned" in g.reason


def test_unknown_shapes_pin_instead_of_guessing():
    b = GraphBuilder(shape=("n", 8, 8, 8))
    x = b.relu(b.conv("x", 8, 16))
    flat = b.op("Flatten", [x], axis=1)
    model = b.build(b.gemm(flat, 16 * 64, 3))
    model.graph.inputs[0].shape = [None, 8, 8, 8]
    model.invalidate()
    g = group_of(channel_groups(model), "conv1")
    assert g.excluded and "shape" in g.reason


def test_analysis_is_cached_until_the_graph_changes():
    b = GraphBuilder()
    model = b.build(b.conv(b.relu(b.conv("x", 8, 16)), 16, 4))
    first = channel_groups(model)
    assert channel_groups(model) is first
    model.invalidate()
    assert channel_groups(model) is not first


def test_conv_transpose_and_instance_norm():
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 16))
    w = b.const(np.random.default_rng(0).normal(size=(16, 6, 2, 2)).astype(np.float32))
    up = b.op("ConvTranspose", [x, w, b.const(np.zeros(6, np.float32))], strides=[2, 2])
    norm = b.op("InstanceNormalization", [up, b.const(np.ones(6, np.float32)), b.const(np.zeros(6, np.float32))])
    model = b.build(b.conv(b.relu(norm), 6, 2))
    analysis = channel_groups(model)
    assert group_of(analysis, "convtranspose1").channels == 6
    assert_exact_removal(model, ratio=0.5)


def test_matmul_of_two_computed_tensors_ties_their_shared_axis():
    b = GraphBuilder(shape=(1, 4, 8))
    rng = np.random.default_rng(0)
    q = b.op("MatMul", ["x", b.const(rng.normal(size=(8, 6)).astype(np.float32))])
    k = b.op("MatMul", ["x", b.const(rng.normal(size=(8, 6)).astype(np.float32))])
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])
    model = b.build(b.op("Softmax", [scores], axis=-1))
    analysis = channel_groups(model)
    assert group_of(analysis, "matmul1") is group_of(analysis, "matmul2")  # q·kᵀ sums over both
    assert_exact_removal(model)


def test_tensors_read_inside_subgraphs_are_pinned():
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 16))
    branch = helper.make_graph([helper.make_node("Identity", [x], ["branch_out"])], "branch", [],
                               [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)])
    cond = b.const(np.array(True))
    b.nodes.append(helper.make_node("If", [cond], ["if_out"], name="if1", then_branch=branch, else_branch=branch))
    model = b.build(b.conv("if_out", 16, 4))
    g = group_of(channel_groups(model), "conv1")
    assert g.excluded and "subgraph of If node 'if1'" in g.reason

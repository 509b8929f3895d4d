"""Property tests: random graphs with residuals, concats, grouped/depthwise convs, channel
shuffles, SE blocks and Flatten→Gemm heads. Channel removal never produces an invalid model,
and removing zeroed channels never changes the outputs."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prune_graphs import GraphBuilder, feeds_for

from presso.ir import evaluate
from presso.passes import PassManager
from presso.passes.prune import channel_groups
from presso.passes.prune.importance import unit_scores
from presso.passes.prune.prune_channels import select_units
from presso.passes.prune.rewrite import remove_channels, zero_channels

BLOCKS = ("conv", "residual", "concat", "grouped", "depthwise", "shuffle", "se", "pool", "resize", "split", "pad")


@st.composite
def graphs(draw):
    seed = draw(st.integers(0, 2**16))
    b = GraphBuilder(shape=(1, 4, 8, 8), seed=seed)
    x, c, size = "x", 4, 8
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=6)):
        if kind == "conv":
            out = draw(st.sampled_from([4, 6, 8, 12]))
            x, c = b.relu(b.conv(x, c, out)), out
        elif kind == "residual":
            h = b.relu(b.bn(b.conv(x, c, c), c))
            x = b.relu(b.op("Add", [x, b.conv(h, c, c)]))
        elif kind == "concat":
            a = draw(st.sampled_from([2, 4, 6]))
            x = b.op("Concat", [b.relu(b.conv(x, c, a)), b.relu(b.conv(x, c, 4))], axis=1)
            c = a + 4
        elif kind == "grouped" and c % 2 == 0:
            g = 2
            out = g * draw(st.sampled_from([2, 3, 4]))
            x, c = b.relu(b.conv(x, c, out, group=g)), out
        elif kind == "depthwise":
            x = b.relu(b.bn(b.conv(x, c, c, group=c), c))
        elif kind == "shuffle" and c % 2 == 0:
            r = b.op("Reshape", [x, b.const(np.array([1, 2, c // 2, size, size], np.int64))])
            t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
            x = b.op("Reshape", [t, b.const(np.array([1, c, size, size], np.int64))])
        elif kind == "se":
            s = b.relu(b.conv(b.op("GlobalAveragePool", [x]), c, 2, k=1))
            x = b.op("Mul", [x, b.op("Sigmoid", [b.conv(s, 2, c, k=1)])])
        elif kind == "pool" and size >= 4:
            x, size = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), size // 2
        elif kind == "split" and c >= 2:
            first = draw(st.integers(1, c - 1))
            sizes = b.const(np.array([first, c - first], np.int64))
            a, z = b.op("Split", [x, sizes], outputs=2, axis=1)
            x = b.op("Concat", [b.relu(b.conv(a, first, 4)), b.op("Sigmoid", [z])], axis=1)
            c = 4 + c - first
        elif kind == "pad":
            before, after = draw(st.integers(0, 2)), draw(st.integers(0, 2))
            pads = b.const(np.array([0, before, 1, 1, 0, after, 1, 1], np.int64))
            x = b.op("AveragePool", [b.op("Pad", [x, pads])], kernel_shape=[3, 3])
            c += before + after
        elif kind == "resize" and size <= 8:
            scales = b.const(np.array([1, 1, 2, 2], np.float32))
            x, size = b.op("Resize", [x, "", scales], mode="nearest"), size * 2
    if draw(st.booleans()):
        flat = b.op("Flatten", [x], axis=1)
        out = b.gemm(flat, c * size * size, 3)
    else:
        out = b.conv(x, c, 3)
    return b.build(out)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=graphs(), ratio=st.sampled_from([0.25, 0.5, 0.75]),
       criterion=st.sampled_from(["l1", "l2", "bn-gamma", "random"]), scope=st.sampled_from(["global", "layer"]))
def test_channel_removal_never_produces_an_invalid_model(model, ratio, criterion, scope):
    feeds = feeds_for(model)
    shapes = {k: v.shape for k, v in evaluate(model, feeds).items()}
    text = f"prune-channels{{ratio={ratio},criterion={criterion},scope={scope},round_to=1,min_channels=1}}"
    PassManager.parse(text).run(model)
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert {k: v.shape for k, v in evaluate(model, feeds).items()} == shapes


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=graphs(), seed=st.integers(0, 100))
def test_removing_zeroed_channels_keeps_outputs(model, seed):
    analysis = channel_groups(model)
    scores, _ = unit_scores(model, analysis, "random", seed=seed)
    removed = select_units(analysis, scores, ratio=0.5, scope="layer", round_to=1, min_channels=1)
    feeds = feeds_for(model, seed)
    zero_channels(model, analysis, removed)
    model.invalidate()
    reference = evaluate(model, feeds)
    remove_channels(model, analysis, removed)
    onnx.checker.check_model(model.to_proto(), full_check=True)
    for name, value in evaluate(model, feeds).items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-5)

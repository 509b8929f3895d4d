"""Property tests: random graphs with residuals, concats, grouped/depthwise convs, channel
shuffles, SE blocks and Flatten→Gemm heads. Channel removal never produces an invalid model,
and removing zeroed channels never changes the outputs.

Each test runs ``PRESSO_PRUNE_EXAMPLES`` examples (default 15, a few seconds); for a deeper
search run e.g. ``PRESSO_PRUNE_EXAMPLES=500 pytest tests/passes/prune/test_prune_property.py``.
A failing example is reported with a ``build_graph(...)`` call (hypothesis' note) that
rebuilds its graph, ready to paste into a plain regression test like the ones at the end.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from prune_graphs import GraphBuilder, assert_exact_removal, feeds_for

from presso.ir import Model, evaluate
from presso.ir.errors import PassError
from presso.passes import PassManager
from presso.passes.prune import channel_groups
from presso.passes.prune.importance import unit_scores
from presso.passes.prune.prune_channels import select_units
from presso.passes.prune.rewrite import remove_channels

EXAMPLES = int(os.environ.get("PRESSO_PRUNE_EXAMPLES", "15"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BLOCKS = ("conv", "residual", "concat", "grouped", "depthwise", "shuffle", "se", "pool", "resize", "split", "pad")


def build_graph(seed: int, blocks: list[tuple[str, dict]], gemm_head: bool) -> Model:
    """The graph of a recipe: blocks (kind, parameters) on a (1, 4, 8, 8) input, then a
    Flatten→Gemm head or a conv. Blocks that do not fit the current shape are skipped."""
    b = GraphBuilder(shape=(1, 4, 8, 8), seed=seed)
    x, c, size = "x", 4, 8
    for kind, p in blocks:
        if kind == "conv":
            x, c = b.relu(b.conv(x, c, p["out"])), p["out"]
        elif kind == "residual":
            h = b.relu(b.bn(b.conv(x, c, c), c))
            x = b.relu(b.op("Add", [x, b.conv(h, c, c)]))
        elif kind == "concat":
            a = p["a"]
            x = b.op("Concat", [b.relu(b.conv(x, c, a)), b.relu(b.conv(x, c, 4))], axis=1)
            c = a + 4
        elif kind == "grouped" and c % 2 == 0:
            g = 2
            out = g * p["per_group"]
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
            first = min(p["first"], c - 1)
            sizes = b.const(np.array([first, c - first], np.int64))
            a, z = b.op("Split", [x, sizes], outputs=2, axis=1)
            x = b.op("Concat", [b.relu(b.conv(a, first, 4)), b.op("Sigmoid", [z])], axis=1)
            c = 4 + c - first
        elif kind == "pad":
            before, after = p["before"], p["after"]
            pads = b.const(np.array([0, before, 1, 1, 0, after, 1, 1], np.int64))
            x = b.op("AveragePool", [b.op("Pad", [x, pads])], kernel_shape=[3, 3])
            c += before + after
        elif kind == "resize" and size <= 8:
            scales = b.const(np.array([1, 1, 2, 2], np.float32))
            x, size = b.op("Resize", [x, "", scales], mode="nearest"), size * 2
    if gemm_head:
        flat = b.op("Flatten", [x], axis=1)
        out = b.gemm(flat, c * size * size, 3)
    else:
        out = b.conv(x, c, 3)
    return b.build(out)


@st.composite
def graphs(draw):
    seed = draw(st.integers(0, 2**16))
    blocks = []
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=6)):
        if kind == "conv":
            p = {"out": draw(st.sampled_from([4, 6, 8, 12]))}
        elif kind == "concat":
            p = {"a": draw(st.sampled_from([2, 4, 6]))}
        elif kind == "grouped":
            p = {"per_group": draw(st.sampled_from([2, 3, 4]))}
        elif kind == "split":  # clipped to the channel count in build_graph
            p = {"first": draw(st.integers(1, 15))}
        elif kind == "pad":
            p = {"before": draw(st.integers(0, 2)), "after": draw(st.integers(0, 2))}
        else:
            p = {}
        blocks.append((kind, p))
    gemm_head = draw(st.booleans())
    note(f"build_graph({seed}, {blocks}, gemm_head={gemm_head})")
    return build_graph(seed, blocks, gemm_head)


def check_channel_removal(model: Model, ratio: float, criterion: str, scope: str) -> None:
    feeds = feeds_for(model)
    shapes = {k: v.shape for k, v in evaluate(model, feeds).items()}
    text = f"prune-channels{{ratio={ratio},criterion={criterion},scope={scope},round_to=1,min_channels=1}}"
    PassManager.parse(text).run(model)
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert {k: v.shape for k, v in evaluate(model, feeds).items()} == shapes


@PROPERTY
@given(model=graphs(), ratio=st.sampled_from([0.25, 0.5, 0.75]),
       criterion=st.sampled_from(["l1", "l2", "bn-gamma", "random"]), scope=st.sampled_from(["global", "layer"]))
def test_channel_removal_never_produces_an_invalid_model(model, ratio, criterion, scope):
    check_channel_removal(model, ratio, criterion, scope)


@PROPERTY
@given(model=graphs(), seed=st.integers(0, 100))
def test_removing_zeroed_channels_keeps_outputs(model, seed):
    assert_exact_removal(model, seed=seed, rtol=1e-4, expect_removal=False)


# ---- regressions: falsifying examples found by the properties above ---------------------------

# A channel shuffle halves conv2's units (each leaves both shuffle groups at once); Pad then adds
# channels that stay, and the residual Add couples them with conv4's. The group counted conv2's
# 2 units plus the pinned padding ones, so ratio=0.5 could take both of conv2's: conv2 was left
# with 0 channels (onnxruntime: Reshape "Input shape:{1,0,8,8}, requested shape:{1,2,8,8,8}";
# the checker: "Incompatible dimensions" in Add).
def shuffle_pad_residual(after: int) -> Model:
    blocks = [("conv", {"out": 4}), ("conv", {"out": 4}), ("shuffle", {}),
              ("pad", {"before": 0, "after": after}), ("residual", {})]
    return build_graph(0, blocks, gemm_head=False)


@pytest.mark.parametrize(("scope", "after"), [("global", 1), ("layer", 2)])
def test_padding_coupled_with_a_producer_never_empties_it(scope, after):
    check_channel_removal(shuffle_pad_residual(after), 0.5, "l1", scope)


def test_zeroed_removal_never_empties_a_producer_coupled_with_padding():
    model = shuffle_pad_residual(2)
    analysis = channel_groups(model)
    scores, _ = unit_scores(model, analysis, "l1")
    removed = select_units(analysis, scores, ratio=0.5, scope="layer", round_to=1, min_channels=1)
    conv2 = next(start for node, start, _ in analysis.blocks if node.name == "conv2")
    assert analysis.keep_mask(np.arange(conv2, conv2 + 4), removed).any()
    assert_exact_removal(shuffle_pad_residual(2), seed=0, rtol=1e-4, expect_removal=False)


def test_remove_channels_refuses_to_empty_a_tensor():
    model = shuffle_pad_residual(2)
    analysis = channel_groups(model)
    conv2 = next(start for node, start, _ in analysis.blocks if node.name == "conv2")
    every_unit = set(analysis.root(np.arange(conv2, conv2 + 4)).tolist())
    with pytest.raises(PassError, match="with none"):
        remove_channels(model, analysis, every_unit)

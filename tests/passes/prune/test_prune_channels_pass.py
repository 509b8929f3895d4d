"""The `prune-channels` pass: criteria, scopes, constraints, FLOPs targets, records, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from prune_graphs import GraphBuilder, feeds_for

from presso.ir import PassError, PipelineError, compute_cost, evaluate, load, save
from presso.ir.edit import set_constant
from presso.passes import PassManager, parse_pipeline
from presso.passes.prune import channel_groups


def small_resnet(seed: int = 0, channels: int = 32):
    b = GraphBuilder(shape=(1, 8, 8, 8), seed=seed)
    a = b.relu(b.bn(b.conv("x", 8, channels), channels))
    h = b.relu(b.bn(b.conv(a, channels, channels), channels))
    h = b.bn(b.conv(h, channels, channels), channels)
    s = b.relu(b.op("Add", [a, h]))
    wide = b.relu(b.conv(s, channels, 2 * channels))
    pooled = b.op("GlobalAveragePool", [wide])
    flat = b.op("Flatten", [pooled], axis=1)
    return b.build(b.gemm(flat, 2 * channels, 10))


def run(model, text: str, data=None, **kwargs):
    report = PassManager.parse(text, **kwargs).run(model, data=data)
    return report.records[-1].result


def test_ratio_removes_channels_and_keeps_the_model_valid(tmp_path):
    model = small_resnet()
    feeds = feeds_for(model)
    before = compute_cost(model)
    result = run(model, "prune-channels{ratio=0.5,round_to=1,min_channels=1}", verify=True)
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert evaluate(model, feeds)[model.output_names()[0]].shape == (1, 10)
    after = compute_cost(model)
    assert after.flops < before.flops and after.params < before.params
    assert result.stats["flops_after"] == after.flops
    assert result.error is not None and np.isfinite(result.error.max_abs)  # lossy: measured
    layers = result.stats["layers"]
    assert layers["conv1"][0] == 32 and layers["conv1"][1] < 32
    assert layers["conv1"] == layers["conv3"]  # tied by the residual Add
    records = {r.layer: r for r in model.annotations.pruning}
    assert records["conv1"].channels_after == layers["conv1"][1]
    assert len(records["conv1"].removed) == 32 - layers["conv1"][1]
    save(model, tmp_path / "pruned.onnx")
    loaded = load(tmp_path / "pruned.onnx")
    assert [r.layer for r in loaded.annotations.pruning] == [r.layer for r in model.annotations.pruning]


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-gamma", "random"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_every_criterion_and_scope_gives_a_valid_smaller_model(criterion, scope):
    model = small_resnet(seed=1)
    flops = compute_cost(model).flops
    result = run(model, f"prune-channels{{ratio=0.4,criterion={criterion},scope={scope},round_to=2,min_channels=2}}")
    onnx.checker.check_model(model.to_proto())
    evaluate(model, feeds_for(model))
    assert result.changed and compute_cost(model).flops < flops


def test_l1_removes_the_smallest_filters():
    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 16, bias=False))
    model = b.build(b.conv(x, 16, 4))
    weight = model.node("conv1").inputs[1]
    values = np.array(weight.values)
    values[[3, 7, 11]] *= 1e-3  # these filters (and their consumers' columns) are the weakest
    set_constant(weight, values)
    consumer = model.node("conv2").inputs[1]
    columns = np.array(consumer.values)
    columns[:, [3, 7, 11]] *= 1e-3
    set_constant(consumer, columns)
    run(model, "prune-channels{ratio=0.2,scope=layer,round_to=1,min_channels=1}")
    (record,) = [r for r in model.annotations.pruning if r.layer == "conv1"]
    assert record.removed == [3, 7, 11]


def test_bn_gamma_removes_the_smallest_scales():
    model = small_resnet()
    bn = next(n for n in model.nodes("BatchNormalization"))
    gamma = np.array(bn.inputs[1].values)
    gamma[[0, 5]] = 1e-4
    set_constant(bn.inputs[1], gamma)
    run(model, "prune-channels{ratio=0.0625,criterion=bn-gamma,scope=layer,round_to=1,min_channels=1}")
    (record,) = [r for r in model.annotations.pruning if r.layer == "conv1"]
    assert record.removed == [0, 5]


def test_round_to_and_min_channels():
    model = small_resnet()
    result = run(model, "prune-channels{ratio=0.7,scope=layer,round_to=8,min_channels=16}")
    for before, after in result.stats["layers"].values():
        assert after % 8 == 0 and after >= 16 and after < before


def test_keep_protects_matching_layers():
    model = small_resnet()
    result = run(model, "prune-channels{ratio=0.5,scope=layer,round_to=1,min_channels=1,keep=^conv1$}")
    assert "conv1" not in result.stats["layers"] and "conv3" not in result.stats["layers"]  # tied to conv1
    assert "conv2" in result.stats["layers"]


@pytest.mark.parametrize("target", [0.75, 0.5])
def test_flops_target(target):
    model = small_resnet()
    flops = compute_cost(model).flops
    result = run(model, f"prune-channels{{flops_target={target},round_to=1,min_channels=1}}")
    ratio = compute_cost(model).flops / flops
    assert target - 0.1 < ratio <= target + 0.01, ratio
    assert result.stats["flops_ratio"] == pytest.approx(ratio, abs=1e-3)


def test_nothing_prunable_is_a_no_op():
    b = GraphBuilder()
    model = b.build(b.op("LRN", [b.conv("x", 8, 16)], size=3))
    result = run(model, "prune-channels{ratio=0.5}")
    assert not result.changed and any("LRN" in line for line in result.log)


def test_pipeline_text_options_are_validated():
    (p,) = parse_pipeline("prune-channels{ratio=0.3,criterion=l2,scope=layer,round_to=4,min_channels=2,"
                          "keep=head,flops_target=0.7}")
    assert (p.criterion, p.scope, p.round_to, p.keep, p.flops_target) == ("l2", "layer", 4, "head", 0.7)
    with pytest.raises(PipelineError, match="criterion"):
        parse_pipeline("prune-channels{criterion=magic}")


@pytest.mark.parametrize("text, message", [
    ("prune-channels{ratio=1.5}", "ratio"),
    ("prune-channels{flops_target=0}", "flops_target"),
    ("prune-channels{keep=*conv}", "regex"),
    ("prune-channels{round_to=0}", "round_to"),
])
def test_bad_options_are_refused_when_parsed(text, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_dynamic_axes_other_than_the_batch_are_refused_with_a_fitting_example():
    model = small_resnet()
    model.graph.inputs[0].shape = ["batch", 8, "h", "w"]
    model.invalidate()
    with pytest.raises(PassError, match="static input shapes") as info:
        run(model, "prune-channels")
    assert "--shape x=1,8,224,224" in info.value.hint  # rank 4, the static 8 kept


def test_taylor_needs_data():
    with pytest.raises(PassError, match="taylor needs data"):
        run(small_resnet(), "prune-channels{criterion=taylor}")


def test_taylor_with_data_uses_gradients():
    pytest.importorskip("torch")
    model = small_resnet()
    rng = np.random.default_rng(0)
    data = [{"x": rng.normal(size=(1, 8, 8, 8)).astype(np.float32)} for _ in range(3)]
    result = run(model, "prune-channels{ratio=0.3,criterion=taylor,round_to=1,min_channels=1}", data=data)
    assert result.changed
    onnx.checker.check_model(model.to_proto())


def test_taylor_scores_follow_the_output_gradient():
    """A channel that the output does not depend on (zero consumer columns) scores zero."""
    pytest.importorskip("torch")
    from presso.ir import DataSource
    from presso.passes.prune.importance import unit_scores

    b = GraphBuilder()
    x = b.relu(b.conv("x", 8, 16))
    model = b.build(b.conv(x, 16, 4))
    consumer = model.node("conv2").inputs[1]
    columns = np.array(consumer.values)
    columns[:, 5] = 0
    set_constant(consumer, columns)
    analysis = channel_groups(model)
    data = DataSource.open([feeds_for(model, s) for s in range(2)], model)
    scores, _ = unit_scores(model, analysis, "taylor", data=data)
    group = next(g for g in analysis.groups if g.sources == ["conv1"])
    values = [scores[u] for u in group.units]
    assert values[5] == 0.0 and min(v for i, v in enumerate(values) if i != 5) > 0

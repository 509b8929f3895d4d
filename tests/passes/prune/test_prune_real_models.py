"""Channel pruning on real architectures: the onnx wheel's light models, PP-OCRv4 det/cls, magika.

For every model: ``prune-channels{ratio=0.5}`` gives a model that passes onnx.checker, runs in
onnxruntime with the original input shapes and has fewer FLOPs; and removing channels whose
weights were zeroed first leaves the outputs (and the pre-softmax logits) unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from prune_graphs import perturb_weights

from presso.ir import compute_cost, evaluate, fix_input_shapes, load
from presso.passes import PassManager
from presso.passes.prune import channel_groups
from presso.passes.prune.importance import unit_scores
from presso.passes.prune.prune_channels import select_units
from presso.passes.prune.rewrite import remove_channels, zero_channels
from presso.tools import zoo

HEAVY = {"vgg19", "zfnet512"}  # 350-550 MB of weights: 25-50 s each on 2 cores
LIGHT = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in zoo.LIGHT_MODELS]


def prepared(name: str):
    """(model ready for pruning, sample feeds)."""
    if name in zoo.LIGHT_MODELS:
        model = load(zoo.light_model(name))
        PassManager.parse("fold-constants").run(model)
        perturb_weights(model)  # the light models' weights are all 0.02: make channels differ
        rng = np.random.default_rng(0)
        feeds = {t.name: rng.normal(size=[int(d) for d in t.shape]).astype(np.float32) for t in model.inputs}
        return model, feeds
    if name == "ppocr-det":
        model, feeds = load(zoo.ppocr_det_model()), {"x": zoo.ppocr_det_inputs(1, size=320)}
        fix_input_shapes(model, {"x": [1, 3, 320, 320]})
    elif name == "ppocr-cls":
        model, feeds = load(zoo.ppocr_cls_model()), {"x": zoo.ppocr_cls_inputs(1)[0]}
        fix_input_shapes(model, {"x": [1, 3, 48, 192]})
    else:
        model, feeds = load(zoo.magika_model()), {"bytes": zoo.magika_dataset(1)[0]}
        fix_input_shapes(model, {"bytes": [1, 2048]})
    PassManager.parse("constants-to-initializers,fold-constants").run(model)
    return model, feeds


def compared_tensors(model) -> list[str]:
    """Graph outputs, plus the logits before a final Softmax/Sigmoid (which would squash
    differences into rounding noise)."""
    names = model.output_names()
    for node in model.nodes("Softmax", "Sigmoid"):
        if node.outputs[0].name in model.output_names():
            names.append(node.inputs[0].name)
    return names


@pytest.mark.parametrize("name", [*LIGHT, "ppocr-det", "ppocr-cls", "magika"])
def test_prune_half_the_channels(name, free_memory):
    model, feeds = prepared(name)
    pruned = model.copy()

    # Exactness of the rewriting: zero half of every group's channels, then remove them.
    analysis = channel_groups(model)
    scores, _ = unit_scores(model, analysis, "random", seed=1)
    removed = select_units(analysis, scores, ratio=0.5, scope="layer", round_to=1, min_channels=1)
    assert removed
    zero_channels(model, analysis, removed)
    model.invalidate()
    names = compared_tensors(model)
    reference = evaluate(model, feeds, outputs=names)
    remove_channels(model, analysis, removed)
    result = evaluate(model, feeds, outputs=names)
    for tensor in names:
        ref = reference[tensor]
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(result[tensor], ref, rtol=1e-4, atol=1e-5 * scale, err_msg=tensor)
    del model

    # prune-channels{ratio=0.5}: valid, runs with the original input shapes, fewer FLOPs.
    report = PassManager.parse("prune-channels{ratio=0.5}").run(pruned)
    stats = report.records[0].result.stats
    onnx.checker.check_model(pruned.to_proto())
    outputs = evaluate(pruned, feeds)
    assert {k: v.shape for k, v in outputs.items()} == {k: reference[k].shape for k in outputs}
    assert all(np.all(np.isfinite(v)) for v in outputs.values())
    assert stats["flops_after"] == compute_cost(pruned).flops < stats["flops_before"]
    assert pruned.annotations.pruning


def test_magika_as_shipped_prunes_with_its_dynamic_batch_and_keeps_it(caplog):
    """The newcomer's command `presso opt magika.onnx -p "prune-channels{ratio=0.5}"`: no
    --shape, no fold-constants first. The pass prepares the model, picks a batch, halves the
    FLOPs, and the output still takes any batch (per-sample results equal to batch-1 runs)."""
    model = load(zoo.magika_model())
    assert not isinstance(model.graph.inputs[0].shape[0], int)
    x = zoo.magika_dataset(3)[0]
    reference = evaluate(model, {"bytes": x})["target_label"]
    flops_before = _flops_at_batch_1(model)
    result = PassManager.parse("prune-channels{ratio=0.5}").run(model).records[-1].result
    assert result.stats["removed"] > 0 and "removed nothing" not in caplog.text
    assert 0.4 < _flops_at_batch_1(model) / flops_before < 0.6
    assert model.graph.inputs[0].shape[0] == load(zoo.magika_model()).graph.inputs[0].shape[0]
    onnx.checker.check_model(model.to_proto(), full_check=True)
    together = evaluate(model, {"bytes": x})["target_label"]
    alone = np.concatenate([evaluate(model, {"bytes": x[i:i + 1]})["target_label"] for i in range(len(x))])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert together.shape == reference.shape and not np.allclose(together, reference)


def _flops_at_batch_1(model) -> float:
    from presso.ir.analysis.batch import concrete_batch

    copy = model.copy()
    with concrete_batch(copy, 1):
        return compute_cost(copy).flops

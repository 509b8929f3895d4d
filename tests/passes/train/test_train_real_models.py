"""Training a real model (PP-OCR's direction classifier) on real rendered text images."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from presso.ir import evaluate, fix_input_shapes, load  # noqa: E402
from presso.passes import PassManager  # noqa: E402
from presso.passes.train.executor import run_numpy  # noqa: E402
from presso.tools import zoo  # noqa: E402


def _cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + 1e-12)))


def test_finetune_ppocr_cls_lowers_its_loss_and_writes_back_consistently():
    images, labels = zoo.ppocr_cls_inputs(12, seed=3)
    model = load(zoo.ppocr_cls_model())
    fix_input_shapes(model, {"x": [4, 3, 48, 192]})
    out = model.output_names()[0]
    # cleanup first, so that the Constant weights are initializers the executor can train
    text = "constants-to-initializers,fold-constants,finetune{epochs=2,lr=0.0002,batch=4}"
    before = _cross_entropy(np.concatenate([evaluate(_prep(), {"x": images[i:i + 4]})[out]
                                            for i in range(0, 12, 4)]), labels)
    report = PassManager.parse(text).run(model, data={"x": images}, labels=labels, progress=False)
    stats = report.records[-1].result.stats
    assert stats["trained_tensors"] > 50 and stats["loss"] == "cross_entropy"
    probs = np.concatenate([evaluate(model, {"x": images[i:i + 4]})[out] for i in range(0, 12, 4)])
    assert _cross_entropy(probs, labels) < before  # measured by onnxruntime on the written-back model
    mine = run_numpy(model, {"x": images[:4]})[out]
    np.testing.assert_allclose(mine, probs[:4], atol=1e-4)


def _prep():
    model = load(zoo.ppocr_cls_model())
    fix_input_shapes(model, {"x": [4, 3, 48, 192]})
    return model

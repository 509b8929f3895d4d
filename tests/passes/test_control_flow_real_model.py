"""A real model with control flow: Silero VAD (``silero-vad`` wheel), 25 nested If nodes whose
branches read the outer graph and hold the convolutions and LSTMs, fed with a real recording.

Every cleanup pass alone and the cleanup pipeline must keep it valid (``onnx.checker`` full
check and an onnxruntime load on save) and exact against onnxruntime on the original file.
Quantization leaves the bodies float and says so.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from presso.ir import PassError, load, save
from presso.passes import PassManager
from presso.tools import zoo

pytest.importorskip("silero_vad", reason="pip install -e '.[train]' installs silero-vad")

CLEANUP = ["infer-shapes", "constants-to-initializers", "fold-constants", "fold-batchnorm", "remove-identity",
           "eliminate-dead-code", "upgrade-opset{version=21}", "compact",
           "constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,eliminate-dead-code"]


@pytest.fixture(scope="module")
def feeds():
    state = np.zeros((2, 1, 128), np.float32)
    # both branches of the rate switch: 512-sample chunks at 16 kHz, 256-sample ones at 8 kHz
    return [{"input": chunk[None], "state": state, "sr": np.array(rate, np.int64)}
            for rate, samples in [(16000, 512), (8000, 256)] for chunk in zoo.audio_chunks(2, samples=samples)]


@pytest.fixture(scope="module")
def expected(feeds):
    session = ort.InferenceSession(str(zoo.silero_vad_model()), providers=["CPUExecutionProvider"])
    return [session.run(None, f) for f in feeds]


@pytest.mark.parametrize("pipeline", CLEANUP)
def test_cleanup_keeps_silero_vad_exact(pipeline, feeds, expected, tmp_path):
    model = load(zoo.silero_vad_model())
    assert len(model.nodes("If")) >= 1
    PassManager.parse(pipeline, verify=True).run(model, sample_feeds=feeds)
    written = save(model, tmp_path / "out.onnx")
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    for f, want in zip(feeds, expected):
        for w, g in zip(want, session.run(None, f)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_fold_constants_folds_inside_the_branches_without_copying_weights(tmp_path):
    model = load(zoo.silero_vad_model())
    result = PassManager.parse("fold-constants").run(model).records[0].result
    assert result.stats["nodes_folded"] > 100  # the Constant/Shape chains inside the branches
    # the LSTM weights that both inner branches read stay one stored copy each
    assert save(model, tmp_path / "folded.onnx").stat().st_size <= zoo.silero_vad_model().stat().st_size


def test_quantization_leaves_the_bodies_float_and_says_so(feeds):
    model = load(zoo.silero_vad_model())
    insert = PassManager.parse("insert-qdq").run(model).records[0].result
    assert insert.stats["left_float_in_bodies"] >= 12  # every Conv of both branches
    with pytest.raises(PassError, match="inside If/Loop/Scan bodies"):
        PassManager.parse("calibrate{method=minmax}").run(model, data=feeds)

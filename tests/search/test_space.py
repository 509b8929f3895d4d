"""The search space: choices per model, the pipeline text each candidate becomes, YAML files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from presso import PassContext, PassManager, load, quantize
from presso.backends.target import get_target
from presso.ir import evaluate
from presso.search import SearchSpace, SpaceError
from presso.search.space import FLOAT_MODEL, PRESSO_QUANTIZE_DEFAULT, filter_applicable
from search_models import classifier, data, log_of_relu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("space")
    return classifier(folder / "c.onnx"), data(folder / "c.npz", (3, 16, 16), 8, seed=0)


def _candidates(space: SearchSpace):
    """Every candidate of a space (choices that do not apply are left out, as suggest does)."""
    names = list(space.choices)
    seen = set()
    for values in itertools.product(*(space.choices[n] for n in names)):
        candidate = filter_applicable(dict(zip(names, values)), space)
        key = tuple(sorted(candidate.items()))
        if key not in seen:
            seen.add(key)
            yield candidate


def test_default_space_follows_the_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "conv-only",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "conv.onnx")
    conv_only = SearchSpace.default(load(tmp_path / "conv.onnx"))
    assert conv_only.choices["quant"] == ["none", "int8"]  # weight-only and dynamic need a constant MatMul/Gemm
    with_gemm = SearchSpace.default(load(classifier(tmp_path / "c.onnx")))
    assert {"dynamic", "int4-weights"} <= set(with_gemm.choices["quant"])
    assert with_gemm.choices["prune"] == [0.0, 0.25, 0.5]
    assert set(with_gemm.choices["backend"]) <= {"onnxruntime", "tvm"} and "onnxruntime" in with_gemm.choices["backend"]


def test_every_candidate_is_a_pipeline_that_parses(tmp_path):
    space = SearchSpace.default(load(log_of_relu(tmp_path / "m.onnx")))
    texts = set()
    for candidate in _candidates(space):
        text = SearchSpace.pipeline(candidate, static_shapes=True, metric="iou")
        PassManager.parse(text)  # raises on an unknown pass or option
        texts.add(text)
    assert len(texts) > 50  # distinct recipes, not one text for all


def test_default_recipe_is_presso_quantize(tiny):
    """The pipeline of PRESSO_QUANTIZE_DEFAULT computes what presso.quantize computes."""
    model_path, calib = tiny
    text = SearchSpace.pipeline(PRESSO_QUANTIZE_DEFAULT)
    replayed = load(model_path)
    PassManager.parse(text).run(replayed, data=calib, ctx=PassContext(progress=False, target=get_target("cpu-x86")))
    expected = quantize(load(model_path), calib, target="cpu-x86", progress=False)
    feed = {"x": np.load(calib)["x"][:4]}
    np.testing.assert_array_equal(evaluate(replayed, feed)["probs"], evaluate(expected, feed)["probs"])


def test_pipeline_order_and_conditional_choices():
    text = SearchSpace.pipeline({"quant": "int8", "calibration": "minmax", "prune": 0.25, "distill_epochs": 2,
                                 "sparsity": 0.5, "per_channel": False, "scheme": "s8s8"}, static_shapes=True)
    assert text == ("static-shapes,prune-channels{ratio=0.25},distill{epochs=2},constants-to-initializers,"
                    "sparsify{sparsity=0.5},"
                    "insert-qdq{scheme=s8s8,per_channel=false},calibrate{method=minmax},bias-correction,fold-qdq")
    assert SearchSpace.pipeline(FLOAT_MODEL) == "eliminate-dead-code"
    mixed = SearchSpace.pipeline({"quant": "int8", "calibration": "mse", "max_drop": 0.02}, metric="iou")
    assert mixed == "insert-qdq,calibrate{method=mse},bias-correction,mixed-precision{max_drop=0.02,metric=iou},fold-qdq"
    space = SearchSpace({"quant": ["none", "int8"], "prune": [0.0, 0.5], "distill_epochs": [1, 3]})

    class Recorder:
        asked: list[str] = []

        def suggest_categorical(self, name, values):
            self.asked.append(name)
            return values[0]

    assert space.suggest(Recorder()) == {"quant": "none", "prune": 0.0, "sparsity": 0.0, "backend": "onnxruntime"}
    assert Recorder.asked == ["quant", "prune"]  # no distill_epochs when nothing is pruned


def test_yaml_restricts_and_rejects(tmp_path, tiny):
    base = SearchSpace.default(load(tiny[0]))
    path = tmp_path / "space.yaml"
    path.write_text("quant: [int8]\ncalibration: minmax\nprune: [0.0, 0.25]\n")
    space = SearchSpace.from_yaml(path, base)
    assert space.choices["quant"] == ["int8"] and space.choices["calibration"] == ["minmax"]
    assert space.choices["backend"] == base.choices["backend"]
    path.write_text("prunes: [0.1]\n")
    with pytest.raises(SpaceError, match="unknown search choice 'prunes'"):
        SearchSpace.from_yaml(path, base)
    path.write_text("prune: [1.5]\n")
    with pytest.raises(SpaceError, match="cannot take 1.5"):
        SearchSpace.from_yaml(path, base)
    path.write_text("- just a list\n")
    with pytest.raises(SpaceError, match="YAML mapping"):
        SearchSpace.from_yaml(path, base)


def test_sparsify_reaches_weights_held_by_constant_nodes(tmp_path):
    """PP-OCR-style models hold weights in Constant nodes; the sparsity candidate must still zero them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w_value")),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "constant-weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c.onnx")
    model = load(tmp_path / "c.onnx")
    PassManager.parse(SearchSpace.pipeline({"quant": "none", "sparsity": 0.5})).run(model, ctx=PassContext(progress=False))
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    assert np.mean(conv.inputs[1].values == 0) >= 0.5

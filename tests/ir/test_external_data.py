"""Weights in external data stay on disk: mapped read-only on load, shared by copies, written
back one by one (page-aligned) on save, and equal after every step."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import make_proto, rand, reference, vi
from onnx import helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo

from presso.ir import evaluate, load, save
from presso.ir.external import ALIGNMENT, is_mapped
from presso.passes import PassManager


def _external_model(folder):
    weights = [numpy_helper.from_array(rand((64, 48), seed=i), f"w{i}") for i in range(2)]
    # w1 is stored [64, 48] and transposed in the graph, so folding makes a new weight
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Transpose", ["w1"], ["w1_t"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["r", "w1_t"], ["y"], name="mm1")]
    proto = make_proto(nodes, [vi("x", [2, 64])], [vi("y", [2, 64])], weights)
    path = folder / "model.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return path, onnx.load(str(path))


def test_external_weights_are_mapped_read_only_and_shared_by_copies(tmp_path):
    path, _ = _external_model(tmp_path)
    model = load(path)
    weight = model.tensor("w0").values
    assert is_mapped(weight) and not weight.flags.writeable
    with pytest.raises(ValueError):  # passes replace arrays; writing into a weight is a bug
        weight[0, 0] = 1.0
    assert model.copy().tensor("w0").values is weight


def test_save_streams_weights_to_aligned_external_data_and_round_trips(tmp_path):
    path, proto = _external_model(tmp_path)
    feeds = {"x": rand((2, 64), seed=9)}
    expected = reference(proto, feeds)
    model = load(path)
    PassManager.parse("fold-constants").run(model)  # folds Transpose(w1) into a new weight
    (tmp_path / "out").mkdir()
    out = save(model, tmp_path / "out" / "folded.onnx")
    written = onnx.load(str(out), load_external_data=False)
    offsets = [int(ExternalDataInfo(t).offset or 0) for t in written.graph.initializer]
    assert len(offsets) == 2 and all(o % ALIGNMENT == 0 for o in offsets)
    assert all(ExternalDataInfo(t).location == "folded.onnx.data" for t in written.graph.initializer)
    again = load(out)
    np.testing.assert_allclose(evaluate(again, feeds)["y"], expected["y"], rtol=1e-6)


def test_quantize_weights_on_mapped_weights_matches_in_memory_weights(tmp_path):
    path, proto = _external_model(tmp_path)
    feeds = {"x": rand((2, 64), seed=3)}
    mapped, in_memory = load(path), load(onnx.load(str(path)))
    for model in (mapped, in_memory):
        PassManager.parse("fold-constants,quantize-weights{bits=4,block=32}").run(model)
    np.testing.assert_array_equal(evaluate(mapped, feeds)["y"], evaluate(in_memory, feeds)["y"])

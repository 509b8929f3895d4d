"""`Model`: copies, the light export for large weights, analyses cache."""

from __future__ import annotations

import numpy as np
import onnx
from _graphs import init, make_proto, rand, reference, vi
from onnx import helper

from presso.ir import evaluate, load
from presso.ir.evaluate import create_session
from presso.ir.model import STUB_LOCATION


def _proto():
    return make_proto([helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"),
                       helper.make_node("Relu", ["h"], ["y"], name="act")],
                      [vi("x", [2, 512])], [vi("y", [2, 600])],
                      [init("w", rand((512, 600), seed=1)), init("b", rand((600,), seed=2))])


def test_copy_is_independent_and_equal():
    model = load(_proto())
    clone = model.copy()
    x = {"x": rand((2, 512))}
    np.testing.assert_array_equal(evaluate(model, x)["y"], evaluate(clone, x)["y"])
    clone.graph.nodes[0].inputs[1].values[:] = 0  # in place, on the copy only
    clone.graph.outputs[0].shape[0] = 7
    clone.annotations.history.append({"pass": "x"})
    clone.opset_imports[""] = 18
    assert np.abs(model.graph.nodes[0].inputs[1].values).max() > 0
    assert model.graph.outputs[0].shape[0] == 2
    assert model.annotations.history == [] and model.opset == 17


def test_export_without_large_data_runs_the_same():
    proto = _proto()
    model = load(proto)
    light, arrays = model.to_proto_without_large_data(min_bytes=4096)
    assert list(arrays) == ["w"]  # 1.2 MB weight left out, the 2.4 KB bias kept
    stub = next(t for t in light.graph.initializer if t.name == "w")
    assert list(stub.dims) == [512, 600] and not stub.raw_data
    assert stub.external_data[0].value == STUB_LOCATION
    assert light.ByteSize() < 10_000
    x = {"x": rand((2, 512))}
    session = create_session(light, initializers=arrays)
    np.testing.assert_array_equal(session.run(None, x)[0], reference(proto, x)["y"])
    # the full export still carries the data, and the model was not changed by the light one
    onnx.checker.check_model(model.to_proto())
    assert model.to_proto().ByteSize() > 512 * 600 * 4


def test_analyses_are_cached_until_invalidated():
    model = load(_proto())
    calls = []
    assert model.analysis("k", lambda: calls.append(1) or 1) == 1
    assert model.analysis("k", lambda: calls.append(1) or 2) == 1
    version = model.version
    model.invalidate()
    assert model.version == version + 1
    assert model.analysis("k", lambda: calls.append(1) or 3) == 3
    assert len(calls) == 2


def test_queries():
    model = load(_proto())
    assert model.input_names() == ["x"] and model.output_names() == ["y"]
    assert [n.op for n in model.nodes("Relu")] == ["Relu"]
    assert model.node("fc").op == "Gemm"
    assert sorted(model.initializers()) == ["b", "w"]
    assert "Model('tiny'" in repr(model)

"""Builders for tiny ONNX graphs and the onnxruntime reference that tests compare against.

Every check runs the *original* proto in a fresh onnxruntime session (never through Presso's
IR), so a bug in export or evaluation cannot hide a bug in a pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from presso.ir import Model, evaluate, load
from presso.passes import PassManager

F32 = np.float32


def vi(name: str, shape: Sequence[int | str | None] | None, dtype=np.float32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make_proto(nodes, inputs, outputs, initializers=(), *, opset: int = 17, ir_version: int | None = None,
               name: str = "tiny") -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir_version or min(onnx.IR_VERSION, 10)
    return proto


def reference(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs of the untouched proto under onnxruntime, without any graph optimization."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    declared = {o.name for o in proto.graph.output}
    if outputs and not set(outputs) <= declared:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs if n not in declared)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(outputs) if outputs else [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def rand(shape, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_close(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], *,
                 rtol: float = 1e-5, atol: float = 1e-5) -> None:
    assert sorted(expected) == sorted(actual), (sorted(expected), sorted(actual))
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, float(np.abs(want).max(initial=0))),
                                   err_msg=f"output '{name}'")


def run_pipeline(proto: onnx.ModelProto, pipeline: str, feeds: Mapping[str, np.ndarray], *,
                 rtol: float = 1e-5, atol: float = 1e-5) -> tuple[Model, dict]:
    """Load ``proto``, run ``pipeline`` with the manager's own verification, and compare the
    result with onnxruntime on the original proto. Returns the model and the pass stats."""
    expected = reference(proto, feeds)
    model = load(proto)
    report = PassManager.parse(pipeline, verify=True).run(model, data=[dict(feeds)])
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert_close(expected, evaluate(model, feeds), rtol=rtol, atol=atol)
    stats = {}
    for record in report.records:
        stats.update(record.result.stats)
    return model, stats


def ops(model: Model) -> list[str]:
    return [n.op for n in model.graph.nodes]

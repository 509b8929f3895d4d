"""Every node test case of the ``onnx`` package that holds control flow (If/Loop/Scan/SequenceMap,
in the graph, in bodies or in the functions of ``*_expanded`` cases) or a recurrent op
(RNN/LSTM/GRU), through every cleanup pass alone and the cleanup pipeline.

The wheel ships no data files; ``collect_testcases()`` builds each case's model and inputs in
Python. The oracle is onnxruntime on the untouched case model: each result must pass
``onnx.checker`` (full check), load in onnxruntime, and give the same outputs on the case's own
inputs; the pass manager's ``--verify`` must hold where the inputs are plain tensors.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from presso.ir import PassError, load, save
from presso.passes import PassManager

CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap", "RNN", "LSTM", "GRU"}
CLEANUP_PASSES = ["infer-shapes", "constants-to-initializers", "fold-constants", "fold-batchnorm",
                  "remove-identity", "eliminate-dead-code", "upgrade-opset{version=21}", "compact"]
PIPELINE = "constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,eliminate-dead-code"
# onnx.version_converter keeps Scan-8's batch-axis layout under Scan-9's semantics; upgrade-opset
# refuses such models with a PassError instead of writing a model that computes something else.
REFUSED = {("test_scan_sum", "upgrade-opset{version=21}")}


def _ops(graph: onnx.GraphProto):
    for node in graph.node:
        yield node.op_type
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _ops(attr.g)
            for sub in attr.graphs:
                yield from _ops(sub)


def _cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    selected = {}
    for case in cases:
        ops = set(_ops(case.model.graph)) | {n.op_type for f in case.model.functions for n in f.node}
        if ops & CONTROL_FLOW:
            selected[case.name] = case
    return selected


CASES = _cases()


def _session(proto: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _same(want, got) -> bool:
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(_same, want, got))
    if want is None or got is None:
        return want is None and got is None
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape or want.dtype != got.dtype:
        return False
    if want.dtype.kind in "fc":
        scale = float(np.nanmax(np.abs(want))) if want.size and np.isfinite(want).any() else 0.0
        return bool(np.allclose(want, got, rtol=0, atol=1e-5 + 1e-4 * scale, equal_nan=True))
    return bool(np.array_equal(want, got))


def test_the_onnx_package_has_the_control_flow_cases():
    # guards against a silent empty parametrization if onnx renames or drops its cases
    assert len(CASES) >= 50
    assert {"test_if", "test_loop11", "test_scan9_sum", "test_lstm_defaults", "test_affine_grid_2d_expanded"} <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cleanup_passes_keep_control_flow_cases_valid_and_exact(name, tmp_path):
    case = CASES[name]
    feeds_list = [{v.name: x if isinstance(x, list) or x is None else np.asarray(x)
                   for v, x in zip(case.model.graph.input, inputs)} for inputs, _ in case.data_sets]
    try:
        reference_session = _session(case.model)
        expected = [reference_session.run(None, feeds) for feeds in feeds_list]
    except Exception as exc:  # batch-wise RNN layouts; bfloat16 feeds, which its Python API cannot take
        pytest.skip(f"onnxruntime does not run the original: {str(exc).splitlines()[0][:120]}")
    plain = all(isinstance(x, np.ndarray) and x.dtype.kind in "fiub" for feeds in feeds_list for x in feeds.values())
    for pipeline in [*CLEANUP_PASSES, PIPELINE]:
        model = load(case.model)
        manager = PassManager.parse(pipeline, verify=plain)
        if (name, pipeline) in REFUSED:
            with pytest.raises(PassError, match="Scan"):
                manager.run(model)
            continue
        manager.run(model, sample_feeds=feeds_list if plain else None)
        written = save(model, tmp_path / f"{pipeline.split('{')[0]}.onnx")  # checker (full) + onnxruntime load
        session = _session(onnx.load(str(written)))
        for feeds, want in zip(feeds_list, expected):
            got = session.run(None, feeds)
            assert all(_same(w, g) for w, g in zip(want, got)), f"{pipeline} changed the outputs of {name}"

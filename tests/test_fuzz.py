"""Differential fuzzing in the default suite: random valid graphs (``tests/fuzz/graphs.py``)
through every semantics-preserving pass and every lossy pipeline, judged by onnxruntime
(``tests/fuzz/oracle.py``). A few hundred graphs here; ``benchmarks/fuzz.py`` runs thousands.

Reproducible: hypothesis runs derandomized, so CI sees the same graphs every time; a failing
example shrinks to a small graph whose ``describe()`` is printed. Turn it into a hand-built
regression test in ``tests/passes/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import os

import onnx
import pytest
from fuzz.graphs import OPSETS, graphs, random_graph
from fuzz.oracle import CLEANUP, LOSSY, ON_QUANTIZED, GeneratorError, check, exact_passes, judge, reference
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from presso import load

EXAMPLES = int(os.environ.get("PRESSO_FUZZ_EXAMPLES", "0"))  # 0: the defaults below
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


def _expect_ok(graph, pipelines, exact: bool) -> None:
    note(graph.describe())
    feeds = graph.feeds()
    try:
        expected = reference(graph, feeds)
    except GeneratorError as exc:  # the generator's bug, not the passes': still a failure here
        pytest.fail(f"generated an invalid graph: {exc}")
    for pipeline in pipelines:
        outcome = check(graph, pipeline, exact, feeds, expected)
        assert outcome.kind in ("ok", "refused"), f"{pipeline}: {outcome.kind}: {outcome.detail}"


@settings(max_examples=EXAMPLES or 80, **FUZZ)
@given(graph=graphs())
def test_semantics_preserving_passes_match_onnxruntime(graph):
    _expect_ok(graph, exact_passes(), exact=True)


@settings(max_examples=EXAMPLES or 60, **FUZZ)
@given(graph=graphs(), lossy=st.lists(st.sampled_from(LOSSY), min_size=1, max_size=2, unique=True),
       on_quantized=st.sampled_from(ON_QUANTIZED))
def test_lossy_pipelines_write_loadable_finite_models(graph, lossy, on_quantized):
    """Each example takes one or two lossy pipelines and one exact pass on the quantized model
    (all of them on every graph would cost ~10× more; benchmarks/fuzz.py runs them all)."""
    _expect_ok(graph, lossy, exact=False)
    _expect_ok(graph, [on_quantized], exact=True)


def test_generator_covers_every_family_and_opset_with_valid_graphs():
    ops, opsets, dynamic = set(), set(), 0
    for seed in range(250):
        graph = random_graph(seed)
        reference(graph, graph.feeds())  # raises GeneratorError for an invalid graph
        ops.update(n.op_type for n in graph.proto.graph.node)
        opsets.add(graph.opset)
        dynamic += graph.dynamic
    wanted = {"Conv", "ConvTranspose", "BatchNormalization", "Gemm", "MatMul", "Add", "Mul", "Reshape", "Flatten",
              "Transpose", "Concat", "Split", "Slice", "Pad", "Resize", "MaxPool", "AveragePool", "Softmax",
              "LayerNormalization", "Constant", "Shape", "Gather", "If", "ReduceMean", "Expand", "ConstantOfShape"}
    assert wanted <= ops, sorted(wanted - ops)
    assert opsets == set(OPSETS)
    assert 0.2 < dynamic / 250 < 0.8


def test_oracle_reports_a_changed_model_as_a_mismatch():
    graph = next(g for g in map(random_graph, range(200))
                 if any(n.op_type == "Conv" and n.input[1] in {i.name for i in g.proto.graph.initializer}
                        for n in g.proto.graph.node))
    feeds = graph.feeds()
    expected = reference(graph, feeds)
    model = load(graph.proto)
    conv = next(n for n in model.nodes("Conv") if n.inputs[1].name in model.initializers())
    conv.inputs[1].values = conv.inputs[1].values + 1.0  # a "pass" that changes a weight
    assert judge(model, feeds, expected, exact=True).kind == "mismatch"
    assert judge(load(graph.proto), feeds, expected, exact=True).kind == "ok"


def test_oracle_reports_an_unloadable_model_as_invalid():
    graph = random_graph(3)
    feeds = graph.feeds()
    expected = reference(graph, feeds)
    model = load(graph.proto)
    model.graph.nodes[-1].op = "NoSuchOp"  # what a broken pass could write
    assert judge(model, feeds, expected, exact=True).kind == "invalid"


def test_cleanup_pipeline_is_among_the_exact_checks():
    passes = exact_passes()
    assert CLEANUP in passes and "fold-batchnorm" in passes and "compact" in passes
    assert not any(p in passes for p in ("insert-qdq", "sparsify", "prune-channels"))
    assert all(onnx.defs.has(op) for op in ("LayerNormalization", "Gelu"))  # opsets 17 and 20 exist here

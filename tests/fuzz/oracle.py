"""The differential oracle: a pass or pipeline on a fuzzed graph against onnxruntime.

Independent of the code under test: the original proto runs in its own onnxruntime session
(no graph optimizations); the transformed model is exported with ``Model.to_proto()``, checked
with ``onnx.checker.check_model(full_check=True)`` and run in a fresh session. Presso's own
verification stays off, so a bug in it cannot hide a bug in a pass.

Exact passes are compared with the original (or, after a ``prefix | `` such as
``insert-qdq,calibrate | fold-qdq``, with the model the prefix wrote) to ``atol + rtol·max|ref|``.
A lossy pipeline's model must also run under onnxruntime's default (all) optimizations, as
deployed, e.g. on its int8 kernels, with finite outputs.

Outcomes (:data:`OUTCOMES`): ``ok``; ``refused`` (the pass raised a PressoError on purpose,
e.g. "needs static shapes"); ``mismatch`` (an exact pass changed the outputs beyond the
tolerance, or renamed/reshaped them); ``invalid`` (the written model fails the checker, or
onnxruntime will not load or run it); ``nonfinite`` (a lossy pipeline made non-finite outputs
from finite ones); ``crash`` (any other exception, including a pass's internal error that the
pass manager wrapped).
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

ort.set_default_logger_severity(3)

OUTCOMES = ("ok", "refused", "mismatch", "invalid", "nonfinite", "crash")
FAILURES = ("mismatch", "invalid", "nonfinite", "crash")

RTOL, ATOL = 1e-4, 1e-5  # the pass manager's defaults
CLEANUP = "constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,eliminate-dead-code"
# Lossy pipelines: the written model must load and give finite outputs. prune-channels gets
# small rounding so that the fuzzer's few channels are prunable at all.
LOSSY = (
    "insert-qdq,calibrate{method=minmax},fold-qdq",  # one entry per calibration method (auto below)
    "insert-qdq,calibrate{method=mse},fold-qdq{qoperator=true}",
    "insert-qdq{scheme=a16w8},calibrate{method=percentile},fold-qdq",
    "insert-qdq{scheme=w4a8,per_channel=false},calibrate{method=entropy},bias-correction,fold-qdq",
    "insert-qdq{scheme=int8-symmetric},calibrate{method=auto},fold-qdq",
    "prune-channels{ratio=0.5,round_to=1,min_channels=1}",
    "sparsify",
    "sparsify{pattern=2:4}",
    "quantize-dynamic",
    "quantize-weights{block=16,bits=4}",
    "compact{bias_scales=true}",
)
# Exact passes on a quantized graph: judged against the model that the prefix wrote.
ON_QUANTIZED = (  # minmax: the prefix only has to make a quantized graph, and auto would score 6 candidates
    "insert-qdq,calibrate{method=minmax} | fold-qdq",
    "insert-qdq,calibrate{method=minmax},fold-qdq | " + CLEANUP,
    "insert-qdq,calibrate{method=minmax},fold-qdq | compact",
)


def exact_passes() -> list[str]:
    """Every registered semantics-preserving pass alone, a few with options, the cleanup
    pipeline, and every one of them in one pipeline."""
    from presso.passes.registry import available_passes

    # Presso's own passes only: tests register deliberately broken ones (test-break-weights)
    alone = [name for name, cls in available_passes().items()
             if cls.preserves_semantics and cls.__module__.startswith("presso.")]
    # then all of them in one pipeline after the cleanup ones (fusions match initializers)
    everything = CLEANUP + "," + ",".join(p for p in alone if p not in CLEANUP.split(","))
    return alone + ["upgrade-opset{version=21}", "fold-batchnorm{standalone=false}", CLEANUP, everything]


def all_pipelines() -> list[tuple[str, bool]]:
    """(pipeline text, exact) for everything the fuzzer checks."""
    return [(p, True) for p in exact_passes()] + [(p, True) for p in ON_QUANTIZED] + [(p, False) for p in LOSSY]


@dataclass
class Outcome:
    kind: str
    detail: str = ""


class GeneratorError(Exception):
    """The generated graph itself is invalid (a bug in the generator, not a finding)."""


def session(proto: onnx.ModelProto, optimized: bool = False) -> ort.InferenceSession:
    """A fresh CPU session: no graph optimizations (the reference), or onnxruntime's default
    (all: what a deployed model meets, e.g. the int8 kernels of a QDQ model)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_proto(proto: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    s = session(proto)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def reference(graph, feeds) -> dict[str, np.ndarray]:
    """Check the generated graph and run it; raises GeneratorError when either fails."""
    try:
        onnx.checker.check_model(graph.proto, full_check=True)
    except Exception as exc:
        raise GeneratorError(f"checker: {str(exc).strip().splitlines()[0][:300]}") from exc
    try:
        return run_proto(graph.proto, feeds)
    except Exception as exc:
        raise GeneratorError(f"onnxruntime: {str(exc).strip().splitlines()[0][:300]}") from exc


def calibration_data(graph, samples: int = 4):
    shapes = graph.static_shapes()
    rng = np.random.default_rng(1234)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(samples)]


def check(graph, pipeline: str, exact: bool, feeds=None, expected=None) -> Outcome:
    """Run ``pipeline`` on ``graph`` and judge the written model against the original.

    ``"prefix | passes"`` first runs ``prefix`` (e.g. ``insert-qdq,calibrate``) and then judges
    ``passes`` against the model the prefix wrote, so that exact passes meet quantized graphs.
    """
    from presso import load

    feeds = feeds if feeds is not None else graph.feeds()
    prefix, _, checked = pipeline.rpartition(" | ")
    original = graph.proto
    try:
        model = load(onnx.ModelProto.FromString(graph.proto.SerializeToString()))
    except Exception as exc:
        return Outcome("crash", "load: " + _brief(exc))
    if prefix:
        failed = _run(graph, model, prefix)
        if failed:
            failed.detail = f"in '{prefix}': {failed.detail}"
            return failed
        try:
            original = model.to_proto()
            expected = run_proto(original, feeds)
            model = load(original)
        except Exception as exc:
            return Outcome("invalid", f"in '{prefix}': " + _brief(exc))
    elif expected is None:
        expected = reference(graph, feeds)
    failed = _run(graph, model, checked)
    return failed or judge(model, feeds, expected, exact, original)


def _run(graph, model, pipeline: str) -> Outcome | None:
    """Run ``pipeline`` in place; an Outcome when it did not finish."""
    from presso import PassManager
    from presso.ir import fix_input_shapes
    from presso.ir.errors import PressoError

    if graph.dynamic:  # the static shapes must be those of the feeds
        pipeline = re.sub(r"static-shapes(?!\{)", f"static-shapes{{batch={graph.batch}}}", pipeline)
    try:
        if "prune-channels" in pipeline and graph.dynamic:
            fix_input_shapes(model, dims={"N": graph.batch})
        PassManager.parse(pipeline).run(model, data=calibration_data(graph), seed=0, progress=False)
    except PressoError as exc:
        if "this is a bug in the pass" in str(exc):  # the manager wraps a pass's internal error
            return Outcome("crash", _brief(exc))
        return Outcome("refused", _brief(exc))
    except Exception as exc:
        return Outcome("crash", _brief(exc))
    return None


def _runs_optimized(proto: onnx.ModelProto, feeds) -> bool:
    try:
        session(proto, optimized=True).run(None, feeds)
        return True
    except Exception:
        return False


def judge(model, feeds, expected, exact: bool, original: onnx.ModelProto | None = None) -> Outcome:
    """Export ``model``, check it, run it in a fresh session and compare with ``expected``
    (the outputs of ``original``, which tells onnxruntime's own failures from the pass's)."""
    try:
        proto = model.to_proto()
    except Exception as exc:
        return Outcome("crash", "to_proto: " + _brief(exc))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        return Outcome("invalid", "checker: " + str(exc).strip().splitlines()[0][:300])
    try:
        s = session(proto)
    except Exception as exc:
        return Outcome("invalid", "onnxruntime load: " + str(exc).strip().splitlines()[0][:300])
    names = [o.name for o in s.get_outputs()]
    if names != list(expected):
        return Outcome("mismatch", f"outputs {names} != {list(expected)}")
    try:
        got = dict(zip(names, s.run(names, feeds)))
    except Exception as exc:
        return Outcome("invalid", "onnxruntime run: " + str(exc).strip().splitlines()[0][:300])
    if not exact:  # a lossy pipeline's model is deployed: it must run as onnxruntime optimizes it
        try:
            deployed = session(proto, optimized=True).run(names, feeds)
        except Exception as exc:
            if original is not None and not _runs_optimized(original, feeds):
                return Outcome("ok")  # onnxruntime's optimizers fail the original too: not the pass
            return Outcome("invalid", "onnxruntime (all optimizations): " + str(exc).strip().splitlines()[0][:300])
        if not all(np.isfinite(d[np.isfinite(w)]).all() for d, w in zip(deployed, expected.values())
                   if d.shape == w.shape and d.dtype.kind == "f"):
            return Outcome("nonfinite", "non-finite outputs under onnxruntime's optimizations")
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape:
            return Outcome("mismatch", f"output '{name}' shape {have.shape} != {want.shape}")
        finite = np.isfinite(want)
        if not exact:
            if not np.isfinite(have[finite]).all():
                return Outcome("nonfinite", f"output '{name}' has non-finite values")
            continue
        if not np.array_equal(np.isfinite(have), finite):
            return Outcome("mismatch", f"output '{name}': non-finite values differ")
        err = float(np.abs(have[finite].astype(np.float64) - want[finite]).max(initial=0))
        bound = ATOL + RTOL * float(np.abs(want[finite]).max(initial=0))
        if err > bound:
            return Outcome("mismatch", f"output '{name}': max abs error {err:.3g} > {bound:.3g}")
    return Outcome("ok")


def _brief(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    frames = traceback.extract_tb(exc.__traceback__ if exc.__cause__ is None else exc.__cause__.__traceback__)
    where = next((f"{f.filename.split('presso/')[-1]}:{f.lineno}" for f in reversed(frames)
                  if "/presso/" in f.filename), "")
    return f"{text} [{where}]" if where else text

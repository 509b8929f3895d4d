"""Compile a model for onnxruntime: legalize, fix shapes, pick the int8 form, verify, package."""

from __future__ import annotations

import dataclasses
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...ir import DataSource, Model, random_feeds
from ...ir.analysis.shapes import dynamic_inputs, fix_input_shapes, infer_tensor_infos
from ...ir.errors import BackendError, PressoError
from ...passes.verify import compare_outputs, within_tolerance
from ..artifact import base_manifest
from ..target import Target
from .artifact import OrtArtifact, open_session
from .int8_form import choose_int8_form, is_quantized, scalar_qparams

# onnxruntime runs opsets 7 and newer; older models are upgraded during legalization.
MIN_OPSET = 7


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def compile(self, model: Model, target: Target, *, shapes: Mapping[str, Sequence[int]] | None = None,
                select_form: bool = True, data: Any = None, threads: int | None = None,
                verify: bool = True, form_rounds: int = 15, form_threads: Sequence[int] = (1,),
                compact: bool = True, **qnn_options: Any) -> OrtArtifact:
        """Lower ``model`` (not modified) for ``target``.

        ``shapes`` fixes dynamic inputs; without it they stay dynamic (onnxruntime runs them).
        For a quantized model, ``select_form`` times the exact int8 forms the target lists in
        ``int8_forms`` on this machine and keeps the fastest (on ``data``'s first sample, else
        random inputs; only when this host has the target's ISA). ``verify`` compares the
        compiled model with the input on one sample: a float model must match to float
        tolerance (legalization preserves semantics), a quantized one gets its difference
        recorded. ``threads`` is the artifact's session thread count (``None``: all cores).
        ``compact`` (default) runs the ``compact`` pass (short internal names, no value_info,
        shared duplicates, bias scales computed from the input and weight scales): a smaller
        file that computes exactly the same; graph input and output names stay.

        For the ``qnn-htp`` target (QNN execution provider) the artifact is an EPContext model
        (:mod:`.qnn_artifact`); ``allow_fallback=True`` lets rejected nodes run on the CPU.

        Onnxruntime loads the model once here (that session checks that the target can run
        it, times the given int8 form and verifies the outputs) plus once per other int8
        form timed; the artifact reuses it when the thread counts agree.
        """
        from ...passes import PassManager  # backends may run a target's legalization pipeline

        if "QNNExecutionProvider" in target.ort_providers:  # the Hexagon NPU: an EPContext artifact
            from .qnn_artifact import compile_qnn

            return compile_qnn(model, target, shapes=shapes, data=data, verify=verify, **qnn_options)
        if qnn_options:
            raise BackendError(f"{', '.join(sorted(qnn_options))}: options of the qnn-htp target only")
        original = model
        model = model.copy()
        if shapes:
            fix_input_shapes(model, shapes)
        pipeline = target.legalize
        if model.opset < MIN_OPSET:
            pipeline += ",upgrade-opset{version=13}"
        try:
            report = PassManager.parse(pipeline).run(model, ctx=_context(target))
        except PressoError as exc:
            raise BackendError(f"legalization for target '{target.name}' failed: {exc}",
                               hint="run the pipeline with `presso opt --verify` to find the pass") from exc
        quantized = is_quantized(model)
        # Same numbers, but onnxruntime's int8 fusions only match scalar Q/DQ parameters.
        scalarized = scalar_qparams(model) if quantized else 0
        finish = _compactor(target) if compact else None
        compacted = finish(model) if finish else None

        feed = _sample_feed(model, data)
        form_record = None
        skip = _why_not_measure(target, feed) if quantized and select_form else "not timed"
        # The target must load the compiled model before anything is measured or written. One
        # session serves the load check, the timing of the given form and the verification.
        session_threads = form_threads[0] if not skip else threads
        try:
            session = open_session(model.to_proto(), model, providers=target.ort_providers, optimization="all",
                                   threads=session_threads)
        except BackendError as exc:
            raise _with_original_names(exc, finish.original_names if finish else {}) from exc.__cause__
        if quantized and select_form:
            if skip:
                form_record = {"chosen": "as given", "reason": skip}
            else:
                chosen, form_record = choose_int8_form(model, feed, forms=target.int8_forms, threads=form_threads,
                                                       rounds=form_rounds, providers=target.ort_providers,
                                                       given_session=session, prepare=finish)
                form_record["input_shapes"] = {k: list(v.shape) for k, v in feed.items()}
                model, session = chosen.model, chosen.session  # the given form's session, or the one timed
        verification = (_verify(original, model, feed, exact=not quantized, session=session)
                        if verify and feed is not None else None)

        manifest = base_manifest(
            self.name, target.name,
            device=target.device,
            scheme=dataclasses.asdict(target.scheme),
            quantized=quantized,
            int8_form=form_record,
            scalar_qparams=scalarized,
            legalize={"pipeline": pipeline, "passes": report.as_dict()},
            compact=compacted,
            inputs=tensor_specs(model, model.graph.inputs),
            outputs=tensor_specs(model, model.graph.outputs),
            dynamic_inputs=sorted(dynamic_inputs(model)),
            providers=list(target.ort_providers),
            session={"optimization": "all", "threads": threads},
            verification=verification,
            source=str(original.source_path) if original.source_path else None,
        )
        artifact = OrtArtifact(manifest, model=model, providers=target.ort_providers, threads=threads)
        if session_threads == threads and session is not None:
            artifact.adopt_session(session)  # the same settings the artifact would open it with
        return artifact

    def load(self, folder: Path, manifest: dict[str, Any]) -> OrtArtifact:
        if "qnn" in manifest:
            from .qnn_artifact import QnnArtifact

            return QnnArtifact.load(folder, manifest)
        return OrtArtifact.load(folder, manifest)


_ISA_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def _why_not_measure(target: Target, feed: Mapping[str, np.ndarray] | None) -> str | None:
    """Why the int8 forms cannot be timed here (``None`` when they can)."""
    if not target.int8_forms:
        return f"target '{target.name}' lists no int8 forms to compare"
    if target.device != "cpu":
        return f"timing runs on this machine's CPU, not on the target's {target.device}"
    host = platform.machine().lower()
    host = _ISA_ALIASES.get(host, host)
    if target.isa and host != target.isa:
        return f"this host is {host}, not the target's {target.isa}: compile on the target to time the forms"
    if feed is None:
        return "no sample input to time with: give --data or fix dynamic inputs with --shape"
    return None


def _compactor(target: Target):
    """The ``compact`` step for models this backend writes (returns the pass's stats).

    Per-channel bias scales become ``Mul(input scale, weight scale)``, which every onnxruntime
    execution provider sees folded back into an initializer (basic optimizations run first)."""
    from ...passes.cleanup.compact import Compact

    step = Compact(bias_scales=True)

    def finish(model: Model) -> dict[str, Any]:
        ctx = _context(target)
        stats = step.run(model, ctx).stats
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
        finish.original_names = ctx.shared.get("compact.original_node_names", {})
        return stats

    finish.original_names = {}
    return finish


def _with_original_names(exc: BackendError, names: Mapping[str, str]) -> BackendError:
    """``exc`` with the compacted node names in its location replaced by the user's names."""
    if not exc.where or not names:
        return exc
    where = re.sub(r"'([^']*)'", lambda m: f"'{names.get(m.group(1), m.group(1))}'", exc.where)
    return BackendError(exc.what, where=where, hint=exc.hint)


def _context(target: Target):
    from ...passes import PassContext

    return PassContext(target=target, progress=False)


def tensor_specs(model: Model, tensors) -> list[dict[str, Any]]:
    infos = infer_tensor_infos(model)
    specs = []
    for t in tensors:
        info = infos.get(t.name)
        dtype = t.dtype if t.dtype is not None else (info.dtype if info else None)
        shape = t.shape if t.shape is not None else (info.shape if info else None)
        specs.append({
            "name": t.name,
            "dtype": str(np.dtype(dtype)) if dtype is not None else None,
            "shape": [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None)
                      for d in shape] if shape is not None else None,
        })
    return specs


def _sample_feed(model: Model, data: Any) -> dict[str, np.ndarray] | None:
    """One sample from ``data``, else random inputs; ``None`` when neither can be made."""
    try:
        if data is not None:
            return next(iter(DataSource.open(data, model).feeds(batch=1, limit=1)))
        return random_feeds(model, 1, seed=0)[0]
    except PressoError:
        if data is not None:
            raise
        return None


def _verify(original: Model, compiled: Model, feed: Mapping[str, np.ndarray], *, exact: bool,
            session: Any = None) -> dict[str, Any]:
    """Outputs of the compiled model against the input model on one sample.

    ``exact``: raise :class:`BackendError` unless they match to float tolerance. ``session``:
    an open onnxruntime session of ``compiled`` (optimization ``all``) to run instead of a new one.
    """
    from ...ir import evaluate

    try:
        reference = evaluate(original, feed)
    except PressoError as exc:
        return {"skipped": f"the input model cannot run on the sample: {exc}"}
    if session is None:
        session = open_session(compiled.to_proto(), compiled, optimization="all")
    names = [o.name for o in session.get_outputs()]
    try:
        values = dict(zip(names, session.run(None, dict(feed))))
    except Exception as exc:
        raise BackendError(f"the compiled model fails to run on a sample input: {str(exc).splitlines()[0]}",
                           hint="check --shape values against the model") from exc
    candidate = {k: values[k] for k in reference}
    metrics = compare_outputs([reference], [candidate])
    if exact:
        ok, worst = within_tolerance([reference], [candidate], rtol=1e-3, atol=1e-4)
        if not ok:
            raise BackendError(f"the compiled model computes different outputs from the input model: {worst}",
                               hint="compile with verify=False to inspect it, and report the model")
    return {"samples": 1, **{k: (v if np.isfinite(v) else str(v)) for k, v in metrics.as_dict().items()}}


BACKEND = OnnxRuntimeBackend()
__all__ = ["BACKEND", "OnnxRuntimeBackend", "tensor_specs"]

"""`PassManager`: runs a pipeline with timing, node-count diffs, IR dumps and verification."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..ir import DataSource, Model, evaluate, random_feeds, save
from ..ir.errors import PassError, PressoError
from ..ir.structure import structural_problem
from ..ir.table import format_table
from .base import ErrorMetrics, Pass, PassContext, PassResult
from .pipeline import load_recipe, parse_pipeline
from .verify import check_model, compare_outputs, within_tolerance


@dataclass
class PassRecord:
    """One row of a pipeline report."""

    name: str
    options: dict[str, Any]
    seconds: float
    nodes_before: int
    nodes_after: int
    result: PassResult
    error_vs_original: ErrorMetrics | None = None

    @property
    def changed(self) -> bool:
        return self.result.changed

    def as_dict(self) -> dict[str, Any]:
        return {
            "pass": self.name,
            "options": {k: v for k, v in self.options.items()},
            "seconds": round(self.seconds, 4),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "changed": self.changed,
            "stats": self.result.stats,
            "error": self.result.error.as_dict() if self.result.error else None,
            "error_vs_original": self.error_vs_original.as_dict() if self.error_vs_original else None,
        }


@dataclass
class PipelineReport:
    records: list[PassRecord] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    def as_dict(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.records]

    def table(self) -> str:
        """A readable per-pass table: time, nodes before → after, error, main stats."""
        rows = []
        for r in self.records:
            err = r.error_vs_original or r.result.error
            rows.append([
                r.name,
                f"{r.seconds * 1000:.0f} ms",
                f"{r.nodes_before} → {r.nodes_after}",
                "yes" if r.changed else "no",
                _format_error(err),
                _stats_cell(r.result.stats),
            ])
        return format_table(["pass", "time", "nodes", "changed", "error vs input", "stats"], rows)


def _stats_cell(stats: dict[str, Any], width: int = 60) -> str:
    """The scalar stats as ``key=value`` items, whole items only, ``…`` when some do not fit."""
    items = [f"{k}={_short(v)}" for k, v in stats.items() if not isinstance(v, (dict, list))]
    text = ""
    for index, item in enumerate(items):
        candidate = f"{text}, {item}" if text else item
        if len(candidate) > width and text:
            return text + f", … (+{len(items) - index})"
        text = candidate
    return text


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _format_error(err: ErrorMetrics | None) -> str:
    if err is None:
        return "-"
    if err.max_abs == 0:
        return "exact"
    return f"max {err.max_abs:.2e}, rel {err.max_rel:.1e}, SQNR {err.sqnr_db:.1f} dB"


class PassManager:
    """Runs passes in order on a model, in place.

    ``verify=True`` checks every pass: ``onnx.checker`` on the result, then outputs on sample
    inputs (from the context's data, else random inputs) against the model before the pass.
    A pass that ``preserves_semantics`` must match to ``atol + rtol · max|ref|``; a lossy
    pass gets its error measured and recorded. ``dump_dir`` saves the IR after each pass.
    After a pass that reports a change, the manager drops cached analyses, removes nodes and
    initializers that no output needs, and sorts the nodes topologically, so passes may leave
    dangling nodes behind and append new nodes anywhere. Then it checks the graph's structure
    (:mod:`presso.ir.structure`: every input defined before use, one producer per tensor, in
    If/Loop/Scan bodies too) and raises a :class:`PassError` naming the pass and the node when
    the pass broke it.
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        verify: bool = False,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        dump_dir: str | Path | None = None,
        verify_samples: int = 2,
        on_pass_end: Callable[[PassRecord], None] | None = None,
    ):
        self.passes = list(passes)
        self.verify = verify
        self.rtol = rtol
        self.atol = atol
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.verify_samples = verify_samples
        self.on_pass_end = on_pass_end

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> PassManager:
        """Build a manager from pipeline text, e.g. ``"fold-constants,fold-batchnorm"``."""
        return cls(parse_pipeline(text), **kwargs)

    @classmethod
    def from_recipe(cls, path: str | Path, **kwargs: Any) -> PassManager:
        return cls(load_recipe(path), **kwargs)

    def run(self, model: Model, *, data: Any = None, ctx: PassContext | None = None,
            **ctx_fields: Any) -> PipelineReport:
        """Run every pass on ``model`` (in place) and return the per-pass report."""
        ctx = ctx or PassContext(**ctx_fields)
        if data is not None:
            ctx.data = data
        if isinstance(ctx.data, (str, Path)) or (ctx.data is not None and not isinstance(ctx.data, DataSource)):
            ctx.data = DataSource.open(ctx.data, model)
        if ctx.reference is None:
            ctx.reference = model.copy()
        report = PipelineReport()
        original_outputs = previous_outputs = None
        if self.verify:
            ctx.sample_feeds = ctx.sample_feeds or self._sample_feeds(model, ctx)
            original_outputs = previous_outputs = self._outputs(model, ctx.sample_feeds, "the input model")
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        for index, p in enumerate(self.passes, 1):
            self._check_needs(p, ctx)
            before = len(model.graph.nodes)
            start = time.perf_counter()
            try:
                result = p.run(model, ctx)
            except PressoError:
                raise
            except Exception as exc:
                raise PassError(f"pass '{p.name}' failed: {type(exc).__name__}: {exc}",
                                hint="this is a bug in the pass; please report it with the model") from exc
            seconds = time.perf_counter() - start
            if result.changed:
                model.invalidate()
                model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
                self._check_structure(p, model)
            model.annotations.history.append({"pass": p.name, "options": _jsonable(p.option_values())})
            record = PassRecord(p.name, p.option_values(), seconds, before, len(model.graph.nodes), result)
            if self.verify:
                previous_outputs = self._verify(p, model, ctx, result, previous_outputs)
                record.error_vs_original = compare_outputs(original_outputs, previous_outputs)
            if self.dump_dir:
                save(model, self.dump_dir / f"{index:02d}-{p.name}.onnx")
            report.records.append(record)
            if self.on_pass_end:
                self.on_pass_end(record)
        return report

    @staticmethod
    def _check_structure(p: Pass, model: Model) -> None:
        problem = structural_problem(model.graph)
        if problem:
            what, where = problem
            raise PassError(f"pass '{p.name}' broke the graph: {what}", where=where,
                            hint="this is a bug in the pass; rerun the pipeline without it and report it with the model")

    @staticmethod
    def _check_needs(p: Pass, ctx: PassContext) -> None:
        if p.needs_data and ctx.data is None:
            raise PassError(f"pass '{p.name}' needs data", hint="give calibration data (--data FILE.npz)")

    def _sample_feeds(self, model: Model, ctx: PassContext):
        if ctx.data is not None:
            batch = ctx.data.model_batch or 1
            return list(ctx.data.feeds(batch=batch, limit=self.verify_samples * batch))
        return random_feeds(model, self.verify_samples, seed=ctx.seed)

    def _outputs(self, model: Model, feeds, what: str):
        try:
            return [evaluate(model, feed) for feed in feeds]
        except PressoError as exc:
            raise PassError(f"cannot run {what} for verification: {exc}",
                            hint="give sample data (--data) or fix dynamic input shapes (--shape)") from exc

    def _verify(self, p: Pass, model: Model, ctx: PassContext, result: PassResult, previous):
        try:
            check_model(model)
        except onnx.checker.ValidationError as exc:
            raise PassError(f"pass '{p.name}' produced a model that fails onnx.checker: "
                            f"{str(exc).strip().splitlines()[0]}") from exc
        current = self._outputs(model, ctx.sample_feeds, f"the model after '{p.name}'")
        result.error = compare_outputs(previous, current)
        if p.preserves_semantics:
            ok, worst = within_tolerance(previous, current, rtol=self.rtol, atol=self.atol)
            if not ok:
                raise PassError(f"pass '{p.name}' should preserve semantics but changed the outputs: {worst}",
                                hint="this is a bug in the pass; rerun without it and report the model")
        return current


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    scalar = (int, float, str, bool, type(None))

    def plain(value: Any) -> Any:
        if isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value)):
            return value
        if isinstance(value, list):  # e.g. in-memory validation feeds: arrays do not go into the model
            return f"<list of {len(value)} items>"
        return str(value)

    return {k: plain(v) for k, v in options.items()}

"""`bench`: latency, size and output agreement of several models, measured side by side.

The first model is the baseline. Every model runs on the same inputs; latency is timed with
runs *interleaved* (one run of each model per round, in rotating order) so that a noisy,
shared CPU slows all models alike instead of whichever happened to run during the noise. It is
reported at each requested intra-op thread count (``1`` and ``"all"`` cores by default) as the
median and the 90th percentile. Agreement with the baseline's outputs is measured over every
sample: max abs difference and cosine similarity over all outputs, and top-1 agreement for
outputs that are probability distributions over their last axis (e.g. a softmax).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import DataSource, Model, check_finite, create_session, load, random_feeds
from ..ir.analysis.shapes import dynamic_inputs, fix_input_shapes
from ..ir.errors import PressoError
from ..ir.table import format_table, human_bytes
from ..passes.verify import compare_pairs, top1_agreement

Threads = int | str  # a count, or "all"


@dataclass
class BenchRow:
    name: str
    size_bytes: int
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # "threads=1" -> median/p90 ms
    agreement: dict[str, float | None] = field(default_factory=dict)  # max_abs, cosine, top1
    board: dict[str, Any] | None = None  # a microcontroller artifact: flash, RAM, instructions (mcu/report.py)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": self.size_bytes, "latency": self.latency,
                "agreement": self.agreement, **({"board": self.board} if self.board else {})}


@dataclass
class BenchReport:
    rows: list[BenchRow]
    threads: list[str]
    samples: int
    runs: int
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> BenchRow:
        return self.rows[0]

    def size_ratio(self, row: BenchRow) -> float:
        return row.size_bytes / self.baseline.size_bytes if self.baseline.size_bytes else float("nan")

    def latency_ratio(self, row: BenchRow, threads: str) -> float:
        base = self.baseline.latency[threads]["median_ms"]
        return row.latency[threads]["median_ms"] / base if base > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            item = row.as_dict()
            item["size_ratio"] = round(self.size_ratio(row), 4)
            item["latency_ratio"] = {k: round(self.latency_ratio(row, k), 4) for k in self.threads}
            rows.append(item)
        return {"baseline": self.baseline.name, "threads": self.threads, "samples": self.samples,
                "runs": self.runs, "models": rows, "notes": self.notes}

    def table(self) -> str:
        headers = ["model", "size", "size ×"]
        for key in self.threads:
            headers += [f"{key} median", "p90", "×"]
        headers += ["max abs", "cosine", "top-1"]
        rows = []
        for row in self.rows:
            cells = [row.name, human_bytes(row.size_bytes), f"{self.size_ratio(row):.2f}"]
            for key in self.threads:
                lat = row.latency[key]
                cells += [f"{lat['median_ms']:.2f} ms", f"{lat['p90_ms']:.2f} ms", f"{self.latency_ratio(row, key):.2f}"]
            agree = row.agreement
            top1 = agree.get("top1")
            cells += [f"{agree['max_abs']:.3g}", f"{agree['cosine']:.5f}",
                      "-" if top1 is None else f"{100 * top1:.1f}%"]
            rows.append(cells)
        align = "lrr" + "rrr" * len(self.threads) + "rrr"
        text = format_table(headers, rows, align=align)
        footer = f"{self.samples} sample(s) for agreement, {self.runs} interleaved runs per model for latency; " \
                 f"ratios against '{self.baseline.name}'"
        boards = []
        for row in self.rows:
            if row.board:
                from .mcu.report import board_bench_lines

                boards += board_bench_lines(row.name, row.board)
        return "\n".join([text, footer, *boards, *(f"note: {n}" for n in self.notes)])


# ---- the models being compared ---------------------------------------------------------------
@dataclass
class _Subject:
    name: str
    model: Model | None  # ONNX models run through onnxruntime sessions at any thread count
    artifact: Any = None  # other artifacts run through Artifact.run (thread count is theirs)
    size_bytes: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    board_runs: list | None = None  # a microcontroller artifact's per-run records (instructions, stack)

    def runner(self, threads: int | None):
        if self.board_runs is not None:
            def run_on_board(feed):
                values = self.artifact.run(feed)
                self.board_runs.extend(self.artifact.last_runs)
                return values
            return run_on_board
        if self.model is not None:
            session = create_session(self.model.to_proto(), optimization="all", threads=threads,
                                     providers=self.providers)
            names = [o.name for o in session.get_outputs()]
            return lambda feed: dict(zip(names, session.run(None, dict(feed))))
        return self.artifact.run


def _subject(item: Any, index: int, shapes: Mapping[str, Sequence[int]] | None) -> _Subject:
    from . import Artifact, load_artifact

    if isinstance(item, Model):
        subject = _Subject(item.graph.name or f"model{index}", item.copy() if shapes else item,
                           size_bytes=item.byte_size())
    elif isinstance(item, Artifact):
        subject = _Subject(f"artifact{index}", getattr(item, "model", None), artifact=item)
    else:
        path = Path(item)
        if path.is_dir():
            artifact = load_artifact(path)
            if artifact.backend == "onnxruntime" and "qnn" in artifact.manifest:
                # an EPContext model runs on the QNN HTP only (Artifact.run, fallback off)
                model_file = path / artifact.manifest.get("files", {}).get("model", "model.onnx")
                subject = _Subject(path.name, None, artifact=artifact, size_bytes=_file_size(model_file))
            elif artifact.backend == "onnxruntime":
                model_file = path / artifact.manifest.get("files", {}).get("model", "model.onnx")
                subject = _Subject(path.name, load(model_file), artifact=artifact, size_bytes=_file_size(model_file))
            elif artifact.manifest.get("device") == "mcu":  # size: the model's flash on the board
                subject = _Subject(path.name, None, artifact=artifact,
                                   size_bytes=artifact.manifest.get("memory", {}).get("flash_bytes", 0), board_runs=[])
            else:  # a compiled library: what ships is every file of the folder but the manifest
                deployed = sum(f.stat().st_size for f in path.rglob("*")
                               if f.is_file() and f.name != "manifest.json" and "tuning" not in f.parts)
                subject = _Subject(path.name, None, artifact=artifact, size_bytes=deployed)
        else:
            subject = _Subject(path.name, load(path), size_bytes=_file_size(path))
    if shapes and subject.model is not None:
        fix_input_shapes(subject.model, shapes)
    if not subject.size_bytes and subject.model is not None:
        subject.size_bytes = subject.model.byte_size()
    return subject


def _file_size(path: Path) -> int:
    size = path.stat().st_size if path.is_file() else 0
    data = path.with_name(path.name + ".data")
    return size + (data.stat().st_size if data.is_file() else 0)


def _thread_count(value: Threads) -> int:
    if value == "all":
        return os.cpu_count() or 1
    count = int(value)
    if count < 1:
        raise PressoError(f"thread count must be ≥ 1 or 'all', not {value!r}")
    return count


# ---- measuring ----------------------------------------------------------------------------------
def bench(models: Sequence[Any], data: Any = None, *, threads: Sequence[Threads] = (1, "all"), runs: int = 20,
          warmup: int = 3, samples: int = 32, shapes: Mapping[str, Sequence[int]] | None = None,
          names: Sequence[str] | None = None, seed: int = 0, target: Any = None) -> BenchReport:
    """Compare ``models`` (paths to .onnx files or artifact folders, ``Model``s, artifacts).

    ``data`` (a .npz file, a folder, an iterable of feeds) gives up to ``samples`` inputs for
    agreement; its first sample is the latency input. Without data, random inputs are made
    from the first model's input specs (noted in the report). ``shapes`` fixes dynamic inputs.
    ``target`` (a name or Target) picks the onnxruntime execution providers (default: CPU).
    """
    if not models:
        raise PressoError("bench needs at least one model")
    if runs < 1 or samples < 1:
        raise PressoError("runs and samples must be at least 1")
    subjects = [_subject(m, i, shapes) for i, m in enumerate(models)]
    if target is not None:
        from .target import get_target

        providers = tuple(get_target(target).ort_providers)
        for subject in subjects:
            subject.providers = providers
    if names:
        if len(names) != len(subjects):
            raise PressoError(f"{len(names)} names given for {len(subjects)} models")
        for subject, name in zip(subjects, names):
            subject.name = name
    _dedupe_names(subjects)
    notes: list[str] = []
    feeds = _feeds(subjects[0], data, samples, seed, notes)
    if not feeds:
        raise PressoError("the data holds no samples", hint="give at least one sample per input")
    labels = [str(t) for t in threads]
    rows = [BenchRow(s.name, s.size_bytes) for s in subjects]
    for label, value in zip(labels, threads):
        count = _thread_count(value)
        key = f"threads={label}" if label == "all" else f"threads={count}"
        for row, stats in zip(rows, _latencies(subjects, feeds[0], count, runs, warmup)):
            row.latency[key] = stats
    if any(s.model is None for s in subjects):
        notes.append("artifacts of non-onnxruntime backends run with their own thread settings")
    reference: list[dict[str, np.ndarray]] | None = None
    for subject, row in zip(subjects, rows):
        if subject.board_runs is not None:
            subject.board_runs.clear()  # instructions and stack of the agreement samples only
        outputs = _outputs(subject, feeds)
        if reference is None:
            reference = outputs
        row.agreement = agreement(reference, outputs)
        if subject.board_runs is not None:
            from .mcu.report import board_bench_facts

            row.board = board_bench_facts(subject.artifact, subject.board_runs, reference, outputs)
    if any(s.board_runs is not None for s in subjects):
        notes.append("microcontroller artifacts run in QEMU: their latency is the emulator's on this host, "
                     "not the board's; size is the model's flash; see the instruction counts")
    report = BenchReport(rows, [k for k in rows[0].latency], len(feeds), runs, notes)
    return report


def _dedupe_names(subjects: list[_Subject]) -> None:
    seen: dict[str, int] = {}
    for s in subjects:
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}#{seen[s.name]}"
        else:
            seen[s.name] = 1


def _feeds(subject: _Subject, data: Any, samples: int, seed: int, notes: list[str]) -> list[dict[str, np.ndarray]]:
    if subject.model is None:
        raise PressoError("the first model must be an ONNX model or an onnxruntime artifact",
                          hint="put the float .onnx model first: it is the baseline")
    if data is not None:
        feeds = list(DataSource.open(data, subject.model).feeds(batch=1, limit=samples))
        for i, feed in enumerate(feeds):
            check_finite(feed, where=f"sample {i} of the benchmark data")
        return feeds
    dynamic = dynamic_inputs(subject.model)
    note = "no --data given: random inputs from the first model's input specs"
    if dynamic:
        note += f" (dynamic dims of {sorted(dynamic)} set to 1 for the batch axis, 32 elsewhere; use --shape)"
    notes.append(note)
    return random_feeds(subject.model, min(samples, 4), seed=seed)


def _latencies(subjects: list[_Subject], feed: Mapping[str, np.ndarray], threads: int, runs: int,
               warmup: int) -> list[dict[str, float]]:
    runners = [s.runner(threads) for s in subjects]
    for subject, runner in zip(subjects, runners):
        try:
            for _ in range(warmup):
                runner(feed)
        except PressoError:
            raise
        except Exception as exc:
            raise PressoError(f"model '{subject.name}' fails to run on the benchmark input: "
                              f"{str(exc).strip().splitlines()[0]}",
                              hint="check that every model takes the same inputs (use --shape for dynamic ones)") from exc
    times: list[list[float]] = [[] for _ in subjects]
    order = list(range(len(subjects)))
    for r in range(runs):
        for i in order[r % len(order):] + order[:r % len(order)]:
            start = time.perf_counter()
            runners[i](feed)
            times[i].append((time.perf_counter() - start) * 1000)
    return [{"median_ms": round(float(np.median(t)), 4), "p90_ms": round(float(np.percentile(t, 90)), 4)}
            for t in times]


def _outputs(subject: _Subject, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    runner = subject.runner(None)
    try:
        return [runner(feed) for feed in feeds]
    except PressoError:
        raise
    except Exception as exc:
        raise PressoError(f"model '{subject.name}' fails to run: {str(exc).strip().splitlines()[0]}") from exc


def agreement(reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]]) -> dict[str, float | None]:
    """Max abs difference, cosine similarity and top-1 agreement of ``candidate`` outputs.

    The metrics are verification's (:mod:`presso.passes.verify`) over every output of every
    sample. Outputs are matched by name, or by position when the names differ. Top-1 is
    measured on the outputs that the reference makes distributions (non-negative, summing to 1
    over the last axis of size ≥ 2), and is ``None`` when there are none.
    """
    pairs = [(name, r, c) for ref, cand in zip(reference, candidate, strict=True)
             for name, r, c in _pair_outputs(ref, cand)]
    try:
        error = compare_pairs(pairs)
    except ValueError as exc:
        raise PressoError(f"the models' outputs differ: {exc}",
                          hint="compare models that compute the same outputs") from None
    return {"max_abs": error.max_abs, "cosine": error.cosine, "top1": top1_agreement(pairs)}


def _pair_outputs(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, reference, candidate) per reference output: by name, else by position."""
    if set(ref) <= set(cand):
        return [(k, ref[k], cand[k]) for k in ref]
    if len(ref) != len(cand):
        raise PressoError(f"models have different outputs: {sorted(ref)} vs {sorted(cand)}")
    return [(k, r, c) for (k, r), c in zip(ref.items(), cand.values())]

"""One candidate, in a process of its own: build (pipeline → compile → outputs on EVAL) and time.

``python -m presso.search.candidate build JOB.json`` runs the candidate's pipeline on the
model with the calibration data (as ``presso opt MODEL -p PIPELINE --data CALIB --target T``
does), compiles it for the target with the chosen backend, saves the artifact, checks that
it runs and gives finite outputs of the reference's shapes, and writes its outputs on the
evaluation data and its deployed size. ``... time ARTIFACT FEED.npz RUNS WARMUP`` prints the
median latency of the artifact on one input with one thread.

A separate process per candidate is what lets the search survive a candidate that crashes
onnxruntime or TVM, exhausts memory or runs past its time limit: the parent kills it and
records the error. Compressing holds the machine lock shared (:mod:`.timing`).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def build(job: dict[str, Any]) -> dict[str, Any]:
    """Run the job's pipeline, compile, save the artifact and its outputs; returns the summary."""
    from .. import compile as compile_model
    from ..ir import DataSource, load
    from ..ir.analysis.shapes import dynamic_inputs
    from ..passes import PassContext, PassManager
    from ..backends.target import get_target
    from .timing import MachineLock

    out = Path(job["out"])
    target = get_target(job["target"])
    with MachineLock(job.get("lock_dir")).shared():
        model = load(job["model"])
        manager = PassManager.parse(job["pipeline"])
        report = manager.run(model, data=job["calib"], ctx=PassContext(seed=job["seed"], progress=False, target=target))
        feeds = list(DataSource.open(job["eval"], model).feeds(batch=1))
        options: dict[str, Any] = {}
        if job["backend"] == "onnxruntime":
            options = {"threads": 1, "data": job["eval"]}
        elif dynamic_inputs(model):  # TVM builds for static shapes: the evaluation inputs' own
            options = {"shapes": {k: list(v.shape) for k, v in feeds[0].items()}, "progress": False}
        else:
            options = {"progress": False}
        artifact = compile_model(model, target=target, backend=job["backend"], **options)
        folder = artifact.save(out / "artifact")
        outputs = [artifact.run(feed) for feed in feeds]
    names = sorted(outputs[0]) if outputs else []
    for i, sample in enumerate(outputs):
        for name, value in sample.items():
            if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
                raise ValueError(f"invalid model: output '{name}' of evaluation sample {i} is not finite")
    np.savez(out / "outputs.npz", **{f"{i}/{name}": np.asarray(sample[name])
                                     for i, sample in enumerate(outputs) for name in names})
    return {"artifact": str(folder), "size_bytes": deployed_size(Path(folder)), "samples": len(outputs),
            "passes": [{"pass": r.name, "seconds": round(r.seconds, 3), "stats": _plain(r.result.stats)}
                       for r in report.records]}


def deployed_size(folder: Path) -> int:
    """Bytes that ship: an onnxruntime artifact's model file (and its external data), not the
    optimized copy it caches; every file of a compiled library's folder but the manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("backend") == "onnxruntime":
        model = folder / manifest.get("files", {}).get("model", "model.onnx")
        data = model.with_name(model.name + ".data")
        return model.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    return sum(f.stat().st_size for f in folder.rglob("*")
               if f.is_file() and f.name != "manifest.json" and "tuning" not in f.parts)


def read_outputs(path: str | os.PathLike) -> list[dict[str, np.ndarray]]:
    """The per-sample output dicts :func:`build` saved."""
    with np.load(path) as data:
        samples: dict[int, dict[str, np.ndarray]] = {}
        for key in data.files:
            index, name = key.split("/", 1)
            samples.setdefault(int(index), {})[name] = data[key]
    return [samples[i] for i in sorted(samples)]


def time_artifact(folder: str, feed_path: str, runs: int, warmup: int) -> dict[str, float]:
    """Median, p90 and minimum latency (ms) of the artifact on the first sample of ``feed_path``, one thread."""
    from ..backends import load_artifact

    artifact = load_artifact(folder)
    if hasattr(artifact, "with_threads"):
        artifact = artifact.with_threads(1)
    with np.load(feed_path) as data:
        feed = {name: data[name] for name in data.files}
    stats = artifact.benchmark(feed, warmup=warmup, runs=runs)
    # the minimum too: on a machine that other work shares, it is the run least disturbed by it
    return {"latency_ms": round(stats.median_ms, 4), "latency_p90_ms": round(stats.p90_ms, 4),
            "latency_min_ms": round(stats.min_ms, 4)}


def _plain(value: Any) -> Any:
    """JSON-safe copy of pass statistics (numbers, strings, lists, dicts)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    job: dict[str, Any] = {}
    try:
        if command == "build":
            job = json.loads(Path(argv[1]).read_text())
            result = build(job)
            (Path(job["out"]) / "result.json").write_text(json.dumps(result))
        elif command == "time":
            print(json.dumps(time_artifact(argv[1], argv[2], int(argv[3]), int(argv[4]))))
        else:
            print("usage: python -m presso.search.candidate build JOB.json | time ARTIFACT FEED.npz RUNS WARMUP",
                  file=sys.stderr)
            return 2
    except Exception as exc:  # the parent records the message as the candidate's error
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if command == "build" and job:
            (Path(job["out"]) / "error.txt").write_text(message)
        print(message, file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

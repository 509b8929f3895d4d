"""Accuracy, size and latency of int8 with mixed precision (issue 13's targets), side by side.

Per model (magika standard_v3_3, PP-OCRv4 det, PP-OCR mobile cls; prepared as
benchmarks/quantization.py prepares them) and per variant:

- ``int8``: ``presso.quantize`` defaults (auto calibration, bias correction);
- ``mixed``: the same plus ``max_drop`` with the model's metric (top1 for magika and cls,
  iou for det), verified on held-out validation samples;
- ``mixed+latency``: the same plus ``latency="measure"`` (int8 only where its kernel is faster);

it prints the metric against float on evaluation samples that neither calibration nor
validation saw, the saved size relative to float, and the latency relative to float at 1
thread (onnxruntime, all optimizations, median of repeated runs, every model of one row
timed in the same process one after the other, interleaved).

    python benchmarks/accuracy.py --models magika,det,cls
    python benchmarks/accuracy.py --models cls --seeds 0,1,2   # cls over several calibration sets
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

METRIC = {"magika": "top1", "det": "iou", "cls": "top1"}


def data(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration, validation, evaluation) inputs; the three sets are disjoint."""
    from presso.tools import zoo

    if name == "magika":
        calib, _ = zoo.magika_dataset(200, seed=0, skip=0)
        val, _ = zoo.magika_dataset(200, seed=0, skip=200)
        evals, _ = zoo.magika_dataset(600, seed=1)
    elif name == "det":
        calib = zoo.ppocr_det_inputs(16, size=320, seed=seed * 100)
        val = zoo.ppocr_det_inputs(8, size=320, seed=500)
        evals = zoo.ppocr_det_inputs(16, size=320, seed=1000)
    else:
        calib, _ = zoo.ppocr_cls_inputs(128, seed=seed)
        val, _ = zoo.ppocr_cls_inputs(200, seed=3000)
        evals, _ = zoo.ppocr_cls_inputs(400, seed=5000)
    return calib, val, evals


def latency_ms(paths: dict[str, Path], feed: dict, rounds: int = 5, per_round: int = 20) -> dict[str, float]:
    """Median per-run milliseconds of each model at 1 thread, rounds interleaved across models."""
    from presso.ir import create_session

    sessions = {k: create_session(str(p), optimization="all", threads=1) for k, p in paths.items()}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(None, feed)
                times[key].append(time.perf_counter() - start)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def run(name: str, seed: int, variants: list[str], max_drop: float, work: Path) -> list[dict]:
    import presso
    from presso.passes.quant.metrics import get_metric, model_outputs
    from quantization import prepare

    spec = prepare(name, False, work)
    model = presso.load(spec["float"])
    input_name = spec["input"]
    calib, val, evals = data(name, seed)
    feeds = lambda values: [{input_name: values[i:i + 1]} for i in range(len(values))]  # noqa: E731
    metric = get_metric(METRIC[name])
    reference = model_outputs(model, feeds(evals))
    paths = {"float": spec["float"]}
    rows = []
    for variant in variants:
        options = {}
        if variant.startswith("mixed"):
            options = {"max_drop": max_drop, "metric": metric.name, "validation": feeds(val)}
        if variant.endswith("latency"):
            options["latency"] = "measure"
        start = time.perf_counter()
        quantized, report = presso.quantize(model, feeds(calib), progress=False, report=True, **options)
        seconds = time.perf_counter() - start
        path = work / f"{name}_{seed}_{variant}.onnx"
        presso.save(quantized, path)
        paths[variant] = path
        score = metric(reference, model_outputs(quantized, feeds(evals)))
        stats = next((r.result.stats for r in report.records if r.name == "mixed-precision"), {})
        rows.append({"model": name, "seed": seed, "variant": variant, "metric": metric.name, "score": score,
                     "size": os.path.getsize(path) / os.path.getsize(spec["float"]), "seconds": seconds,
                     "levels": {k: stats[k] for k in ("int8", "a16w8", "float") if k in stats}})
    lat = latency_ms(paths, {input_name: evals[:1]})
    for row in rows:
        row["latency"] = lat[row["variant"]] / lat["float"]
        row["float_ms"] = lat["float"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="magika,det,cls")
    parser.add_argument("--variants", default="int8,mixed,mixed+latency")
    parser.add_argument("--seeds", default="0", help="calibration sets (det and cls)")
    parser.add_argument("--max-drop", type=float, default=0.01)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="presso-accuracy-"))
    all_rows = []
    for name in args.models.split(","):
        for seed in ([0] if name == "magika" else [int(s) for s in args.seeds.split(",")]):
            for row in run(name, seed, args.variants.split(","), args.max_drop, work):
                all_rows.append(row)
                print(f"{row['model']:6s} seed {row['seed']} {row['variant']:14s} {row['metric']} {row['score']:.4f}  "
                      f"size {row['size']:.3f}x  latency {row['latency']:.2f}x (float {row['float_ms']:.2f} ms)  "
                      f"{row['levels']}  {row['seconds']:.0f} s", flush=True)
    for name in dict.fromkeys(r["model"] for r in all_rows):
        for variant in args.variants.split(","):
            scores = [r["score"] for r in all_rows if r["model"] == name and r["variant"] == variant]
            if len(scores) > 1:
                print(f"{name} {variant}: mean {np.mean(scores):.4f} over {len(scores)} calibration sets "
                      f"(min {np.min(scores):.4f})")


if __name__ == "__main__":
    main()

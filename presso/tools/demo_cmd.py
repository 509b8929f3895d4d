"""`presso demo`: Presso's main job on a built-in default, end to end, in one command.

It takes magika's real content-type model (shipped in the magika wheel), calibrates it on
real files from this machine, quantizes it to int8, and prints what changed: the per-pass
report, then size, parameters, FLOPs, latency and agreement with the float model on files it
did not calibrate on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..api import quantize
from ..backends.benchmark import bench
from ..ir import compute_cost, evaluate, fix_input_shapes, load, save
from ..ir.table import format_table, human_bytes, human_count
from . import zoo
from .common import add_examples

EXAMPLES = ("presso demo", "presso demo --method minmax --calibration-files 50 --eval-files 100 -o demo-minmax")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="quantize a real model (magika's) on real files and show before/after",
        description="Quantize magika's standard_v3_3 model to int8 with calibration on real files "
                    "from this machine, then compare it with the float model.",
    )
    p.add_argument("--method", default="percentile",
                   choices=["auto", "minmax", "mean-minmax", "percentile", "entropy", "mse"],
                   help="calibration method (default percentile)")
    p.add_argument("--calibration-files", type=int, default=200, help="real files used for calibration")
    p.add_argument("--eval-files", type=int, default=300, help="other real files used for evaluation")
    p.add_argument("-o", "--output-dir", default="presso-demo", help="where to write the models")
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = zoo.magika_model()
    print(f"Presso demo — magika standard_v3_3 ({source})")
    calib, calib_files = zoo.magika_dataset(args.calibration_files)
    evaluation, eval_files = zoo.magika_dataset(args.eval_files, skip=len(calib_files))
    print(f"calibration: {len(calib_files)} real files; evaluation: {len(eval_files)} other real files\n")

    model = load(source)
    float_path = out / "magika-float.onnx"
    save(model, float_path)
    start = time.perf_counter()
    quantized, report = quantize(model, {"bytes": calib}, target="cpu-x86", method=args.method, report=True)
    seconds = time.perf_counter() - start
    int8_path = out / "magika-int8.onnx"
    save(quantized, int8_path)
    print(report.table())
    print(f"\nquantized in {seconds:.1f} s\n")

    feeds = [{"bytes": evaluation[i:i + 1]} for i in range(len(evaluation))]
    measured = bench([float_path, int8_path], data=feeds, threads=(1,), runs=30,
                     samples=len(feeds), names=["float", "int8"])
    float_cost, int8_cost = _cost_at_batch_1(model), _cost_at_batch_1(quantized)
    labels = zoo.magika_labels()
    float_top1 = _predictions(model, evaluation)
    int8_top1 = _predictions(quantized, evaluation)
    agree = float(np.mean(float_top1 == int8_top1))
    key = measured.threads[0]
    base, quant = measured.rows
    rows = [
        ["file size", human_bytes(base.size_bytes), human_bytes(quant.size_bytes),
         f"{quant.size_bytes / base.size_bytes:.2f}×"],
        ["weights", human_bytes(float_cost.param_bytes), human_bytes(int8_cost.param_bytes),
         f"{int8_cost.param_bytes / max(float_cost.param_bytes, 1):.2f}×"],
        ["parameters", human_count(float_cost.params), human_count(int8_cost.params), ""],
        ["FLOPs per file", human_count(float_cost.flops), human_count(int8_cost.flops), ""],
        [f"latency ({key}, median)", f"{base.latency[key]['median_ms']:.2f} ms",
         f"{quant.latency[key]['median_ms']:.2f} ms", f"{measured.latency_ratio(quant, key):.2f}×"],
        ["same label as float", "100%", f"{agree:.1%}", f"{len(eval_files)} files"],
    ]
    print(format_table(["", "float", "int8", "ratio"], rows, align="lrrr"))
    changed = [(f.name, labels[a], labels[b]) for f, a, b in zip(eval_files, float_top1, int8_top1) if a != b]
    if changed:
        print("\nfiles whose label changed: " + ", ".join(f"{n} ({a}→{b})" for n, a, b in changed[:5])
              + (" …" if len(changed) > 5 else ""))
    print(f"\nwrote {float_path} and {int8_path}")
    print(f"next: presso inspect {int8_path}   |   presso bench {float_path} {int8_path}")
    return 0


def _cost_at_batch_1(model):
    sized = model.copy()
    fix_input_shapes(sized, {"bytes": [1, 2048]})
    return compute_cost(sized)


def _predictions(model, features: np.ndarray) -> np.ndarray:
    output = model.output_names()[0]
    return np.concatenate([evaluate(model, {"bytes": features[i:i + 64]})[output].argmax(-1)
                           for i in range(0, len(features), 64)])

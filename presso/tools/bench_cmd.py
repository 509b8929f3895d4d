"""`presso bench`: latency, size and output agreement of models, side by side."""

from __future__ import annotations

import argparse
import json
import sys

from ..backends.benchmark import bench
from ..ir.errors import PressoError
from .common import add_examples, add_shape_option, parse_shapes

EXAMPLES = (
    "presso bench zoo/magika.onnx --data zoo/magika-eval.npz",
    "presso bench zoo/ppocr-cls.onnx --data zoo/cls-eval.npz --shape x=1,3,48,192 --threads 1 --runs 10",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="compare models: latency (median, p90), size, and agreement with the first model",
        description="Benchmark A.onnx B.onnx ... (or artifact folders) on the same inputs with onnxruntime. "
                    "The first model is the baseline for ratios and output agreement, e.g. "
                    "presso bench float.onnx int8.onnx build/int8 --data eval.npz.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files or artifact folders; the first is the baseline")
    p.add_argument("--data", metavar="PATH", help="evaluation inputs: a .npz file or a folder of .npy/.npz files "
                                                   "(default: random inputs from the first model's specs)")
    p.add_argument("--threads", default="1,all",
                   help="comma-separated intra-op thread counts to time, 'all' = every core (default 1,all)")
    p.add_argument("--runs", type=int, default=20, help="interleaved timed runs per model and thread count (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per model before timing (default 3)")
    p.add_argument("--samples", type=int, default=32, help="samples used for output agreement (default 32)")
    p.add_argument("--target", default=None,
                   help="target profile whose onnxruntime execution providers run the models (default: CPU)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_shape_option(p)
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    threads = parse_threads(args.threads)
    report = bench(args.models, args.data, threads=threads, runs=args.runs, warmup=args.warmup,
                   samples=args.samples, shapes=parse_shapes(args.shape) or None, target=args.target)
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        print()
    else:
        print(report.table())
    return 0


def parse_threads(text: str) -> list[int | str]:
    values: list[int | str] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item == "all":
            values.append("all")
            continue
        try:
            count = int(item)
        except ValueError:
            raise PressoError(f"--threads '{text}': '{item}' is neither a number nor 'all'") from None
        if count < 1:
            raise PressoError(f"--threads '{text}': thread counts must be at least 1")
        values.append(count)
    if not values:
        raise PressoError("--threads needs at least one value, e.g. 1,all")
    return values

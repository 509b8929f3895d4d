"""`presso search`: find the best compression recipes for a model on a target (Ray Tune + Optuna)."""

from __future__ import annotations

import argparse
import json
import sys

from ..ir.errors import PressoError
from .common import add_examples, load_model

METRICS = ("top1", "iou", "cosine", "nn", "mse", "sqnr")

EXAMPLES = (
    "presso search zoo/ppocr-cls.onnx --list-space",
    "presso search zoo/ppocr-cls.onnx --target cpu-x86 --data zoo/cls-calib.npz --eval zoo/cls-eval.npz "
    "--metric top1 --budget 4 -o search-cls",
    "presso search zoo/ppocr-cls.onnx --target cpu-x86 --data zoo/cls-calib.npz --eval zoo/cls-eval.npz "
    "--metric top1 --budget 5 -o search-cls --resume",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search compression recipes (quantization, pruning + distillation, sparsity, backend) for the "
             "best accuracy / latency / size trade-offs, on Ray",
        description="Search compression recipes for MODEL on a target and write the Pareto front of task metric "
                    "drop, latency and artifact size to DIR: front.txt, front.png, front.html, results.json (every "
                    "candidate with the pipeline that `presso opt -p` replays) and the front's artifacts in "
                    "DIR/front/. Runs on a local Ray in this process, or on a Ray cluster (--ray-address ADDR) "
                    "whose nodes each offer the resource presso_timer: 1, e.g. `ray start --head --num-cpus 2 "
                    "--resources '{\"presso_timer\": 1}'` and, on each other machine, `ray start --address "
                    "HEAD:6379 --resources '{\"presso_timer\": 1}'`.",
    )
    p.add_argument("model", metavar="MODEL", help="the float .onnx model")
    p.add_argument("--target", default="cpu-x86", help="target profile (default cpu-x86); latency is measured here")
    p.add_argument("--data", metavar="CALIB",
                   help="calibration and distillation inputs: a .npz file or a folder of .npy/.npz files")
    p.add_argument("--eval", metavar="EVAL", help="evaluation inputs for the task metric")
    p.add_argument("--metric", default="top1", choices=METRICS,
                   help="task metric against the float model's outputs (default top1)")
    p.add_argument("--budget", type=int, default=20, help="number of distinct candidates to measure (default 20)")
    p.add_argument("-o", "--output", metavar="DIR", help="folder for the results and the front")
    p.add_argument("--space", metavar="FILE", help="YAML file restricting or extending the search space, "
                   "e.g. 'prune: [0.0, 0.25]'")
    p.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: a local Ray in this process)")
    p.add_argument("--resume", action="store_true", help="continue the search recorded in DIR without redoing "
                   "finished candidates")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and the passes (default 0)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="candidates proposed and run at a time, whatever the cluster size (default 2)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one candidate may take (default 900)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per candidate (default 30)")
    p.add_argument("--eval-samples", type=int, default=None, help="use at most this many evaluation samples")
    p.add_argument("--json", action="store_true", help="print the front as JSON")
    p.add_argument("--list-space", action="store_true", help="print the search space for MODEL and exit")
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search import SearchSpace, search

    model = load_model(args.model)
    if args.list_space:
        space = SearchSpace.resolve(args.space, model, args.target)
        print(json.dumps(space.choices, indent=1) if args.json else
              "\n".join(f"{k}: {v}" for k, v in space.choices.items()))
        return 0
    missing = [flag for flag, value in (("--data", args.data), ("--eval", args.eval), ("-o", args.output)) if not value]
    if missing:
        raise PressoError(f"presso search needs {', '.join(missing)}",
                          hint="e.g. presso search MODEL --data calib.npz --eval eval.npz --budget 20 -o search/")
    if args.budget < 1:
        raise PressoError(f"--budget must be at least 1, not {args.budget}")
    result = search(model, args.data, args.eval, output=args.output, target=args.target, metric=args.metric,
                    budget=args.budget, space=args.space, ray_address=args.ray_address, resume=args.resume,
                    seed=args.seed, concurrency=args.concurrency, timeout=args.timeout, runs=args.runs,
                    eval_samples=args.eval_samples, progress=not args.json)
    if args.json:
        json.dump({"front": result.front, "reference_score": result.reference_score, "metric": result.metric,
                   "default_key": result.default_key, "folder": str(result.folder)}, sys.stdout, indent=1, default=str)
        print()
    else:
        print(result.table())
        print(f"\nwrote {result.folder}/front.txt, front.png, front.html and the front's artifacts in "
              f"{result.folder}/front/")
    return 0

"""Channel pruning to 25% and 50% fewer FLOPs: onnxruntime CPU latency and output agreement.

For each model, ``prune-channels{flops_target=0.75}`` and ``{flops_target=0.5}`` (L1, global,
channels rounded to multiples of 8), then, against the unpruned model measured in the same run
(agreement via presso.backends.benchmark.bench): FLOPs and parameter ratios, latency
ratio, and how much of the FLOPs reduction shows up as latency (target: latency falls at least
0.7× as much as FLOPs, i.e. (1 − latency ratio) / (1 − FLOPs ratio) ≥ 0.7). Latency is timed in
interleaved rounds; the ratio uses each model's fastest run (steadier than the median on a
shared machine), the median ratio is printed beside it. Agreement with the
unpruned outputs is measured *before any fine-tuning*: cosine of all outputs, top-1 agreement
for classifiers, and for PP-OCRv4 det the IoU of the text masks (probability > 0.3,
rapidocr's threshold).

    python benchmarks/pruning.py                       # det, cls, resnet50, shufflenet
    python benchmarks/pruning.py --models det --runs 30 --det-size 640
    python benchmarks/pruning.py --json out.json

Models: PP-OCRv4 det (rendered text images), PP-OCR mobile cls (a MobileNetV3; rendered text
lines, whose upright/rotated labels also give accuracy), and the ResNet-50 and ShuffleNet
(MobileNet-style: grouped and depthwise convs) from the onnx wheel's light models. The light
models ship synthetic weights (all 0.02); they are perturbed so that channels differ, which
makes their agreement numbers about the rewriting, not about a trained network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.backends.benchmark import bench
from presso.ir import Model, compute_cost, create_session, evaluate, fix_input_shapes, load
from presso.ir.edit import set_constant
from presso.passes import PassManager
from presso.tools import zoo

TARGETS = (0.75, 0.5)
EFFICIENCY_TARGET = 0.7


def inputs(name: str, model: Model, det_size: int, count: int, seed: int) -> tuple[list[dict], np.ndarray | None]:
    """(feeds, labels or None); different seeds give disjoint images."""
    if name == "det":
        images, labels = zoo.ppocr_det_inputs(count, size=det_size, seed=seed), None
    elif name == "cls":
        images, labels = zoo.ppocr_cls_inputs(count, seed=seed)
    else:
        rng = np.random.default_rng(seed)
        shape = [int(d) for d in model.inputs[0].shape]
        images, labels = rng.normal(size=[count, *shape[1:]]).astype(np.float32), None
    return [{model.inputs[0].name: images[i:i + 1]} for i in range(count)], labels


def prepare(name: str, det_size: int, samples: int):
    """(model ready to prune, eval feeds, labels or None, scoring feeds for data criteria)."""
    if name == "det":
        model = load(zoo.ppocr_det_model())
        fix_input_shapes(model, {"x": [1, 3, det_size, det_size]})
    elif name == "cls":
        model = load(zoo.ppocr_cls_model())
        fix_input_shapes(model, {"x": [1, 3, 48, 192]})
    else:
        model = load(zoo.light_model(name))
    feeds, labels = inputs(name, model, det_size, samples, seed=0)
    scoring, _ = inputs(name, model, det_size, 4, seed=1000)
    PassManager.parse("constants-to-initializers,fold-constants").run(model)
    if name not in ("det", "cls"):
        rng = np.random.default_rng(1)
        for tensor in model.initializers().values():
            values = np.asarray(tensor.values)
            if values.dtype == np.float32 and values.size > 1:
                set_constant(tensor, (values * rng.uniform(0.5, 1.5, values.shape)).astype(np.float32))
        model.invalidate()
    return model, feeds, labels, scoring


def det_mask_iou(reference: Model, candidate: Model, feeds: list[dict]) -> float:
    inter = union = 0
    for feed in feeds:
        a = next(iter(evaluate(reference, feed).values())) > 0.3
        b = next(iter(evaluate(candidate, feed).values())) > 0.3
        inter += int(np.sum(a & b))
        union += int(np.sum(a | b))
    return inter / union if union else 1.0


def accuracy(model: Model, feeds: list[dict], labels: np.ndarray) -> float:
    hits = [int(np.argmax(next(iter(evaluate(model, f).values())))) == int(y) for f, y in zip(feeds, labels)]
    return float(np.mean(hits))


def run_model(name: str, args) -> list[dict]:
    model, feeds, labels, scoring = prepare(name, args.det_size, args.samples)
    base_cost = compute_cost(model)
    variants, rows = [model], []
    for target in TARGETS:
        pruned = model.copy()
        start = time.perf_counter()
        text = f"prune-channels{{flops_target={target},criterion={args.criterion},samples={len(scoring)}}}"
        PassManager.parse(text).run(pruned, data=scoring)
        seconds = time.perf_counter() - start
        cost = compute_cost(pruned)
        variants.append(pruned)
        rows.append({"model": name, "target": target, "criterion": args.criterion,
                     "flops_ratio": cost.flops / base_cost.flops, "params_ratio": cost.params / base_cost.params,
                     "prune_seconds": seconds})
    names = [f"{name}"] + [f"{name}-flops{t:g}" for t in TARGETS]
    runs = _runs_for(model, feeds[0], args)
    # Agreement (and a first latency reading) from presso's bench; latency from timed rounds below.
    report = bench(variants, data=feeds, threads=(args.threads,), runs=1, warmup=1, samples=len(feeds),
                   names=names)
    timings = interleaved_latency(variants, feeds[0], runs, args.threads)
    base_min, base_median = timings[0]
    for row, bench_row, (best, median) in zip(rows, report.rows[1:], timings[1:]):
        row["latency_ratio"] = best / base_min
        row["latency_ratio_median"] = median / base_median
        row["baseline_ms"] = base_min * 1000
        row["runs"] = runs
        row["synthetic_weights"] = name not in ("det", "cls")
        drop = 1 - row["flops_ratio"]
        row["efficiency"] = (1 - row["latency_ratio"]) / drop if drop > 0 else float("nan")
        row["cosine"] = bench_row.agreement.get("cosine")
        row["top1_agreement"] = bench_row.agreement.get("top1")
    for row, pruned in zip(rows, variants[1:]):
        if name == "det":
            row["mask_iou"] = det_mask_iou(model, pruned, feeds)
        if labels is not None:
            row["accuracy"] = accuracy(pruned, feeds, labels)
            row["baseline_accuracy"] = accuracy(model, feeds, labels)
    return rows


def interleaved_latency(models: list[Model], feed: dict, runs: int, threads) -> list[tuple[float, float]]:
    """(min, median) seconds per model, timed in rounds of one run of each model in rotating
    order, so that load from other processes hits every model alike. On a shared machine
    the minimum is the steadier estimate of the unloaded latency."""
    count = None if threads == "all" else int(threads)
    sessions = [create_session(m.to_proto(), optimization="all", threads=count) for m in models]
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(runs):
        order = list(range(len(sessions)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            start = time.perf_counter()
            sessions[i].run(None, feed)
            times[i].append(time.perf_counter() - start)
    return [(float(np.min(t)), float(np.median(t))) for t in times]


def _runs_for(model: Model, feed: dict, args) -> int:
    """At least ``--runs``, and enough that each model is timed for ``--min-seconds``."""
    evaluate(model, feed)  # warm the session
    start = time.perf_counter()
    evaluate(model, feed)
    seconds = max(time.perf_counter() - start, 1e-4)
    return int(min(1000, max(args.runs, args.min_seconds / seconds)))


def print_table(rows: list[dict], threads: str) -> None:
    header = (f"{'model':<11}{'FLOPs':>7}{'params':>8}{'base ms':>9}{'latency':>9}{'(median)':>9}{'lat/FLOPs':>10}"
              f"{'target':>8}{'cosine':>8}{'top-1 agr':>10}{'det IoU':>9}{'acc (base)':>12}")
    print(f"\nchannel pruning ({rows[0]['criterion']}), onnxruntime CPU, threads={threads}; "
          f"ratios are pruned / unpruned; latency from the fastest of interleaved runs (median beside it); "
          f"lat/FLOPs = latency drop / FLOPs drop, target ≥ {EFFICIENCY_TARGET}")
    print(header)
    print("─" * len(header))
    for r in rows:
        top1 = "-" if r.get("top1_agreement") is None else f"{100 * r['top1_agreement']:.0f}%"
        iou = f"{r['mask_iou']:.3f}" if "mask_iou" in r else "-"
        acc = f"{100 * r['accuracy']:.0f}% ({100 * r['baseline_accuracy']:.0f}%)" if "accuracy" in r else "-"
        met = "yes" if r["efficiency"] >= EFFICIENCY_TARGET else "no"
        mark = "*" if r.get("synthetic_weights") else " "
        print(f"{r['model']:<11}{r['flops_ratio']:>7.3f}{r['params_ratio']:>8.3f}{r['baseline_ms']:>9.2f}"
              f"{r['latency_ratio']:>9.3f}{r['latency_ratio_median']:>9.3f}{r['efficiency']:>10.2f}{met:>8}"
              f"{r['cosine']:>7.3f}{mark}{top1:>10}"
              f"{iou:>9}{acc:>12}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,cls,resnet50,shufflenet",
                        help="comma-separated: det, cls, and light model names (resnet50, shufflenet, ...)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model (interleaved)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="time each model at least this long (more runs for small models)")
    parser.add_argument("--samples", type=int, default=8, help="inputs for agreement")
    parser.add_argument("--threads", default="1", help="onnxruntime intra-op threads (a count or 'all')")
    parser.add_argument("--det-size", type=int, default=320, help="det input side (multiple of 32)")
    parser.add_argument("--criterion", default="l1",
                        help="prune-channels criterion (taylor scores on 4 inputs disjoint from the eval inputs)")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    args.threads = args.threads if args.threads == "all" else int(args.threads)
    rows = []
    for name in args.models.split(","):
        print(f"[{name}] pruning and measuring…", file=sys.stderr, flush=True)
        rows += run_model(name.strip(), args)
    print_table(rows, str(args.threads))
    if any(r.get("synthetic_weights") for r in rows):
        print("* light models ship synthetic weights (all 0.02, perturbed here): their agreement numbers "
              "only show that the outputs stay finite and well-formed, not accuracy")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`presso report`: an HTML report of what compression did, BEFORE against AFTER, on real data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..ir.errors import PressoError
from ..ir.table import format_table, human_bytes
from .bench_cmd import parse_threads
from .common import add_examples, add_shape_option, parse_shapes

EXAMPLES = (
    'presso opt zoo/ppocr-cls.onnx -p "insert-qdq,calibrate,fold-qdq" --data zoo/cls-calib.npz -o cls-int8.onnx '
    "--report cls-opt.html   # needs presso[report]",
    "presso report zoo/ppocr-cls.onnx cls-int8.onnx --data zoo/cls-eval.npz -o cls-report.html   "
    "# needs presso[report]",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write one HTML file (opens offline) showing what compression did to a model",
        description="Measure BEFORE.onnx (the float model) against AFTER (its compressed version: an .onnx file "
                    "or an artifact folder) on --data and write one self-contained HTML file: the passes applied, "
                    "per-layer error (SQNR against float), the precision of every layer, sensitivity "
                    "(--sensitivity), size and latency before and after, and the graph coloured by precision "
                    "or error. `presso opt --report` and `presso compile --report` write the same report.",
    )
    p.add_argument("before", metavar="BEFORE.onnx", help="the model before compression")
    p.add_argument("after", metavar="AFTER", help="the compressed model: an .onnx file or an artifact folder")
    p.add_argument("--data", metavar="PATH", help="real inputs (.npz or a folder of .npy/.npz) to measure the models on")
    add_report_options(p)
    p.add_argument("-o", "--output", metavar="REPORT.html", required=True, help="the HTML file to write")
    p.add_argument("--json", action="store_true", help="also print the measured numbers as JSON")
    add_shape_option(p)
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def add_report_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """The measuring options of `presso report`; on opt and compile they carry the prefix
    ``report-`` (``--report-samples``…), beside those commands' own options."""
    group = parser.add_argument_group("report")
    group.add_argument(f"--{prefix}samples", dest="report_samples", type=int, default=16, metavar="N",
                       help="samples of --data for output agreement and per-layer error (default 16)")
    group.add_argument(f"--{prefix}runs", dest="report_runs", type=int, default=10, metavar="N",
                       help="interleaved latency runs per model (default 10)")
    group.add_argument(f"--{prefix}threads", dest="report_threads", default="1", metavar="T",
                       help="comma-separated intra-op thread counts to time, 'all' = every core (default 1)")
    group.add_argument(f"--{prefix}sensitivity", dest="report_sensitivity", action="store_true",
                       help="also measure each layer's sensitivity (presso.analyze.sensitivity) and chart it")
    group.add_argument(f"--{prefix}metric", dest="report_metric", default=None, metavar="NAME",
                       help="task metric of the sensitivity: top1, iou, cosine, nn, mse, sqnr (default top1)")


def options_from(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`presso.report.report` from the parsed report options."""
    return dict(samples=args.report_samples, runs=args.report_runs, threads=parse_threads(args.report_threads),
                sensitivity=True if args.report_sensitivity else None, metric=args.report_metric,
                shapes=parse_shapes(args.shape) or None)


def check_before_work(args: argparse.Namespace, path: str, *, what: str = "--report") -> None:
    """What --report needs, checked before a pipeline or compile runs: data, a writable path, plotly."""
    from ..report import check_report_path
    from ..report.html import require_plotly

    if not args.data:
        raise PressoError(f"{what} needs --data: the report measures the models on real inputs",
                          hint="add --data with samples (.npz or a folder of .npy/.npz)")
    if args.report_samples < 1 or args.report_runs < 1:
        raise PressoError("the report's sample and run counts must be at least 1")
    parse_threads(args.report_threads)
    check_report_path(path)
    require_plotly()


def report_from_args(args: argparse.Namespace, before, after, *, pipeline=None) -> dict:
    """--report on opt and compile: the report of ``before`` → ``after`` (shapes already fixed)."""
    from ..report import report

    from ..backends import Artifact

    if isinstance(after, Artifact) and Path(args.output).is_dir():
        after = args.output  # the saved folder: its size is that of the files that ship
    options = options_from(args)
    options["shapes"] = None
    after_name = Path(args.output).name if args.output else "after (not saved)"
    return report(before, after, args.data, args.report, pipeline=pipeline, names=(Path(args.input).name, after_name),
                  **options)


def run(args: argparse.Namespace) -> int:
    from ..report import report

    check_before_work(args, args.output, what="presso report")
    numbers = report(args.before, args.after, args.data, args.output, **options_from(args))
    if args.json:
        from ..report.html import finite

        json.dump(finite({k: v for k, v in numbers.items() if k != "graph"}), sys.stdout, indent=2, default=str)
        print()
        return 0
    print(summary(numbers))
    print(f"\nwrote {args.output}")
    return 0


def summary(numbers: dict) -> str:
    """A few lines for the terminal: size, latency, agreement, layers by precision."""
    rows = []
    models = {m["name"]: m for m in numbers["bench"]["models"]}
    before, after = models["before"], models["after"]
    rows.append(["size", human_bytes(before["size_bytes"]), human_bytes(after["size_bytes"]),
                 f"{after['size_ratio']:.3f}×"])
    for key, ratio in after["latency_ratio"].items():
        rows.append([f"latency {key}", f"{before['latency'][key]['median_ms']:.3f} ms",
                     f"{after['latency'][key]['median_ms']:.3f} ms", f"{ratio:.3f}×"])
    lines = [format_table(["", "before", "after", "ratio"], rows, align="lrrr")]
    agreement = after["agreement"]
    text = f"agreement with before: cosine {agreement['cosine']:.6f}"
    if agreement.get("top1") is not None:
        text += f", top-1 {100 * agreement['top1']:.1f}%"
    lines.append(text)
    counts: dict[str, int] = {}
    for layer in numbers["layers"]:
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    if counts:
        lines.append("layers: " + ", ".join(f"{n} {p}" for p, n in counts.items()))
    worst = sorted((layer for layer in numbers["layers"] if layer["sqnr_db"] is not None),
                   key=lambda layer: layer["sqnr_db"])[:3]
    if worst:
        lines.append("lowest SQNR: " + ", ".join(f"{w['name']} {w['sqnr_db']:.1f} dB" for w in worst))
    return "\n".join(lines)

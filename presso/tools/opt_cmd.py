"""`presso opt`: run a pass pipeline on a model and print what each pass did."""

from __future__ import annotations

import argparse
import json
import sys

from ..ir import compute_cost, save
from ..ir.analysis.batch import batch_only_dynamic, concrete_batch
from ..ir.errors import PressoError
from ..ir.io import check_output_path, written_size
from ..ir.table import format_table, human_bytes, human_count
from ..passes import PassContext, PassManager, available_passes
from .common import add_examples, add_shape_option, load_model
from .report_cmd import add_report_options, check_before_work, report_from_args

EXAMPLES = (
    'presso opt zoo/ppocr-cls.onnx --shape x=1,3,48,192 --verify -o cls-clean.onnx '
    '-p "constants-to-initializers,fold-constants,fold-batchnorm"',
    'presso opt zoo/ppocr-cls.onnx --target int8-symmetric --data zoo/cls-calib.npz -o cls-int8.onnx '
    '-p "insert-qdq,calibrate{method=minmax},fold-qdq"',
    'presso opt zoo/magika.onnx -p "prune-channels{ratio=0.5}" -o magika-pruned.onnx',
    "presso opt --list-passes",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "opt",
        help="run a pass pipeline on a model (like LLVM's opt)",
        description="Run a pass pipeline on IN.onnx and write the result to OUT.onnx.",
    )
    p.add_argument("input", nargs="?", metavar="IN.onnx")
    p.add_argument("-p", "--pipeline", help='pipeline text, e.g. "fold-constants,fold-batchnorm{eps_check=true}"')
    p.add_argument("--recipe", metavar="FILE", help="read the pipeline from a YAML or TOML recipe")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="where to write the transformed model")
    p.add_argument("--data", metavar="PATH", help="input data: a .npz file or a folder of .npy/.npz files")
    p.add_argument("--labels", metavar="FILE",
                   help="labels for training passes (.npy, or .npz with a 'labels' array); "
                        "a 'labels' array inside the --data .npz works too")
    p.add_argument("--verify", action="store_true",
                   help="check each pass with onnx.checker and compare outputs with the input model")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance for --verify (default 1e-4)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance for --verify (default 1e-5)")
    p.add_argument("--dump-dir", metavar="DIR", help="save the model after every pass into DIR")
    p.add_argument("--target", metavar="TARGET",
                   help="target profile (see `presso compile --list-targets`) whose quantization scheme "
                        "insert-qdq uses, as presso.quantize(target=...) does; insert-qdq options override it")
    p.add_argument("--seed", type=int, default=0, help="random seed for passes and verification inputs")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--list-passes", action="store_true", help="list the available passes and their options")
    p.add_argument("--report", metavar="REPORT.html",
                   help="also write an HTML report of the run, measured on --data (see presso report)")
    add_report_options(p, prefix="report-")
    add_shape_option(p)
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_passes:
        print(describe_passes())
        return 0
    if not args.input:
        raise PressoError("no input model given", hint="usage: presso opt IN.onnx -p PIPELINE -o OUT.onnx")
    if bool(args.pipeline) == bool(args.recipe):
        raise PressoError("give exactly one of -p/--pipeline and --recipe",
                          hint="see `presso opt --list-passes` for the passes")
    if args.output:  # before any work: a missing folder or -o equal to the input fails now, not after the pipeline
        check_output_path(args.output, source=args.input)
    if args.report:
        check_before_work(args, args.report)
    target = None
    if args.target:
        from ..backends.target import get_target

        target = get_target(args.target)  # fail on a typo before loading the model
    options = dict(verify=args.verify, rtol=args.rtol, atol=args.atol, dump_dir=args.dump_dir)
    # Parse the pipeline before loading the model, so a typo fails fast.
    manager = (PassManager.parse(args.pipeline, **options) if args.pipeline
               else PassManager.from_recipe(args.recipe, **options))
    model = load_model(args.input, args.shape)
    before = _summary(model)
    ctx = PassContext(seed=args.seed, progress=not args.no_progress and not args.json, labels=args.labels,
                      target=target)
    report = manager.run(model, data=args.data, ctx=ctx)
    after = _summary(model)
    if args.output:
        save(model, args.output)
        after["size_bytes"] = written_size(args.output)
    if args.report:
        report_from_args(args, ctx.reference, model, pipeline=report)
    if args.json:
        json.dump({"passes": report.as_dict(), "before": before, "after": after, "output": args.output},
                  sys.stdout, indent=2, default=str)
        print()
        return 0
    print(report.table())
    print()
    print(_before_after_table(before, after))
    if args.output:
        print(f"\nwrote {args.output}")
    else:
        print("\n(no -o given: the result was not saved)")
    if args.report:
        print(f"wrote {args.report}")
    return 0


def _summary(model) -> dict:
    cost = _cost(model)
    return {"nodes": len(model.graph.nodes), "params": cost.params, "flops": cost.flops,
            "size_bytes": model.byte_size(), "opset": model.opset}


def _cost(model):
    """FLOPs and parameters; a dynamic batch counts as 1 (on a copy: the model keeps it dynamic)."""
    batch, other = batch_only_dynamic(model)
    if not batch or other:  # static, or another axis is dynamic: count what has a static shape
        return compute_cost(model)
    copy = model.copy()
    with concrete_batch(copy, 1):
        return compute_cost(copy)


def _before_after_table(before: dict, after: dict) -> str:
    def ratio(key: str) -> str:
        return f"{after[key] / before[key]:.3f}×" if before[key] else "-"

    rows = [
        ["nodes", before["nodes"], after["nodes"], ratio("nodes")],
        ["parameters", human_count(before["params"]), human_count(after["params"]), ratio("params")],
        ["FLOPs", human_count(before["flops"]), human_count(after["flops"]), ratio("flops")],
        ["size", human_bytes(before["size_bytes"]), human_bytes(after["size_bytes"]), ratio("size_bytes")],
        ["opset", before["opset"], after["opset"], ""],
    ]
    return format_table(["", "before", "after", "ratio"], rows, align="lrrr")


def describe_passes() -> str:
    rows = []
    for name, cls in available_passes().items():
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        opts = ", ".join(f"{k}={v.default}" for k, v in cls.options.items())
        rows.append([name, "yes" if cls.preserves_semantics else "no", doc, opts])
    return format_table(["pass", "exact", "what it does", "options (defaults)"], rows)

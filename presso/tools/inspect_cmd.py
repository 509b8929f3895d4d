"""`presso inspect`: what a model is made of and what it costs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import onnx

from ..ir import Model
from ..ir.analysis.size import render_size_breakdown, size_breakdown
from ..ir.analysis.summary import summarize
from ..ir.table import format_table, human_bytes, human_count
from ..ir.analysis.batch import concrete_batch, shape_hint
from ..ir.analysis.shapes import dynamic_inputs
from ..passes.prune.dependency import prunable_report, render_prunable
from ..passes.prune.prune_channels import PruneChannels
from .common import add_examples, add_shape_option, load_model

EXAMPLES = (
    "presso inspect zoo/ppocr-det.onnx --shape x=1,3,320,320",
    "presso inspect zoo/magika.onnx --prunable",
    "presso inspect zoo/ppocr-cls.onnx --shape x=1,3,48,192 --layers --dot cls.dot",
    "presso inspect zoo/ppocr-cls.onnx --size --json",
    "presso inspect zoo/magika.onnx --sensitivity --data zoo/magika-calib.npz --metric top1 --samples 8",
    "presso inspect zoo/ppocr-cls.onnx --shape x=1,3,48,192 --target qnn-htp   # needs presso[npu]",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a model's inputs, ops, parameters, FLOPs, size and annotations",
        description="Summarize IN.onnx: interface, op histogram, parameters, FLOPs, size, memory "
                    "and Presso annotations (quantization, sparsity, pruning, pass history).",
    )
    p.add_argument("input", metavar="IN.onnx")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--layers", action="store_true", help="one row per node: op, output shape, FLOPs, params")
    p.add_argument("--dot", metavar="OUT.dot", help="write the graph in Graphviz dot format")
    p.add_argument("--size", action="store_true",
                   help="where the file's bytes go: integer and float weights, biases, scales, zero "
                        "points, names, nodes, value_info, metadata (adds up to the file size)")
    p.add_argument("--prunable", action="store_true",
                   help="list channel groups (what prune-channels can remove), their sizes and why "
                        "excluded ones are, as prune-channels sees them (a dynamic batch counts as 1; other "
                        "dynamic axes need --shape)")
    p.add_argument("--target", metavar="NAME", default=None,
                   help="qnn-htp: list each node that would not run on the NPU, with QNN's reason, and the "
                        "fraction that would (needs presso[npu]; give --shape for dynamic inputs); "
                        "cortex-m4/m7/m55: whether the model fits the board's flash and RAM and which ops "
                        "have no integer kernel (give --shape for dynamic inputs)")
    p.add_argument("--sensitivity", action="store_true",
                   help="per quantizable layer: the metric drop and output SQNR when only it is int8 and when "
                        "only it is float, weight/activation ranges and outliers (needs --data; cached)")
    p.add_argument("--data", metavar="D", help="calibration and scoring data for --sensitivity (.npz or folder)")
    p.add_argument("--metric", default="top1", help="--sensitivity metric: top1, iou, cosine, nn, mse or sqnr")
    p.add_argument("--samples", type=int, default=32, help="--sensitivity: samples scored per layer (default 32)")
    p.add_argument("--no-cache", action="store_true", help="--sensitivity: measure again, ignoring the cache")
    add_shape_option(p)
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.input, args.shape)
    summary = summarize(model, layers=args.layers)
    summary["file"] = args.input
    summary["size_bytes"] = os.path.getsize(args.input)  # the file as stored, not as re-serialized
    if args.size:
        # the file as stored (external data left out: it is not in the protobuf)
        summary["size_breakdown"] = size_breakdown(onnx.load(args.input, load_external_data=False))
    if args.prunable:  # as prune-channels sees it: a dynamic batch counts as 1, its default norms
        with concrete_batch(model, 1, needs="--prunable"):
            summary["prunable"] = prunable_report(model, norms=PruneChannels.norms)
    dynamic = dynamic_inputs(model)
    if dynamic:
        name, shape = next(iter(dynamic.items()))
        summary["shape_hint"] = shape_hint(name, shape)
    if args.target:
        from ..backends import get_target

        if get_target(args.target).device == "mcu":  # fits the board? ops without an integer kernel?
            from ..backends.mcu.report import fit_report

            summary["mcu"] = fit_report(model, get_target(args.target))
        else:
            summary["npu"] = _npu_report(model, args.target)
    if args.sensitivity:
        from ..passes.quant.sensitivity import cli_sensitivity

        summary["sensitivity"] = cli_sensitivity(model, args)
    if args.dot:
        write_dot(model, args.dot)
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(render(summary))
    if "npu" in summary:
        from ..backends.onnxruntime.qnn import render_npu_report

        print("\n" + "\n".join(render_npu_report(summary["npu"], args.target)))
    if "mcu" in summary:
        from ..backends.mcu.report import render_fit

        print("\n" + "\n".join(render_fit(summary["mcu"])))
    if "sensitivity" in summary:
        from ..passes.quant.sensitivity import SensitivityReport

        print("\n" + SensitivityReport.from_dict(summary["sensitivity"]).table())
    if args.dot:
        print(f"\nwrote {args.dot}  (render: dot -Tsvg {args.dot} -o graph.svg)")
    return 0


def _npu_report(model: Model, target_name: str) -> dict[str, Any]:
    from ..backends import get_target
    from ..ir.errors import PressoError

    target = get_target(target_name)
    if "QNNExecutionProvider" not in target.ort_providers:
        raise PressoError(f"inspect --target checks NPU placement; '{target.name}' runs every op it loads",
                          hint="use --target qnn-htp")
    from ..backends.onnxruntime.qnn import npu_report

    return npu_report(model)


def _shape_text(spec: dict[str, Any]) -> str:
    shape = spec["shape"]
    dims = "?" if shape is None else "×".join(str(d) for d in shape) or "scalar"
    return f"{spec['name']}  {spec['dtype']}[{dims}]"


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"model    {summary['file']}",
        f"graph    {summary['name']}  (opset {summary['opset']}"
        + (f", producer {summary['producer']})" if summary["producer"] else ")"),
        "inputs   " + "\n         ".join(_shape_text(s) for s in summary["inputs"]),
        "outputs  " + "\n         ".join(_shape_text(s) for s in summary["outputs"]),
        "",
        format_table(
            ["", "value"],
            [
                ["nodes", summary["nodes"]],
                ["parameters", f"{human_count(summary['params'])} ({human_bytes(summary['param_bytes'])})"],
                ["FLOPs", human_count(summary["flops"])],
                ["MACs", human_count(summary["macs"])],
                ["file size", human_bytes(summary["size_bytes"])],
                ["activations (sum)", human_bytes(summary["activation_bytes"])],
                ["activations (peak live)", human_bytes(summary["peak_activation_bytes"])],
                ["weights by dtype", ", ".join(f"{k} {human_bytes(v)}" for k, v in summary["initializer_dtypes"].items()) or "-"],
            ],
        ),
        "",
        format_table(["op", "count"], [[op, n] for op, n in summary["op_counts"].items()], align="lr"),
    ]
    if summary["unknown_cost_nodes"]:
        lines.append(f"\nnote: {len(summary['unknown_cost_nodes'])} node(s) have unknown shapes, so their FLOPs "
                     f"are not counted; fix dynamic inputs, e.g. {summary.get('shape_hint', '--shape')}")
    lines.extend(_render_annotations(summary["annotations"]))
    if "layers" in summary:
        rows = [[r["name"], r["op"], "×".join(map(str, r["output_shape"])) if r["output_shape"] else "?",
                 human_count(r["flops"]) if r["flops"] is not None else "?", human_count(r["params"])]
                for r in summary["layers"]]
        lines += ["", format_table(["node", "op", "output shape", "FLOPs", "params"], rows, align="llrrr")]
    if "size_breakdown" in summary:
        breakdown = summary["size_breakdown"]
        lines += ["", format_table(["bytes by role", "bytes", "share"], list(render_size_breakdown(breakdown)),
                                   align="lrr")]
        dup = breakdown["duplicates"]
        if dup["count"]:
            lines.append(f"note: {dup['count']} initializer(s) repeat an earlier one byte for byte "
                         f"({human_bytes(dup['bytes'])}); the compact pass stores each once")
    if "prunable" in summary:
        lines += ["", render_prunable(summary["prunable"])]
    return "\n".join(lines)


def _render_annotations(annotations: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if annotations["quant"]:
        by_dtype: dict[str, int] = {}
        for spec in annotations["quant"].values():
            by_dtype[spec["dtype"]] = by_dtype.get(spec["dtype"], 0) + 1
        lines += ["", "quantization: " + ", ".join(f"{n} tensor(s) {d}" for d, n in sorted(by_dtype.items()))]
    if annotations["sparsity"]:
        rows = [[name, s["pattern"], f"{s['ratio']:.1%}"] for name, s in annotations["sparsity"].items()]
        lines += ["", format_table(["sparse initializer", "pattern", "zeros"], rows)]
    if annotations["pruning"]:
        rows = [[r["layer"], r["channels_before"], r["channels_after"], r.get("criterion") or ""]
                for r in annotations["pruning"]]
        lines += ["", format_table(["pruned layer", "channels before", "after", "criterion"], rows, align="lrrl")]
    if annotations["history"]:
        lines += ["", "passes applied: " + ", ".join(h["pass"] for h in annotations["history"])]
    return lines


def write_dot(model: Model, path: str) -> None:
    """Graphviz dot: one box per node labelled with its op, edges labelled with tensor names."""

    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph presso {", "  rankdir=TB;", "  node [shape=box, fontname=Helvetica];"]
    for t in model.graph.inputs:
        lines.append(f"  {quote('in:' + t.name)} [label={quote(t.name)}, shape=ellipse];")
    for t in model.graph.outputs:
        lines.append(f"  {quote('out:' + t.name)} [label={quote(t.name)}, shape=ellipse];")
    graph_inputs = {id(t) for t in model.graph.inputs}
    for i, node in enumerate(model.graph.nodes):
        node_id = quote(f"n{i}:{node.name}")
        lines.append(f"  {node_id} [label={quote(node.op + chr(10) + node.name)}];")
        for t in node.inputs:
            if id(t) in graph_inputs:
                lines.append(f"  {quote('in:' + t.name)} -> {node_id};")
    index = {id(n): i for i, n in enumerate(model.graph.nodes)}
    for i, node in enumerate(model.graph.nodes):
        for t in node.outputs:
            for consumer in t.outputs:
                if id(consumer) in index:
                    lines.append(f"  {quote(f'n{i}:{node.name}')} -> {quote(f'n{index[id(consumer)]}:{consumer.name}')}"
                                 f" [label={quote(t.name)}, fontsize=8];")
            if any(o is t for o in model.graph.outputs):
                lines.append(f"  {quote(f'n{i}:{node.name}')} -> {quote('out:' + t.name)};")
    lines.append("}")
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)

"""`presso compile`: lower a model for a target with a backend and write an artifact folder."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ..backends import available_targets, compile, get_target
from ..ir.errors import PressoError
from ..ir.table import format_table, human_bytes
from .common import add_examples, add_shape_option, load_model
from .report_cmd import add_report_options, check_before_work, report_from_args

EXAMPLES = (
    "presso compile zoo/ppocr-cls.onnx --target cpu-x86 --backend onnxruntime --shape x=1,3,48,192 "
    "--data zoo/cls-eval.npz -o build/cls",
    "presso compile zoo/ppocr-cls.onnx --target cpu-x86 --backend tvm --shape x=1,3,48,192 -o build/cls-tvm",
    "presso compile --list-targets",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile",
        help="compile a model for a target into a runnable artifact folder (like LLVM's llc)",
        description="Legalize IN.onnx for a target, verify that the backend loads it, and write an artifact "
                    "folder (model, backend-optimized model, manifest.json).",
    )
    p.add_argument("input", nargs="?", metavar="IN.onnx")
    p.add_argument("--target", default="cpu-x86", help="target profile (default cpu-x86; see --list-targets)")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or tvm")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="artifact folder to write")
    p.add_argument("--data", metavar="PATH",
                   help="sample inputs (.npz or folder) for verification and for timing int8 forms")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime: intra-op threads the artifact's session uses (default: all cores)")
    p.add_argument("--no-select-form", action="store_true",
                   help="onnxruntime: keep a quantized model's int8 form instead of timing the alternatives")
    p.add_argument("--form-rounds", type=int, default=15,
                   help="onnxruntime: interleaved timing rounds per int8 form (default 15)")
    p.add_argument("--tune", metavar="trials=N", default=None,
                   help="tvm: MetaSchedule-tune the kernels with N measured trials; the database is kept "
                        "in OUTDIR/tuning and reused by the next compile into OUTDIR")
    p.add_argument("--int8", choices=("arith", "float"), default=None,
                   help="tvm: how quantized (QDQ) Conv/MatMul run: 'arith' with int8/uint8 operands and int32 "
                        "accumulation, 'float' on dequantized float values (default: the faster one on the "
                        "target, arith on cpu-x86)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="qnn-htp: let nodes the NPU rejects run on the CPU instead of failing (listed in the manifest)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--list-targets", action="store_true", help="list the target profiles")
    p.add_argument("--report", metavar="REPORT.html",
                   help="also write an HTML report: IN.onnx against the artifact, measured on --data (see presso report)")
    add_report_options(p, prefix="report-")
    add_shape_option(p)
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_targets:
        print(describe_targets())
        return 0
    if not args.input or not args.output:
        raise PressoError("compile needs an input model and -o OUTDIR",
                          hint="usage: presso compile IN.onnx --target cpu-x86 --backend onnxruntime -o OUTDIR")
    target = get_target(args.target)  # fail on a typo before loading the model
    if args.report:
        check_before_work(args, args.report)
    model = load_model(args.input, args.shape)
    options = {}
    if args.backend == "onnxruntime":
        options = dict(data=args.data, threads=args.threads, select_form=not args.no_select_form,
                       form_rounds=args.form_rounds)
        if args.allow_fallback:
            options["allow_fallback"] = True
    elif args.backend == "tvm":
        options = dict(output=args.output, tune_trials=_tune_trials(args.tune), int8=args.int8)
        if target.device == "mcu" and args.data:  # the sample the board's outputs are verified on
            options["data"] = args.data
    for flag, value in (("--tune", args.tune), ("--int8", args.int8)):
        if value and args.backend != "tvm":
            raise PressoError(f"{flag} is a tvm option, not {args.backend}'s", hint="add --backend tvm")
    if args.backend != "onnxruntime" and ((args.data and target.device != "mcu" and not args.report)
                                          or args.threads or args.no_select_form):
        raise PressoError(f"--data, --threads and --no-select-form are onnxruntime options, not {args.backend}'s")
    fresh = not Path(args.output).exists()
    try:
        artifact = compile(model, target=target, backend=args.backend, **options)
        folder = artifact.save(args.output)
    except BaseException:
        if fresh:  # a failed compile leaves nothing behind (an existing folder keeps its tuning records)
            shutil.rmtree(args.output, ignore_errors=True)
        raise
    if args.report:
        report_from_args(args, model, artifact)
        print(f"wrote {args.report}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        json.dump(artifact.manifest, sys.stdout, indent=2, default=str)
        print()
        return 0
    if artifact.manifest.get("device") == "mcu":
        from ..backends.mcu.report import describe_artifact

        print(describe_artifact(artifact.manifest, str(folder)))
        return 0
    print(summary(artifact.manifest, str(folder), real_data=bool(args.data)))
    qnn = artifact.manifest.get("qnn")
    if qnn:
        print(f"\n{qnn['on_npu']} of {qnn['nodes']} nodes on the NPU ({qnn['fraction_on_npu']:.1%}); EPContext model "
              f"with a {human_bytes(qnn['context_binary_bytes'])} QNN context binary, compiled in {qnn['compile_s']:.1f} s")
    return 0


def _tune_trials(text: str | None) -> int:
    if not text:
        return 0
    key, sep, value = text.partition("=")
    if key.strip() != "trials" or not sep or not value.strip().isdigit():
        raise PressoError(f"--tune '{text}' must look like trials=N (N ≥ 0)")
    return int(value)


def summary(manifest: dict, folder: str, *, real_data: bool = True) -> str:
    lines = [f"compiled for target '{manifest.get('target')}' with backend '{manifest.get('backend')}' → {folder}"]
    rows = [[key, name, human_bytes(manifest.get("sizes", {}).get(key))]
            for key, name in manifest.get("files", {}).items()]
    if rows:
        lines += ["", format_table(["file", "name", "size"], rows, align="llr")]
    specs = [["input", s["name"], s.get("dtype"), s.get("shape")] for s in manifest.get("inputs", [])]
    specs += [["output", s["name"], s.get("dtype"), s.get("shape")] for s in manifest.get("outputs", [])]
    if specs:
        lines += ["", format_table(["", "tensor", "dtype", "shape"], specs)]
    int8 = manifest.get("int8")
    if int8 and int8.get("mode") == "arith":
        kept = ", ".join(f"{n} {reason}" for reason, n in (int8.get("kept_float") or {}).items())
        fast = f" ({int8['avx2_kernels']} on the AVX2 kernel)" if int8.get("avx2_kernels") else ""
        lines += ["", f"int8 arith: {int8.get('conv2d', 0)} conv2d and {int8.get('matmul', 0)} matmul run on "
                      f"int8 operands with int32 accumulation{fast}{'; kept in float: ' + kept if kept else ''}"]
    elif int8:
        lines += ["", "int8 float: quantized Conv/MatMul run in float on dequantized values (--int8 arith for "
                      "integer arithmetic)"]
    form = manifest.get("int8_form")
    if form:
        lines += ["", f"int8 form: {form.get('chosen')} (given {form.get('given')}; "
                      f"candidates {', '.join(form.get('candidates', []))})"]
        for name, rel in (form.get("relative") or {}).items():
            lines.append(f"  {name}: {rel:.3f}× the given form's latency")
        if form.get("reason"):
            lines.append(f"  {form['reason']}")
    check = manifest.get("verification")
    if check and "max_abs" in check:
        lines.append(f"verified against the input model on {check['samples']} sample: max abs {check['max_abs']:.3g}, "
                     f"cosine {float(check['cosine']):.6f}")
        if manifest.get("int8_form") and not real_data:
            lines.append("  (random inputs: pass --data with real samples for a meaningful check of an int8 model)")
        elif float(check["cosine"]) < 0.99:
            lines.append("warning: the engine's int8 kernels disagree with the quantized model's own semantics "
                         "(cosine < 0.99); on CPUs without AVX-VNNI re-quantize with 7-bit weights "
                         "(insert-qdq{reduce_range=true}) or int8 activations (insert-qdq{scheme=s8s8})")
    elif check:
        lines.append(f"verification skipped: {check.get('skipped')}")
    return "\n".join(lines)


def describe_targets() -> str:
    rows = []
    for name, target in available_targets().items():
        scheme = target.scheme
        rows.append([name, target.device, ",".join(target.backends),
                     f"w {scheme.weights.dtype}{' per-ch' if scheme.weights.per_channel else ''}, "
                     f"a {scheme.activations.dtype}", target.description])
    return format_table(["target", "device", "backends", "int8 scheme", "description"], rows)

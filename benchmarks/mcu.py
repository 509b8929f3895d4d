"""Presso's Cortex-M backend on real models, run on the emulated boards, next to TFLite Micro.

Per model and board (``cortex-m4`` on QEMU ``mps2-an386``, ``cortex-m7`` on ``mps2-an500``,
``cortex-m55`` on ``mps3-an547``): does it compile and run; agreement with onnxruntime on the
same Q/DQ model (the largest difference of any output element, in quantization steps of that
output; 0 = bit-exact); top-1 agreement with the float model on real evaluation data (the
classifiers) and accuracy against the labels where there are labels; the static arena
against its liveness lower bound; flash (the model's text + rodata, kernels included); RAM
(arena + data + bss + peak stack, and the caller's input/output buffers); instructions per
inference (QEMU ``-icount shift=0`` with SysTick: instructions, not cycles).

Models: the digits CNN of ``benchmarks/training.py`` (trained here with ``finetune`` on
scikit-learn's digits, then PTQ int8 for the target), PP-OCR mobile cls (rendered text lines,
label = rotated 180°), magika (real files of this machine), and the ``onnx`` package's light
models (random inputs; no real data ships with them). One quantized model serves the three
boards: the three targets share one scheme.

TFLite Micro anchor: installing ``tflite-micro`` needs TensorFlow and ``onnx2tf`` to convert
the models (gigabytes), so it is not measured live here; the columns print the issue's
figures, labelled "as measured in the issue": PP-OCR cls ran only after rewriting HardSigmoid,
with a 136,800-byte arena and a 257,480-byte model; magika does not run (no ONE_HOT kernel,
then no int8 SQRT); the light ShuffleNet aborts inside ``invoke()``. TFLM's arena holds the
input and output tensors, so Presso's side of that comparison is arena + input/output
buffers; its model size is the flatbuffer alone (no interpreter or kernel code), Presso's
flash includes the kernel code.

    python benchmarks/mcu.py                              # everything, 32 eval samples
    python benchmarks/mcu.py --models cls --eval 100 --targets cortex-m4
    python benchmarks/mcu.py --quick                      # digits + cls, 8 samples, one board
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import presso
from presso.ir import Model, evaluate
from presso.ir.analysis.shapes import fix_input_shapes
from presso.ir.errors import PressoError, UnsupportedOpError
from presso.ir.table import format_table

TARGETS = ("cortex-m4", "cortex-m7", "cortex-m55")
ANCHORS = {  # TFLite Micro, as measured in the issue (tflite-micro + onnx2tf full-int8)
    "ppocr-cls": {"tflm": "runs (HardSigmoid rewritten)", "tflm_arena": 136_800, "tflm_model": 257_480},
    "magika": {"tflm": "does not run (no ONE_HOT; then no int8 SQRT)"},
    "light-shufflenet": {"tflm": "aborts inside invoke()"},
}


@dataclass
class Case:
    name: str
    model: Model
    calibration: list[dict[str, np.ndarray]]
    evaluation: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    classifier: bool = True
    method: str = "auto"  # calibration method (auto scores candidates: slow on big random-input models)
    notes: list[str] = field(default_factory=list)


# ---- the models -------------------------------------------------------------------------------
def digits_case(eval_count: int, epochs: int) -> Case:
    sys.path.insert(0, str(Path(__file__).parent))
    import training  # benchmarks/training.py: the digits data and CNN

    (x_train, y_train), (x_test, y_test) = training.digits()
    started = time.perf_counter()
    model = training.run(f"finetune{{epochs={epochs},lr=0.01,batch=32}}", training.cnn(), (x_train, y_train))
    fix_input_shapes(model, {"x": [1, 1, 8, 8]})
    case = Case("digits", model, [{"x": x_train[i:i + 1]} for i in range(128)],
                [{"x": x_test[i:i + 1]} for i in range(eval_count)], labels=y_test[:eval_count])
    seconds = time.perf_counter() - started
    case.notes.append(f"digits: float CNN trained with finetune ({epochs} epochs, {seconds:.0f} s), "
                      "then PTQ int8 with the target's scheme")
    return case


def cls_case(eval_count: int) -> Case:
    from presso.tools import zoo

    model = presso.load(zoo.ppocr_cls_model())
    fix_input_shapes(model, {"x": [1, 3, 48, 192]})
    calib, _ = zoo.ppocr_cls_inputs(64, seed=0)
    x, labels = zoo.ppocr_cls_inputs(eval_count, seed=1000)
    return Case("ppocr-cls", model, [{"x": calib[i:i + 1]} for i in range(len(calib))],
                [{"x": x[i:i + 1]} for i in range(eval_count)], labels=labels)


def magika_case(eval_count: int) -> Case:
    from presso.tools import zoo

    model = presso.load(zoo.magika_model())
    name = model.graph.inputs[0].name
    fix_input_shapes(model, {name: [1, 2048]})
    calib, _ = zoo.magika_dataset(64)
    feats, _ = zoo.magika_dataset(eval_count, skip=64)
    return Case("magika", model, [{name: calib[i:i + 1]} for i in range(len(calib))],
                [{name: feats[i:i + 1]} for i in range(len(feats))])


def light_cases(eval_count: int, only: str | None = None) -> list[Case]:
    from presso.tools import zoo

    cases = []
    for name, path in zoo.iter_light_models():
        if only and name != only:
            continue
        model = presso.load(path)
        spec = model.graph.inputs[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        fix_input_shapes(model, {spec.name: shape})
        rng = np.random.default_rng(0)
        feeds = [{spec.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8 + eval_count)]
        cases.append(Case(f"light-{name}", model, feeds[:8], feeds[8:], classifier=False, method="minmax"))
    return cases


# ---- measuring ----------------------------------------------------------------------------------
def measure(case: Case, targets: list[str], timeout: float) -> list[dict]:
    from presso.backends import get_target
    from presso.backends.mcu.report import fit_report

    rows = []
    fits = {t: fit_report(case.model, get_target(t)) for t in targets}  # int8 estimate from the float model
    if not any(f["fits"] for f in fits.values()):
        return [{"model": case.name, "target": t,
                 "runs": f"no: does not fit (int8 estimate: weights {fits[t]['weight_bytes']:,} B, arena "
                         f"{fits[t]['arena_bytes']:,} B)"} for t in targets]
    try:
        quantized = presso.quantize(case.model, case.calibration, target=targets[0], method=case.method,
                                    progress=False)
    except PressoError as exc:
        return [{"model": case.name, "target": t, "runs": f"no: quantize: {exc}"} for t in targets]
    reference = [evaluate(quantized, feed) for feed in case.evaluation]
    # onnxruntime against itself: its reference (DQ → float op → Q) and its fused int8 kernels
    fused = [evaluate(quantized, feed, optimization="all") for feed in case.evaluation]
    float_out = [evaluate(case.model, feed) for feed in case.evaluation] if case.classifier else None
    output = quantized.graph.outputs[0].name
    unsupported = None  # the kernels are the same for every board: one verdict serves all
    try:
        logit_steps = steps_before_softmax(quantized, case.evaluation)
    except PressoError:
        logit_steps = None  # the lowering fails; the compile below says why
    for target in targets:
        row = {"model": case.name, "target": target}
        rows.append(row)
        if unsupported:
            row["runs"] = unsupported
            continue
        try:
            start = time.perf_counter()
            artifact = presso.compile(quantized, target=target, backend="tvm", data=case.calibration[:1],
                                      timeout=timeout)
            row["compile_s"] = round(time.perf_counter() - start, 1)
            names = [s["name"] for s in artifact.manifest["inputs"]]
            batch = {n: np.concatenate([feed[n] for feed in case.evaluation]) for n in names}
            start = time.perf_counter()
            got = artifact.run(batch)
            row["qemu_s"] = round(time.perf_counter() - start, 1)
        except UnsupportedOpError as exc:
            row["runs"] = unsupported = f"no: {exc}"
            continue
        except PressoError as exc:
            row["runs"] = f"no: {exc}"
            continue
        row["runs"] = "yes"
        row["logit_steps"] = logit_steps
        spec = next(s for s in artifact.manifest["outputs"] if s["name"] == output)
        ref = np.concatenate([r[output] for r in reference])
        row["ort_self_steps"] = int(np.rint(np.abs(np.concatenate([r[output] for r in fused]) - ref).max()
                                            / spec["scale"]))
        row["max_diff_steps"] = int(np.rint(np.abs(got[output].reshape(ref.shape) - ref).max() / spec["scale"]))
        row["within_one_step"] = float(np.mean(np.abs(got[output].reshape(ref.shape) - ref) <= spec["scale"] * 1.001))
        if float_out is not None:
            top_float = np.concatenate([f[output] for f in float_out]).reshape(len(ref), -1).argmax(1)
            top_board = got[output].reshape(len(ref), -1).argmax(1)
            row["top1_vs_float"] = float(np.mean(top_board == top_float))
            top_qdq = ref.reshape(len(ref), -1).argmax(1)
            row["top1_qdq_vs_float"] = float(np.mean(top_qdq == top_float))
            if case.labels is not None:
                row["accuracy_board"] = float(np.mean(top_board == case.labels[:len(ref)]))
                row["accuracy_float"] = float(np.mean(top_float == case.labels[:len(ref)]))
        memory = artifact.manifest["memory"]
        stacks = [r.stack_bytes for r in artifact.last_runs]
        counts = sorted(r.instructions for r in artifact.last_runs)
        row.update(arena=memory["arena_bytes"], lower_bound=memory["arena_lower_bound"],
                   arena_ratio=memory["arena_ratio"], io=memory["io_bytes"], flash=memory["flash_bytes"],
                   weights=memory["weight_bytes"],
                   ram=memory["ram_bytes"] - (memory["peak_stack_bytes"] or 0) + max(stacks),
                   peak_stack=max(stacks), instructions=counts[len(counts) // 2], samples=len(counts))
    return rows


def steps_before_softmax(quantized: Model, feeds: list[dict[str, np.ndarray]]) -> int | None:
    """Largest difference, in steps, at the input of the model's last Softmax (the logits) between
    the integer program (the integer emulator, which the board matches bit for bit) and
    onnxruntime: a Softmax turns one step of a logit into several steps of its output."""
    from presso.backends.mcu import emulate, lower

    program = lower.lower(quantized)
    softmaxes = [op for op in program.ops if op.kind == "softmax"]
    if not softmaxes:
        return None
    logits = softmaxes[-1].inputs[0]
    worst = 0
    for feed in feeds:
        ins, _ = emulate.reference_int8(quantized, program, feed)
        ours = emulate.run_program(program, ins)[logits].astype(int).ravel()
        theirs = evaluate(quantized, feed, outputs=[program.model_tensor(logits)])[program.model_tensor(logits)]
        worst = max(worst, int(np.abs(ours - theirs.astype(int).ravel()).max()))
    return worst


def render(rows: list[dict]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    table = []
    for r in rows:
        if r.get("runs") != "yes":
            table.append([r["model"], r["target"], (r.get("runs") or "")[:70]] + [""] * 14)
            continue
        accuracy = ("-" if r.get("accuracy_board") is None
                    else f"{100 * r['accuracy_board']:.1f}/{100 * r['accuracy_float']:.1f}%")
        table.append([r["model"], r["target"], "yes", r["max_diff_steps"],
                      "-" if r.get("logit_steps") is None else r["logit_steps"], r["ort_self_steps"],
                      f"{100 * r['within_one_step']:.2f}%",
                      pct(r.get("top1_vs_float")), pct(r.get("top1_qdq_vs_float")), accuracy, f"{r['arena']:,}",
                      f"{r['lower_bound']:,}", f"{r['arena_ratio']:.3f}",
                      f"{r['flash']:,}", f"{r['ram']:,} (+{r['io']:,} io)", f"{r['peak_stack']:,}",
                      f"{r['instructions']:,}"])
    main = format_table(["model", "board", "runs", "max Δ steps", "Δ logits", "ORT vs ORT", "≤1 step", "top-1 vs float", "ORT Q/DQ top-1",
                         "acc board/float", "arena B", "bound B", "ratio", "flash B", "RAM B", "stack B",
                         "instr/inference"], table, align="llllllrrrrrrrrrrr")
    anchors = []
    for model in dict.fromkeys(r["model"] for r in rows):
        anchor = ANCHORS.get(model)
        ours = next((r for r in rows if r["model"] == model and r.get("runs") == "yes"), None)
        runs = "yes" if ours else "no"
        if anchor is None:
            anchors.append([model, runs, "not measured", "", "", "", ""])
            continue
        tflm_arena, tflm_model = anchor.get("tflm_arena"), anchor.get("tflm_model")
        cells = [model, runs, anchor["tflm"], f"{tflm_arena:,}" if tflm_arena else "-",
                 f"{tflm_model:,}" if tflm_model else "-"]
        if ours and tflm_arena:
            cells += [f"{ours['arena'] + ours['io']:,} ({(ours['arena'] + ours['io']) / tflm_arena:.2f}×)",
                      f"{ours['flash']:,} ({ours['flash'] / tflm_model:.2f}×)"]
        else:
            cells += ["-", "-"]
        anchors.append(cells)
    anchor_table = format_table(["model", "Presso runs", "TFLM (as measured in the issue)", "TFLM arena B",
                                 "TFLM model B", "Presso arena+io B", "Presso flash B"], anchors)
    return main + "\n\nTFLite Micro anchor (as measured in the issue; not re-measured here):\n" + anchor_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,cls,magika,light",
                        help="comma list: digits,cls,magika,light (all light models) or light-NAME (one)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--eval", type=int, default=32, help="evaluation samples per model (default 32)")
    parser.add_argument("--epochs", type=int, default=15, help="digits: training epochs")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per QEMU run")
    parser.add_argument("--quick", action="store_true", help="digits and cls, 8 samples, cortex-m4 only")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.targets, args.eval, args.epochs = "digits,cls", "cortex-m4", 8, 5
    from presso.backends.mcu import toolchain

    ok, why = toolchain.available()
    if not ok:
        print(f"cannot run: {why}")
        return 1
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    rows, notes = [], []
    for name in wanted:
        if name.startswith("light-"):
            cases = light_cases(min(args.eval, 4), only=name.removeprefix("light-"))
        else:
            cases = {"digits": lambda: [digits_case(args.eval, args.epochs)], "cls": lambda: [cls_case(args.eval)],
                     "magika": lambda: [magika_case(args.eval)], "light": lambda: light_cases(min(args.eval, 4))}[name]()
        for case in cases:
            started = time.perf_counter()
            case_rows = measure(case, targets, args.timeout)
            rows += case_rows
            notes += case.notes
            print(f"[{case.name}: {time.perf_counter() - started:.0f} s] " +
                  "; ".join(f"{r['target']} {r.get('runs', '')[:200]}" for r in case_rows), flush=True)
    print()
    print(render(rows))
    for note in notes:
        print(f"note: {note}")
    print("note: max Δ steps: the board against onnxruntime's reference execution of the same Q/DQ model "
          "(DQ → float op → Q); ORT vs ORT: that reference against onnxruntime's own fused int8 kernels "
          "(optimization level all): how far onnxruntime's two executions of one model disagree; Δ logits: "
          "the same as max Δ steps at the input of the last Softmax, which turns one step of a logit into "
          "several steps of a probability")
    print("note: light models use random inputs (no real data ships with them): no top-1 column; ≤1 step is the "
          "share of output elements within one quantization step of onnxruntime on the same Q/DQ model; "
          "ORT Q/DQ top-1: onnxruntime on the quantized model vs float (what quantization alone costs); acc: "
          "accuracy against the labels (cls: rotated or not) on the board / of the float model")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Presso vs onnxruntime's QNN tooling on the Hexagon NPU (QNN HTP, simulated on x86).

For magika, PP-OCRv4 det and PP-OCR mobile cls, side by side: nodes on the NPU (CPU fallback
off), agreement with the float model on the NPU, agreement of the same model on the CPU EP,
QNN compile time and context-binary size. Rows:

- ``presso qnn-htp``: ``presso.quantize(model, data, target="qnn-htp")`` then
  ``presso.compile(..., target="qnn-htp")`` (an EPContext artifact);
- ``presso qnn-htp a16w8``: the same with ``scheme="a16w8"`` (uint16 activations);
- ``presso cpu-x86``: Presso's int8 model for the CPU (the accuracy bar: the NPU may be at
  most 1 point below it), run on the CPU EP only;
- ``ort qnn tooling``: ``qnn_preprocess_model`` + ``get_qnn_qdq_config`` + ``quantize`` after
  fixing the input shapes (the anchor).

Agreement: magika and cls top-1 label equal to the float model's; det: IoU of the text mask
(probability > 0.3) with the float model's, averaged over pages. The simulator is slow (about
2.5–5 s per magika inference), so the defaults are small; the issue's sizes are
``--magika 300 --cls 200 --det 20``.

    python benchmarks/npu.py --models cls --cls 32
    python benchmarks/npu.py --magika 300 --cls 200 --det 20 --json npu.json
    python benchmarks/npu.py --light     # the onnx package's light models: fully on the HTP or why not
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def data_for(name: str, calib: int, count: int):
    from presso.tools import zoo

    if name == "magika":
        x, _ = zoo.magika_dataset(calib)
        e, _ = zoo.magika_dataset(count, skip=calib)
        return zoo.magika_model(), "bytes", x, e, [1, 2048]
    if name == "cls":
        x, _ = zoo.ppocr_cls_inputs(calib)
        e, _ = zoo.ppocr_cls_inputs(count, seed=10_000)
        return zoo.ppocr_cls_model(), "x", x, e, [1, 3, 48, 192]
    x = zoo.ppocr_det_inputs(calib)
    e = zoo.ppocr_det_inputs(count, seed=10_000)
    return zoo.ppocr_det_model(), "x", x, e, [1, 3, 320, 320]


def agreement(name: str, reference: list[np.ndarray], values: list[np.ndarray]) -> float:
    if name == "det":
        ious = []
        for r, v in zip(reference, values):
            a, b = r > 0.3, v > 0.3
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
        return float(np.mean(ious))
    return float(np.mean([int(np.argmax(r) == np.argmax(v)) for r, v in zip(reference, values)]))


def run_all(run, feeds) -> list[np.ndarray]:
    return [run(f) for f in feeds]


def cpu_runner(path_or_proto):
    import onnxruntime as ort

    data = path_or_proto.SerializeToString() if hasattr(path_or_proto, "SerializeToString") else str(path_or_proto)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)[0]


def presso_row(name, model_path, input_name, calib, feeds, reference, scheme, workdir):
    import presso

    start = time.perf_counter()
    q = presso.quantize(model_path, {input_name: calib}, target="qnn-htp", scheme=scheme, progress=False)
    quantize_s = time.perf_counter() - start
    artifact = presso.compile(q, target="qnn-htp", backend="onnxruntime", verify=False)
    folder = artifact.save(Path(workdir) / f"{name}-{scheme or 'default'}")
    loaded = presso.load_artifact(folder)
    qnn = loaded.manifest["qnn"]
    htp = run_all(lambda f: next(iter(loaded.run(f).values())), feeds)
    cpu = run_all(cpu_runner(q.to_proto()), feeds)
    return {"nodes_on_npu": f"{qnn['on_npu']}/{qnn['nodes']}", "fraction_on_npu": qnn["fraction_on_npu"],
            "agree_npu": agreement(name, reference, htp), "agree_cpu": agreement(name, reference, cpu),
            "compile_s": qnn["compile_s"], "context_bytes": qnn["context_binary_bytes"], "quantize_s": quantize_s}


def cpu_x86_row(name, model_path, input_name, calib, feeds, reference, shape):
    import presso
    from presso.ir import fix_input_shapes

    model = presso.load(model_path)
    fix_input_shapes(model, {input_name: shape})
    q = presso.quantize(model, {input_name: calib}, target="cpu-x86", progress=False)
    cpu = run_all(cpu_runner(q.to_proto()), feeds)
    return {"agree_cpu": agreement(name, reference, cpu)}


def ort_row(name, model_path, input_name, calib, feeds, reference, shape, workdir):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    import presso
    from presso.backends.onnxruntime.qnn import open_qnn_session, qnn_support
    from presso.ir import fix_input_shapes

    model = presso.load(model_path)
    fix_input_shapes(model, {input_name: shape})
    fixed = Path(workdir) / f"{name}-fixed.onnx"
    onnx.save(model.to_proto(), fixed)
    pre = Path(workdir) / f"{name}-pre.onnx"
    if not qnn_preprocess_model(str(fixed), str(pre), fuse_layernorm=True):
        pre = fixed

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    out = Path(workdir) / f"{name}-ort-qnn.onnx"
    config = get_qnn_qdq_config(str(pre), Reader(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=True)
    quantize(str(pre), str(out), config)
    support = qnn_support(out)
    row = {"nodes_on_npu": f"{len(support.supported)}/{support.total}", "fraction_on_npu": support.fraction,
           "agree_cpu": agreement(name, reference, run_all(cpu_runner(out), feeds))}
    if support.ok:
        start = time.perf_counter()
        session = open_qnn_session(out)
        row["compile_s"] = time.perf_counter() - start
        row["agree_npu"] = agreement(name, reference, run_all(lambda f: session.run(None, f)[0], feeds))
    else:
        row["error"] = support.error or support.describe(3)
    return row


def light_models(samples: int = 2) -> dict:
    """Every light model of the onnx package's backend test data: quantized for qnn-htp on
    random inputs (structure, not accuracy), then QNN's verdict: fully on the HTP or why not."""
    import presso
    from presso.backends.onnxruntime.qnn import qnn_support
    from presso.ir import random_feeds
    from presso.tools import zoo

    results = {}
    for name, path in zoo.iter_light_models():
        start = time.perf_counter()
        try:
            model = presso.load(path)
            feeds = random_feeds(model, samples, seed=0)
            q = presso.quantize(model, feeds, target="qnn-htp", method="minmax", bias_correction=False,
                                progress=False)
            support = qnn_support(q.to_proto())
            reasons = sorted({f"{v.op}: {v.reason}" for v in support.unsupported})
            results[name] = {"fully_on_npu": support.ok, "nodes_on_npu": f"{len(support.supported)}/{support.total}",
                             "why_not": reasons or ([support.error] if support.error else [])}
        except Exception as exc:  # a model Presso cannot quantize is a result too
            results[name] = {"fully_on_npu": False, "why_not": [f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"]}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        r = results[name]
        print(f"{name:14s} {'yes' if r['fully_on_npu'] else 'no ':4s} {r.get('nodes_on_npu', '-'):>11s} "
              f"{'; '.join(r['why_not'])[:160]}")
        sys.stdout.flush()
    full = sum(r["fully_on_npu"] for r in results.values())
    print(f"{full} of {len(results)} light models run fully on the HTP")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="magika,cls,det")
    parser.add_argument("--magika", type=int, default=24, help="eval files (issue: 300)")
    parser.add_argument("--cls", type=int, default=32, help="eval lines (issue: 200)")
    parser.add_argument("--det", type=int, default=4, help="eval pages (issue: 20)")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--rows", default="presso,a16w8,cpu-x86,ort")
    parser.add_argument("--json", metavar="OUT.json")
    parser.add_argument("--light", action="store_true",
                        help="instead: which light models of the onnx package run fully on the HTP, and why not")
    args = parser.parse_args(argv)
    if args.light:
        results = light_models()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        return 0
    rows = args.rows.split(",")
    results = {}
    with tempfile.TemporaryDirectory(prefix="presso-npu-") as workdir:
        for name in args.models.split(","):
            count = getattr(args, name)
            model_path, input_name, calib, evals, shape = data_for(name, min(args.calib, 16 if name == "det" else args.calib), count)
            feeds = [{input_name: evals[i:i + 1]} for i in range(len(evals))]
            reference = run_all(cpu_runner(model_path), feeds)
            table = {}
            if "presso" in rows:
                table["presso qnn-htp"] = presso_row(name, model_path, input_name, calib, feeds, reference, None, workdir)
            if "a16w8" in rows:
                table["presso qnn-htp a16w8"] = presso_row(name, model_path, input_name, calib, feeds, reference,
                                                           "a16w8", workdir)
            if "cpu-x86" in rows:
                table["presso cpu-x86 (CPU only)"] = cpu_x86_row(name, model_path, input_name, calib, feeds, reference,
                                                                 shape)
            if "ort" in rows:
                try:
                    table["ort qnn tooling"] = ort_row(name, model_path, input_name, calib, feeds, reference, shape,
                                                       workdir)
                except Exception as exc:  # the anchor failing is a result, not a crash
                    table["ort qnn tooling"] = {"error": str(exc).splitlines()[0][:200]}
            results[name] = {"eval": count, "rows": table}
            print(f"\n{name} ({count} eval samples, agreement with float: "
                  f"{'mask IoU' if name == 'det' else 'top-1'})")
            print(f"{'':28s} {'on NPU':>11s} {'NPU agree':>9s} {'CPU agree':>9s} {'compile s':>9s} {'context':>9s}")
            for label, r in table.items():
                def f(key, fmt):
                    return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else str(r.get(key, "-"))
                print(f"{label:28s} {str(r.get('nodes_on_npu', '-')):>11s} {f('agree_npu', '.3f'):>9s} "
                      f"{f('agree_cpu', '.3f'):>9s} {f('compile_s', '.2f'):>9s} "
                      f"{(str(r['context_bytes'] // 1024) + ' KiB') if 'context_bytes' in r else '-':>9s}"
                      + (f"  {r['error']}" if r.get("error") else ""))
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

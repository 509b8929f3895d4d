"""Quantize magika, PP-OCRv4 det and PP-OCR mobile cls with Presso, onnxruntime and NNCF.

For each model and quantizer, on the same calibration data, prints: task accuracy, latency
ratio to the float model in onnxruntime (interleaved runs, measured in this run), file size
ratio, quantization wall time and peak memory. Every quantization runs in a fresh subprocess
so that its wall time and peak RSS are its own.

    python benchmarks/quantization.py                  # all three models
    python benchmarks/quantization.py --models cls --quick
    python benchmarks/quantization.py --json out.json

Accuracy: magika — top-1 label on real files of this machine, agreement with the float model
and accuracy against the label implied by the file's extension (where unambiguous); det —
agreement of the text mask (probability > 0.3, rapidocr's threshold) with the float model's
mask (IoU) on rendered text images; cls — top-1 against the upright/rotated label of rendered
text lines and agreement with the float model.

NNCF runs with the Python given by --nncf-python (default: ../.venv-nncf/bin/python beside
this checkout's .venv), because it pins packages differently from the project.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NNCF_PYTHON = ROOT / ".venv-nncf" / "bin" / "python"

# extension → magika label, only where the extension leaves no doubt about the content type
EXTENSION_LABELS = {
    ".py": "python", ".json": "json", ".xml": "xml", ".html": "html", ".htm": "html", ".sh": "shell",
    ".c": "c", ".cpp": "cpp", ".cc": "cpp", ".md": "markdown", ".png": "png", ".gz": "gzip", ".css": "css",
    ".js": "javascript", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".rst": "rst",
    ".csv": "csv", ".svg": "svg", ".jpg": "jpeg", ".jpeg": "jpeg", ".zip": "zip", ".pdf": "pdf", ".pl": "perl",
    ".rb": "ruby", ".pem": "pem", ".crt": "pem", ".pyc": "pythonbytecode", ".so": "elf", ".gif": "gif",
    ".ttf": "ttf", ".whl": "zip", ".jar": "jar", ".tcl": "tcl", ".go": "go", ".rs": "rust", ".java": "java",
    ".txt": "txt", ".pyi": "python", ".bz2": "bzip", ".xz": "xz", ".tar": "tar", ".lua": "lua", ".php": "php",
}

# What onnxruntime's and NNCF's quantizers need and cannot do themselves on these models
# (issue 3): weights as initializers, folded constants and BN, opset ≥ 13 for per-channel.
LEGALIZE_FOR_QUANTIZERS = ("constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,"
                           "eliminate-dead-code,upgrade-opset{version=13}")


# ---- data ---------------------------------------------------------------------------------------
def prepare(name: str, quick: bool, workdir: Path) -> dict:
    """Float model (legalized the same way for every quantizer), calibration and eval data."""
    import presso
    from presso.ir import fix_input_shapes
    from presso.passes import PassManager
    from presso.tools import zoo

    if name == "magika":
        calib, _ = zoo.magika_dataset(64 if quick else 200, seed=0)
        evalx, files = zoo.magika_dataset(150 if quick else 600, seed=1)
        source, input_name, shape = zoo.magika_model(), "bytes", [1, 2048]
        labels = zoo.magika_labels()
        extra = {"files": [str(f) for f in files], "labels": labels}
    elif name == "det":
        calib = zoo.ppocr_det_inputs(8 if quick else 16, size=320, seed=0)
        evalx = zoo.ppocr_det_inputs(6 if quick else 16, size=320, seed=1000)
        source, input_name, shape = zoo.ppocr_det_model(), "x", [1, 3, 320, 320]
        extra = {}
    elif name == "cls":
        calib, _ = zoo.ppocr_cls_inputs(64 if quick else 128, seed=0)
        evalx, truth = zoo.ppocr_cls_inputs(100 if quick else 400, seed=5000)
        source, input_name, shape = zoo.ppocr_cls_model(), "x", [1, 3, 48, 192]
        extra = {"truth": truth}
    else:
        raise SystemExit(f"unknown model {name}")
    model = presso.load(source)
    fix_input_shapes(model, {input_name: shape})
    PassManager.parse(LEGALIZE_FOR_QUANTIZERS).run(model)
    float_path = workdir / f"{name}_float.onnx"
    presso.save(model, float_path)
    calib_path = workdir / f"{name}_calib.npz"
    np.savez(calib_path, **{input_name: calib})
    return {"name": name, "float": float_path, "source": Path(source), "calib": calib_path, "input": input_name,
            "eval": evalx, **extra}


# ---- one quantization, in a subprocess ----------------------------------------------------------
def worker(job: dict) -> dict:
    """Run one quantization job and return its wall time and peak memory (RSS) increase."""
    calib = dict(np.load(job["calib"]))
    (input_name, values), = calib.items()
    tool, method = job["tool"], job["method"]
    functions = {"presso": _presso, "ort": _ort, "nncf": _nncf}
    if tool not in functions:
        raise SystemExit(f"unknown tool {tool}")
    # Import the tool first, so that the memory measured is the quantization's, not the imports'.
    {"presso": lambda: __import__("presso"), "ort": lambda: __import__("onnxruntime.quantization"),
     "nncf": lambda: __import__("nncf")}[tool]()
    baseline_kb = _rss_kb()
    start = time.perf_counter()
    info = functions[tool](job, values, input_name, method) or {}
    seconds = info.pop("quant_seconds", time.perf_counter() - start)
    # the process's high-water mark (for Presso: before compiling, which is not quantization)
    peak_kb = info.pop("quant_peak_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {"seconds": seconds, "peak_mb": max(peak_kb - baseline_kb, 0) / 1024, **info}


def _rss_kb() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _presso(job: dict, values: np.ndarray, input_name: str, method: str) -> dict:
    import presso

    start = time.perf_counter()
    model = presso.load(job["float"])
    data = [{input_name: values[i:i + 1]} for i in range(len(values))]
    if hasattr(presso, "quantize"):
        kwargs = {} if method == "default" else {"method": method}
        quantized, report = presso.quantize(model, data, target="cpu-x86", progress=False, report=True, **kwargs)
        calibrate = next(r for r in report.records if r.name == "calibrate").result.stats
        chosen = calibrate.get("chosen")
    else:  # before the one-call API exists: the same passes by hand
        from presso.passes import PassManager, available_passes

        calibrate = "calibrate" if method == "default" else f"calibrate{{method={method}}}"
        pipeline = f"insert-qdq,{calibrate}" + (",fold-qdq" if "fold-qdq" in available_passes() else "")
        PassManager.parse(pipeline).run(model, data=data, target=presso.backends.get_target("cpu-x86"))
        quantized, chosen = model, None
    quant_seconds = time.perf_counter() - start
    quant_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Delivering it: the onnxruntime backend times the int8 forms on this CPU and keeps the fastest.
    start = time.perf_counter()
    artifact = presso.compile(quantized, target="cpu-x86", backend="onnxruntime", data=data[:1])
    presso.save(artifact.model, job["out"])
    form = artifact.manifest.get("int8_form") or {}
    return {"quant_seconds": quant_seconds, "quant_peak_kb": quant_peak_kb, "compile_seconds": time.perf_counter() - start,
            "int8_form": form.get("chosen"), "form_relative": form.get("relative"), "calibration": chosen}


def _ort(job: dict, values: np.ndarray, input_name: str, method: str) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: values[i:i + 1]} for i in range(len(values))])

        def get_next(self):
            return next(self.items, None)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    # onnxruntime's recommendation for x86-64 with AVX2: u8 activations, s8 per-channel weights, QDQ.
    quantize_static(job["float"], job["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method])


def _nncf(job: dict, values: np.ndarray, input_name: str, method: str) -> None:
    import nncf
    import onnx

    model = onnx.load(job["float"])
    dataset = nncf.Dataset([{input_name: values[i:i + 1]} for i in range(len(values))])
    quantized = nncf.quantize(model, dataset, subset_size=len(values))
    onnx.save(quantized, job["out"])


def run_job(job: dict, python: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({k: str(v) if isinstance(v, Path) else v for k, v in job.items()}, handle)
        spec = handle.name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORT_LOGGING_LEVEL": "3"}
    proc = subprocess.run([python, __file__, "--worker", spec], capture_output=True, text=True, env=env)
    os.unlink(spec)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- evaluation ---------------------------------------------------------------------------------
def outputs(path: Path, feeds: np.ndarray, input_name: str) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {input_name: feeds[i:i + 1]})[0] for i in range(len(feeds))])


def accuracy(spec: dict, reference: np.ndarray, result: np.ndarray) -> dict:
    name = spec["name"]
    if name == "magika":
        labels = spec["labels"]
        ref_top, top = reference.argmax(-1), result.argmax(-1)
        known = [(i, EXTENSION_LABELS[Path(f).suffix.lower()]) for i, f in enumerate(spec["files"])
                 if Path(f).suffix.lower() in EXTENSION_LABELS and EXTENSION_LABELS[Path(f).suffix.lower()] in labels]
        hits = sum(labels[top[i]] == label for i, label in known)
        return {"agree_float": float(np.mean(ref_top == top)), "acc_ext": hits / max(len(known), 1),
                "n_ext": len(known), "metric": "top-1 = float"}
    if name == "det":
        ref_mask, mask = reference > 0.3, result > 0.3
        union = np.logical_or(ref_mask, mask).sum()
        return {"agree_float": float(np.logical_and(ref_mask, mask).sum() / union) if union else 1.0,
                "mean_abs": float(np.abs(reference - result).mean()), "metric": "mask IoU vs float"}
    truth = spec["truth"]
    return {"agree_float": float(np.mean(reference.argmax(-1) == result.argmax(-1))),
            "acc_label": float(np.mean(result.argmax(-1) == truth)), "metric": "top-1 = float"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="magika,det,cls")
    parser.add_argument("--quick", action="store_true", help="fewer samples and runs")
    parser.add_argument("--nncf-python", default=str(DEFAULT_NNCF_PYTHON))
    parser.add_argument("--presso-methods", default="default,minmax,entropy,percentile")
    parser.add_argument("--ort-methods", default="minmax,entropy,percentile")
    parser.add_argument("--runs", type=int, default=None, help="interleaved latency runs per model")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--workdir", default=None, help="keep the quantized models here")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse quantized models (and their timings) already in --workdir")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return

    import presso

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="presso-qbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs = args.runs or (10 if args.quick else 30)
    results = []
    nncf_ok = Path(args.nncf_python).is_file()
    if not nncf_ok:
        print(f"note: no NNCF python at {args.nncf_python}; skipping NNCF "
              "(python -m venv .venv-nncf && .venv-nncf/bin/pip install nncf onnx onnxruntime)")
    for name in args.models.split(","):
        spec = prepare(name, args.quick, workdir)
        jobs = [("presso", m) for m in args.presso_methods.split(",") if m]
        jobs += [("ort", m) for m in args.ort_methods.split(",") if m]
        if nncf_ok:
            jobs.append(("nncf", "default"))
        reference = outputs(spec["float"], spec["eval"], spec["input"])
        float_size = spec["float"].stat().st_size
        rows = [{"model": name, "tool": "float", "method": "-", "path": spec["float"], "size_ratio": 1.0,
                 **accuracy(spec, reference, reference)}]
        if name == "cls":
            rows[0]["acc_label"] = float(np.mean(reference.argmax(-1) == spec["truth"]))
        for tool, method in jobs:
            out = workdir / f"{name}_{tool}_{method}.onnx"
            job = {"tool": tool, "method": method, "float": spec["float"], "calib": spec["calib"], "out": out}
            record = out.with_suffix(".json")
            if args.reuse and out.is_file() and record.is_file():
                info = json.loads(record.read_text())
            else:
                info = run_job(job, args.nncf_python if tool == "nncf" else sys.executable)
                record.write_text(json.dumps(info))
            row = {"model": name, "tool": tool, "method": method, "path": out, **info}
            if "error" not in info:
                row["size_ratio"] = out.stat().st_size / float_size
                row.update(accuracy(spec, reference, outputs(out, spec["eval"], spec["input"])))
            print(f"  {name:6s} {tool:6s} {method:10s} " + (info.get("error") or
                  f"{info['seconds']:.1f}s agree {row['agree_float']:.4f}"), flush=True)
            rows.append(row)
        ok = [r for r in rows if "error" not in r]
        feed = {spec["input"]: spec["eval"][:1]}
        report = presso.bench([r["path"] for r in ok], [feed], threads=(1,), runs=runs, samples=1,
                              names=[f"{r['tool']}:{r['method']}" for r in ok])
        for r, bench_row in zip(ok, report.rows):
            r["latency_ratio"] = report.latency_ratio(bench_row, "threads=1")
            r["latency_ms"] = bench_row.latency["threads=1"]["median_ms"]
        results.extend(rows)
        print(table(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def table(rows: list[dict]) -> str:
    from presso.ir.table import format_table

    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["model"], r["tool"], r["method"], "failed: " + r["error"][:80]] + [""] * 6)
            continue
        acc = f"{100 * r['agree_float']:.2f}%"
        extra = ""
        if "acc_ext" in r:
            extra = f"ext {100 * r['acc_ext']:.1f}% (n={r['n_ext']})"
        elif "acc_label" in r:
            extra = f"label {100 * r['acc_label']:.1f}%"
        elif "mean_abs" in r:
            extra = f"mean|Δ| {r['mean_abs']:.4f}"
        method = r["method"] + (f" → {r['calibration']}" if r.get("calibration") else "")
        cells.append([r["model"], r["tool"], method, acc, extra,
                      f"{r.get('latency_ratio', float('nan')):.2f}", f"{r['size_ratio']:.3f}",
                      f"{r['seconds']:.1f}" if "seconds" in r else "-",
                      f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-", r.get("int8_form") or ""])
    return format_table(["model", "tool", "method", "agree w/ float", "task", "latency ×", "size ×",
                         "quant s", "peak MB", "int8 form"], cells, align="llllrrrrrl")


if __name__ == "__main__":
    main()

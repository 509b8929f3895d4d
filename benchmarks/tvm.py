"""TVM/onnxruntime latency ratios on PP-OCRv4 det, PP-OCR cls and magika: float and int8 (QDQ).

    python benchmarks/tvm.py [--models det,cls,magika] [--threads 1,2] [--tune N] [--int8 [--int8-modes arith,float]]

Both engines run in the same process on the same inputs with the same thread count (each
count in ``--threads``: onnxruntime's intra-op threads, TVM's thread pool); the ratio is TVM
median / onnxruntime median (< 1 means TVM is faster), each the best of three interleaved
rounds of 10 runs, so that load from other processes hits both alike. Also prints the
compile time and the max abs/relative error of TVM against onnxruntime. int8 models are QDQ models made with
onnxruntime's quantize_static (calibrated on the zoo's real inputs; 7-bit weights, as on cpu-x86,
so that onnxruntime's u8·s8 kernels do not saturate without AVX-VNNI); TVM compiles them once
per ``--int8-modes`` entry (arith: int8 operands, int32 accumulation; float: dequantized floats)
against the same onnxruntime int8 baseline.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

# This file is named tvm.py: keep its folder off sys.path so that `import tvm` finds TVM.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice on every bias
# TVM sizes its thread pool once, at first use, and by default assumes two hardware threads per
# core (one thread on a 2-vCPU machine): allow every core, then pick the count per measurement.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import numpy as np
import onnxruntime as ort

import presso
from presso.backends import compile
from presso.ir import fix_input_shapes
from presso.tools import zoo

MODELS = {
    "det": (zoo.ppocr_det_model, lambda: {"x": zoo.ppocr_det_inputs(1, size=320)[:1]}),
    "cls": (zoo.ppocr_cls_model, lambda: {"x": zoo.ppocr_cls_inputs(1)[0][:1]}),
    "magika": (zoo.magika_model, lambda: {"bytes": zoo.magika_dataset(4)[0][:1].astype(np.int32)}),
}


def ort_session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def median_ms(fn, runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def interleaved_ms(run_ort, run_tvm, rounds: int = 3) -> tuple[float, float]:
    """Best-of-``rounds`` medians of both engines, measured alternately."""
    for _ in range(3):
        run_ort()
        run_tvm()
    ort_ms, tvm_ms = [], []
    for _ in range(rounds):
        ort_ms.append(median_ms(run_ort))
        tvm_ms.append(median_ms(run_tvm))
    return min(ort_ms), min(tvm_ms)


def set_tvm_threads(count: int) -> None:
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, count)


def quantize(path: str, feeds: dict, out: str) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([feeds])

        def get_next(self):
            return next(self.items, None)

    quantize_static(path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,cls,magika")
    parser.add_argument("--tune", type=int, default=0, help="MetaSchedule trials per model (0 = untuned)")
    parser.add_argument("--tune-dir", help="keep the artifacts and their tuning databases here: a later run "
                                           "reuses the tuned kernels and tunes only the rest")
    parser.add_argument("--int8", action="store_true", help="also measure QDQ int8 models")
    parser.add_argument("--int8-modes", default="arith,float", help="TVM int8 modes to compile the int8 model with")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}",
                        help="thread counts to measure (comma-separated; default: 1 and all cores)")
    args = parser.parse_args()
    thread_counts = sorted({int(n) for n in args.threads.split(",")})
    print(f"{'model':18s} {'thr':>3s} {'ort ms':>8s} {'tvm ms':>8s} {'ratio':>6s} {'build s':>8s} "
          f"{'max abs':>9s} {'rel':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model_path, make_feeds = MODELS[name]
            feeds = make_feeds()
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            fixed = presso.load(model_path())
            fix_input_shapes(fixed, shapes)
            float_path = os.path.join(tmp, f"{name}.onnx")
            presso.save(fixed, float_path)
            variants = [("float", float_path, None)]
            if args.int8:
                int8_path = quantize(float_path, feeds, os.path.join(tmp, f"{name}.int8.onnx"))
                variants += [(f"int8-{mode}", int8_path, mode) for mode in args.int8_modes.split(",")]
            for kind, path, int8_mode in variants:
                session = ort_session(path, max(thread_counts))
                want = session.run(None, feeds)[0]
                start = time.perf_counter()
                artifact = compile(presso.load(path), "cpu-x86", "tvm", shapes=shapes, tune_trials=args.tune,
                                   output=os.path.join(args.tune_dir or tmp, f"{name}-{kind}"), progress=False,
                                   int8=int8_mode)
                build_s = time.perf_counter() - start
                got = list(artifact.run(feeds).values())[0]
                err = float(np.abs(got - want).max())
                rel = err / max(float(np.abs(want).max()), 1e-12)
                for threads in thread_counts:
                    session = ort_session(path, threads)
                    set_tvm_threads(threads)
                    t_ort, t_tvm = interleaved_ms(lambda: session.run(None, feeds), lambda: artifact.run(feeds))
                    print(f"{name + ' ' + kind:18s} {threads:3d} {t_ort:8.2f} {t_tvm:8.2f} {t_tvm / t_ort:6.2f} "
                          f"{build_s:8.1f} {err:9.2e} {rel:8.1e}", flush=True)
                tuning = artifact.manifest.get("tuning") or {}
                if "tasks" in tuning:
                    print(f"{'':18s} tuned: {tuning['trials']} trials, {tuning['seconds']} s; "
                          f"{tuning['tasks']} kernels, {tuning['tasks_reused']} from the database", flush=True)


if __name__ == "__main__":
    main()

"""TVM/onnxruntime latency ratios on PP-OCRv4 det, PP-OCR cls and magika: float and int8 (QDQ).

    python benchmarks/tvm.py [--models det,cls,magika] [--tune N] [--int8]

Both engines run in the same process on the same inputs with the same thread count; the
ratio is TVM median / onnxruntime median (< 1 means TVM is faster). Also prints the max
abs/relative error of TVM against onnxruntime. int8 models are QDQ models made with
onnxruntime's quantize_static (calibrated on the zoo's real inputs).
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


def median_ms(fn, runs: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def quantize(path: str, feeds: dict, out: str) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([feeds])

        def get_next(self):
            return next(self.items, None)

    quantize_static(path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,cls,magika")
    parser.add_argument("--tune", type=int, default=0, help="MetaSchedule trials per model (0 = untuned)")
    parser.add_argument("--int8", action="store_true", help="also measure QDQ int8 models")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    print(f"{'model':14s} {'ort ms':>8s} {'tvm ms':>8s} {'ratio':>6s} {'build s':>8s} {'max abs':>9s} {'rel':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model_path, make_feeds = MODELS[name]
            feeds = make_feeds()
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            fixed = presso.load(model_path())
            fix_input_shapes(fixed, shapes)
            float_path = os.path.join(tmp, f"{name}.onnx")
            presso.save(fixed, float_path)
            variants = [("float", float_path)]
            if args.int8:
                variants.append(("int8", quantize(float_path, feeds, os.path.join(tmp, f"{name}.int8.onnx"))))
            for kind, path in variants:
                session = ort_session(path, threads)
                want = session.run(None, feeds)[0]
                start = time.perf_counter()
                artifact = compile(presso.load(path), "cpu-x86", "tvm", shapes=shapes, tune_trials=args.tune,
                                   output=os.path.join(tmp, f"{name}-{kind}"), progress=False)
                build_s = time.perf_counter() - start
                got = list(artifact.run(feeds).values())[0]
                err = float(np.abs(got - want).max())
                rel = err / max(float(np.abs(want).max()), 1e-12)
                t_ort = median_ms(lambda: session.run(None, feeds))
                t_tvm = median_ms(lambda: artifact.run(feeds))
                t_ort = min(t_ort, median_ms(lambda: session.run(None, feeds)))  # interleave: less drift
                print(f"{name + ' ' + kind:14s} {t_ort:8.2f} {t_tvm:8.2f} {t_tvm / t_ort:6.2f} {build_s:8.1f} "
                      f"{err:9.2e} {rel:8.1e}", flush=True)


if __name__ == "__main__":
    main()

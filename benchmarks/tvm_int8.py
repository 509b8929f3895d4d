"""TVM int8 modes on PP-OCR cls and magika: integer arithmetic vs float math vs onnxruntime int8.

    python benchmarks/tvm_int8.py [--models cls,magika] [--samples 100] [--rounds 15]

Quantizes each model with ``presso.quantize`` for cpu-x86 (uint8 activations, 7-bit
per-channel int8 weights), compiles it with ``--int8 arith`` and ``--int8 float``, and prints

- agreement with onnxruntime running the same QDQ model on real inputs: the logits' error in
  units of their quantization step (the last QuantizeLinear's scale; max, mean, share of
  values off) and top-1 agreement;
- latency on one thread (TVM's pool and onnxruntime's intra-op threads set to 1), measured
  interleaved: median wall time and median CPU time of the calling thread. On a shared machine
  the thread CPU time is the steadier of the two (it leaves out the time the thread waited).
  Also onnxruntime on the float model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# This folder holds tvm.py: keep it off sys.path so that `import tvm` finds TVM.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
os.environ["TVM_NUM_THREADS"] = "1"

import numpy as np
import onnx
import onnxruntime as ort

import presso
from presso.backends import compile
from presso.ir import fix_input_shapes
from presso.tools import zoo


def real_inputs(name: str, count: int, seed: int) -> np.ndarray:
    if name == "cls":
        return zoo.ppocr_cls_inputs(count, seed=seed)[0]
    return zoo.magika_dataset(count, seed=seed)[0].astype(np.int32)


def with_logits_output(model: presso.Model) -> tuple[presso.Model, str, float]:
    """The model with the last QuantizeLinear's dequantized output as an extra output."""
    proto = model.to_proto()
    q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"][-1]
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    scale = float(np.asarray(onnx.numpy_helper.to_array(
        next(i for i in proto.graph.initializer if i.name == q.input[1]))).ravel()[0])
    proto.graph.output.append(onnx.helper.make_tensor_value_info(dq.output[0], onnx.TensorProto.FLOAT, None))
    return presso.load(proto, check=False), dq.output[0], scale


def session(model_or_path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    data = model_or_path if isinstance(model_or_path, str) else model_or_path.to_proto().SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def timed(fns: dict, rounds: int, per_round: int = 5) -> dict[str, tuple[float, float]]:
    """{name: (median wall ms, median thread-CPU ms)}, the functions run interleaved."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c, t = time.thread_time(), time.perf_counter()
            for _ in range(per_round):
                fn()
            wall[name].append((time.perf_counter() - t) / per_round * 1e3)
            cpu[name].append((time.thread_time() - c) / per_round * 1e3)
    return {k: (float(np.median(wall[k])), float(np.median(cpu[k]))) for k in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cls,magika")
    parser.add_argument("--samples", type=int, default=100, help="real inputs for the agreement check")
    parser.add_argument("--calib", type=int, default=16, help="calibration inputs")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = presso.load(zoo.ppocr_cls_model() if name == "cls" else zoo.magika_model())
            inp = model.input_names()[0]
            calib = real_inputs(name, args.calib, seed=0)
            fix_input_shapes(model, {inp: [1, *calib.shape[1:]]})
            quantized = presso.quantize(model, [{inp: row[None]} for row in calib], target="cpu-x86", progress=False)
            probe, logits, step = with_logits_output(quantized)
            reference = session(probe)
            feeds = [{inp: row[None]} for row in real_inputs(name, args.samples, seed=11)]
            wants = [reference.run(None, f) for f in feeds]
            fns = {"onnxruntime int8": (lambda s=session(quantized): s.run(None, feeds[0])),
                   "onnxruntime float": (lambda s=session(model): s.run(None, feeds[0]))}
            print(f"\n{name}: {len(feeds)} real inputs; logits step {step:.4g}")
            print(f"{'mode':18s} {'build s':>7s} {'conv':>5s} {'mm':>4s} {'avx2':>5s} {'max step':>8s} "
                  f"{'mean':>6s} {'off':>6s} {'top-1':>6s}")
            for mode in ("arith", "float"):
                start = time.perf_counter()
                artifact = compile(probe, "cpu-x86", "tvm", output=os.path.join(tmp, f"{name}-{mode}"), int8=mode)
                build = time.perf_counter() - start
                gots = [artifact.run(f) for f in feeds]
                steps = np.concatenate([np.abs(g[logits] - w[1]).ravel() / step for g, w in zip(gots, wants)])
                top1 = np.mean([list(g.values())[0].argmax() == w[0].argmax() for g, w in zip(gots, wants)])
                report = artifact.manifest["int8"]
                print(f"tvm {mode:14s} {build:7.1f} {report['conv2d']:5d} {report['matmul']:4d} "
                      f"{report.get('avx2_kernels', 0):5d} {steps.max():8.2f} {steps.mean():6.3f} "
                      f"{np.mean(steps > 0.01):6.3f} {top1:6.3f}", flush=True)
                fns[f"tvm {mode}"] = lambda a=artifact: a.run(feeds[0])
            print(f"{'1 thread':18s} {'wall ms':>9s} {'thread-CPU ms':>14s}")
            for label, (wall, cpu) in timed(fns, args.rounds).items():
                print(f"{label:18s} {wall:9.2f} {cpu:14.2f}", flush=True)


if __name__ == "__main__":
    main()

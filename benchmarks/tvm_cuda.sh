#!/bin/bash
# TVM CUDA artifacts (compiled on the CPU machine with nvcc, sm_90) run on an NVIDIA GPU.
# Runs on the device machine with `.tvmcuda` carried: it holds the artifacts (model.so +
# manifest + the shape-fixed reference.onnx + feeds.npz) and a runtime-only TVM for Python 3.12.
# Prints TVM-CUDA latency, onnxruntime latency (CUDA EP when onnxruntime-gpu is there, else CPU)
# and the max abs/relative error against onnxruntime.
set -e
python3 -m pip install -q --no-index --no-deps --target /tmp/site .tvmcuda/rt/whl/*.whl
export PYTHONPATH=/tmp/site:.tvmcuda/rt:$PYTHONPATH TVM_USE_RUNTIME_LIB=1
# libcudart.so.13 for TVM's CUDA runtime: the toolkit's, or the one pip's nvidia packages ship.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c "import nvidia, os; print(' '.join(os.path.join(p, 'cu13', 'lib') + ' ' + os.path.join(p, 'cuda_runtime', 'lib') for p in nvidia.__path__))" 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:$LD_LIBRARY_PATH"
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 - <<'PY'
import json, time, glob, os
import ctypes
import numpy as np, onnxruntime as ort, tvm
# Runtime-only TVM (no compiler library): load the CUDA runtime module loader explicitly.
ctypes.CDLL(os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
from tvm.runtime.vm import VirtualMachine
dev = tvm.cuda(0)
import subprocess, tempfile, tvm_ffi
# The library carries CUDA source that TVM compiles when it loads; TVM's own hook needs the
# compiler library, so compile with the machine's nvcc for this GPU instead.
@tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
def _compile(code, *rest):
    major, minor = dev.compute_version.split(".")
    with tempfile.TemporaryDirectory() as tmp:
        open(f"{tmp}/k.cu", "w").write(code)
        subprocess.run(["nvcc", "--fatbin", "-O3", f"-arch=sm_{major}{minor}", "-o", f"{tmp}/k.fatbin", f"{tmp}/k.cu"], check=True)
        return bytearray(open(f"{tmp}/k.fatbin", "rb").read())
print("tvm", tvm.__version__, "cuda device:", dev.exist, "ort providers:", ort.get_available_providers())
def bench(fn, n=50):
    for _ in range(5): fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1000)
for folder in sorted(glob.glob(".tvmcuda/*/manifest.json")):
    folder = os.path.dirname(folder); name = os.path.basename(folder)
    man = json.load(open(f"{folder}/manifest.json"))
    feeds = dict(np.load(f"{folder}/feeds.npz"))
    vm = VirtualMachine(tvm.runtime.load_module(f"{folder}/model.so"), dev)
    args = [tvm.runtime.tensor(feeds[s["name"]], dev) for s in man["inputs"]]
    def run():
        out = vm["main"](*args)
        dev.sync()
        return out
    out = run(); out = out if hasattr(out, "numpy") else out[0]
    got = out.numpy()
    prov = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    sess = ort.InferenceSession(f"{folder}/reference.onnx", providers=prov)
    want = sess.run(None, feeds)[0]
    err = float(np.abs(got - want).max()); rel = err / float(np.abs(want).max())
    t_tvm = bench(run); t_ort = bench(lambda: sess.run(None, feeds))
    print(f"{name:7s} tvm-cuda {t_tvm:8.3f} ms | ort[{prov[0]}] {t_ort:8.3f} ms | max abs err {err:.2e} rel {rel:.2e}", flush=True)
PY

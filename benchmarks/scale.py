"""Large models: wall time and peak memory of Presso's passes next to onnxruntime's quantizer.

Builds transformer-shaped models on the fly (an embedding Gather, then layers of LayerNorm,
Q/K/V/O MatMuls, Softmax attention, a ReLU MLP and residual Adds), with float32 weights in
external data: 0.5, 2 and 8 GB by default. For each model, every command runs in a fresh
process; the table gives its wall time and peak resident memory (also as a multiple of the
weights' bytes). The baseline, measured in the same run on the same file, is onnxruntime's
``MatMulNBitsQuantizer`` (block 32, symmetric, MatMul and Gather), which does the same work as
``quantize-weights{bits=4}``.

    python benchmarks/scale.py                      # 0.5, 2 and 8 GB (needs ~40 GB of disk)
    python benchmarks/scale.py --sizes 0.5 2 --keep  # keep the generated models in --dir
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from presso.ir.external import write_external_data  # noqa: E402
from presso.ir.table import format_table, human_bytes  # noqa: E402

VOCAB = 32000
# (hidden size, layers) for each size in GB: 12·d² weights a layer plus a VOCAB × d embedding
SHAPES = {0.5: (1024, 8), 2.0: (2048, 8), 8.0: (4096, 9)}

CLEANUP = ("infer-shapes,constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,"
           "eliminate-dead-code,upgrade-opset{version=21},compact")
PRESSO_COMMANDS = {
    "load + save": "eliminate-dead-code",
    "fold-constants,eliminate-dead-code": "fold-constants,eliminate-dead-code",
    "every cleanup pass": CLEANUP,
    "quantize-weights{bits=4,block=32}": "quantize-weights{bits=4,block=32}",
    "quantize-dynamic": "quantize-dynamic",
}

ORT_QUANTIZER = """
import sys
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
quantizer = MatMulNBitsQuantizer(sys.argv[1], bits=4, block_size=32, is_symmetric=True,
                                 op_types_to_quantize=("MatMul", "Gather"))
quantizer.process()
quantizer.model.save_model_to_file(sys.argv[2], True)
"""


def build_model(folder: Path, hidden: int, layers: int, seed: int = 0) -> tuple[Path, int]:
    """Write the model and its external data, weight by weight; returns (path, weight bytes)."""
    rng = np.random.default_rng(seed)
    d, ff = hidden, 4 * hidden
    nodes, weights = [], {}

    def weight(name: str, shape: tuple[int, ...]) -> str:
        weights[name] = shape
        return name

    nodes.append(helper.make_node("Gather", [weight("embedding", (VOCAB, d)), "ids"], ["x0"], name="embed"))
    x = "x0"
    for i in range(layers):
        p = f"l{i}"
        ln = [weight(f"{p}.ln_scale", (d,)), weight(f"{p}.ln_bias", (d,))]
        nodes += [
            helper.make_node("LayerNormalization", [x, *ln], [f"{p}.h"], name=f"{p}.ln", axis=-1),
            helper.make_node("MatMul", [f"{p}.h", weight(f"{p}.wq", (d, d))], [f"{p}.q"], name=f"{p}.q"),
            helper.make_node("MatMul", [f"{p}.h", weight(f"{p}.wk", (d, d))], [f"{p}.k"], name=f"{p}.k"),
            helper.make_node("MatMul", [f"{p}.h", weight(f"{p}.wv", (d, d))], [f"{p}.v"], name=f"{p}.v"),
            helper.make_node("Transpose", [f"{p}.k"], [f"{p}.kt"], name=f"{p}.kt", perm=[0, 2, 1]),
            helper.make_node("MatMul", [f"{p}.q", f"{p}.kt"], [f"{p}.scores"], name=f"{p}.scores"),
            helper.make_node("Softmax", [f"{p}.scores"], [f"{p}.attn"], name=f"{p}.softmax", axis=-1),
            helper.make_node("MatMul", [f"{p}.attn", f"{p}.v"], [f"{p}.ctx"], name=f"{p}.ctx"),
            helper.make_node("MatMul", [f"{p}.ctx", weight(f"{p}.wo", (d, d))], [f"{p}.o"], name=f"{p}.o"),
            helper.make_node("Add", [x, f"{p}.o"], [f"{p}.r1"], name=f"{p}.res1"),
            helper.make_node("MatMul", [f"{p}.r1", weight(f"{p}.w1", (d, ff))], [f"{p}.u"], name=f"{p}.up"),
            helper.make_node("Relu", [f"{p}.u"], [f"{p}.a"], name=f"{p}.act"),
            helper.make_node("MatMul", [f"{p}.a", weight(f"{p}.w2", (ff, d))], [f"{p}.dn"], name=f"{p}.down"),
            helper.make_node("Add", [f"{p}.r1", f"{p}.dn"], [f"{p}.out"], name=f"{p}.res2"),
        ]
        x = f"{p}.out"
    stubs = {name: onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
             for name, shape in weights.items()}
    path = folder / f"transformer-{hidden}x{layers}.onnx"

    def arrays():  # one weight at a time: 8 GB are never in memory
        for name, shape in weights.items():
            scale = 1.0 if name.endswith("ln_scale") else 0.02
            yield name, (rng.standard_normal(shape, dtype=np.float32) * scale)

    write_external_data(stubs, arrays(), folder / (path.name + ".data"), path.name + ".data")
    graph = helper.make_graph(nodes, "synthetic-transformer",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "seq", d])],
                              list(stubs.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())
    return path, sum(int(np.prod(s)) * 4 for s in weights.values())


def measure(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, error text) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    error = process.stderr.read().strip().splitlines()[-1:] if os.waitstatus_to_exitcode(status) else []
    return seconds, usage.ru_maxrss * 1024, error[0] if error else ""


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        path, weight_bytes = build_model(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        print(path, weight_bytes)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 2.0, 8.0], choices=sorted(SHAPES))
    parser.add_argument("--dir", type=Path, default=None, help="where to build the models (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated models")
    parser.add_argument("--only", nargs="*", help="run only these Presso commands (keys of the table)")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="presso-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    presso = [sys.executable, "-m", "presso.tools.main"]
    rows = []
    try:
        for size in args.sizes:
            hidden, layers = SHAPES[size]
            start = time.perf_counter()
            # built in a child: a measured child inherits the peak memory of its parent at fork
            built = subprocess.run([sys.executable, __file__, "--build", str(folder), str(hidden), str(layers)],
                                   check=True, capture_output=True, text=True).stdout.split()
            path, weight_bytes = Path(built[0]), int(built[1])
            print(f"built {path.name}: {human_bytes(weight_bytes)} of weights in {time.perf_counter() - start:.0f} s",
                  flush=True)
            out = folder / "out.onnx"
            baseline = None
            runs = [("onnxruntime MatMulNBitsQuantizer", [sys.executable, "-c", ORT_QUANTIZER, str(path), str(out)])]
            runs += [(f"presso opt -p {label}", [*presso, "opt", str(path), "-p", pipeline, "-o", str(out),
                                                  "--no-progress"])
                     for label, pipeline in PRESSO_COMMANDS.items() if not args.only or label in args.only]
            for label, command in runs:
                seconds, peak, error = measure(command)
                if baseline is None:
                    baseline = seconds
                rows.append([human_bytes(weight_bytes), label, f"{seconds:.1f} s", f"{seconds / baseline:.2f}×",
                             human_bytes(peak), f"{peak / weight_bytes:.2f}×", error[:60] or "ok"])
                print(format_table(["weights", "command", "wall", "vs ORT", "peak RSS", "RSS/weights", "result"],
                                   rows[-1:]).splitlines()[-1], flush=True)
                for leftover in folder.glob("out.onnx*"):
                    leftover.unlink()
            if not args.keep:
                for leftover in folder.glob(path.name + "*"):
                    leftover.unlink()
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print()
    print(format_table(["weights", "command", "wall", "vs ORT", "peak RSS", "RSS/weights", "result"], rows))


if __name__ == "__main__":
    main()

"""Where the bytes of an int8 model go, and what the size steps save — without changing a bit.

For magika, PP-OCRv4 det and PP-OCR mobile cls (legalized as benchmarks/quantization.py does),
one calibration (``presso.quantize(..., fold=False)``, quick data sizes), then:

    plain    fold-qdq{drop_zero_points=false,scalar_qparams=false}   (the fold before issue 3's size work)
    folded   fold-qdq                                               (zero points dropped, scalar parameters)
    compact  fold-qdq, compact{bias_scales=true}                    (what quantize + compile deliver)
    compiled presso.compile(compact, cpu-x86, onnxruntime).model   (the artifact's model.onnx)

and prints each file's size relative to the float file, the byte breakdown of the compact
one (``presso inspect --size``), and checks with onnxruntime that ``compact`` computes bit for
bit what ``fold-qdq{drop_zero_points=false}`` computes, at optimization levels none, basic
and all.

    python benchmarks/quant_size.py                 # all three (≈ 4 min on 2 cores)
    python benchmarks/quant_size.py --models det
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from quantization import LEGALIZE_FOR_QUANTIZERS  # the float model every quantizer there starts from


def _prepare(name: str):
    import presso
    from presso.ir import fix_input_shapes
    from presso.passes import PassManager
    from presso.tools import zoo

    if name == "magika":
        calib, _ = zoo.magika_dataset(64, seed=0)
        evalx, _ = zoo.magika_dataset(20, seed=1)
        source, input_name, shape = zoo.magika_model(), "bytes", [1, 2048]
    elif name == "det":
        calib, evalx = zoo.ppocr_det_inputs(8, size=320, seed=0), zoo.ppocr_det_inputs(3, size=320, seed=1000)
        source, input_name, shape = zoo.ppocr_det_model(), "x", [1, 3, 320, 320]
    elif name == "cls":
        (calib, _), (evalx, _) = zoo.ppocr_cls_inputs(64, seed=0), zoo.ppocr_cls_inputs(20, seed=5000)
        source, input_name, shape = zoo.ppocr_cls_model(), "x", [1, 3, 48, 192]
    else:
        raise SystemExit(f"unknown model {name}")
    model = presso.load(source)
    fix_input_shapes(model, {input_name: shape})
    PassManager.parse(LEGALIZE_FOR_QUANTIZERS).run(model)
    return model, input_name, calib, evalx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="magika,det,cls")
    parser.add_argument("--workdir", default=None, help="keep the models here")
    args = parser.parse_args()

    import onnx

    import presso
    from presso.ir import create_session
    from presso.ir.analysis.size import render_size_breakdown, size_breakdown
    from presso.ir.table import format_table
    from presso.passes import PassManager
    from presso.passes.cleanup.compact import Compact
    from presso.passes.quant.fold_qdq import FoldQDQ

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="presso-qsize-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        model, input_name, calib, evalx = _prepare(name)
        float_path = workdir / f"{name}_float.onnx"
        presso.save(model, float_path)
        data = [{input_name: calib[i:i + 1]} for i in range(len(calib))]
        fake = presso.quantize(model, data, target="cpu-x86", progress=False, fold=False)
        steps = {"plain": [FoldQDQ(drop_zero_points=False, scalar_qparams=False)],
                 "reference": [FoldQDQ(drop_zero_points=False)],
                 "folded": [FoldQDQ()],
                 "compact": [FoldQDQ(), Compact(bias_scales=True)]}
        paths = {}
        for tag, passes in steps.items():
            variant = fake.copy()
            PassManager(passes).run(variant, progress=False)
            paths[tag] = presso.save(variant, workdir / f"{name}_{tag}.onnx")
            if tag == "compact":
                artifact = presso.compile(variant, target="cpu-x86", backend="onnxruntime", data=data[:1])
                paths["compiled"] = presso.save(artifact.model, workdir / f"{name}_compiled.onnx")
        exact = []
        for level in ("none", "basic", "all"):
            a = create_session(str(paths["reference"]), optimization=level)
            b = create_session(str(paths["compact"]), optimization=level)
            same = all(np.array_equal(u, v) for i in range(len(evalx))
                       for u, v in zip(a.run(None, {input_name: evalx[i:i + 1]}),
                                       b.run(None, {input_name: evalx[i:i + 1]})))
            exact.append(f"{level}:{'=' if same else 'DIFFERENT'}")
        size = float_path.stat().st_size
        rows.append([name, f"{size:,}", *(f"{paths[t].stat().st_size / size:.4f}" for t in
                                          ("plain", "folded", "compact", "compiled")),
                     artifact.manifest["int8_form"].get("chosen") or "", " ".join(exact)])
        breakdown = size_breakdown(onnx.load(str(paths["compact"])))
        print(f"\n{name}: compact int8 file, bytes by role (share of the float file)")
        print(format_table(["role", "bytes", "of float"], list(render_size_breakdown(breakdown, size)), align="lrr"))
    print()
    print(format_table(["model", "float bytes", "plain ×", "folded ×", "compact ×", "compiled ×", "compiled form",
                        "compact = reference (onnxruntime level)"], rows, align="lrrrrrll"))


if __name__ == "__main__":
    main()

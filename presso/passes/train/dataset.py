"""Training data: model inputs from ``ctx.data`` and labels, held in memory and batched.

How labels are given (first match wins):

1. ``ctx.labels``: a numpy array (one label per sample), a ``.npy`` file, or a ``.npz`` file
   holding an array named ``labels``;
2. an array named ``labels`` beside the inputs in the data itself: in the ``.npz`` file, in
   every ``.npz`` of a data folder, or in a dict data source. This is how the command line
   passes labels: ``presso opt ... --data train.npz`` with ``labels`` inside ``train.npz``.

Integer labels are class indices (cross-entropy); float labels are regression targets with
the output's shape (mean squared error). Training data sets are small enough to hold in
memory, which lets every epoch shuffle and lets distillation cache the teacher's outputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...ir import DataSource, Model, check_finite
from ...ir.analysis.batch import static_batch
from ...ir.errors import CalibrationError

LABELS_KEY = "labels"


@dataclass
class TrainingSet:
    """All samples: one array per model input (leading sample axis) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, batch: int, *, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
        """Index arrays of up to ``batch`` samples (shuffled when ``rng`` is given)."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(self), batch):
            yield order[start:start + batch]

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.inputs.items()}


def load_training_set(ctx_data: Any, ctx_labels: Any, model: Model, *, samples: int | None = None,
                      pass_name: str = "training") -> TrainingSet:
    """Read every sample of ``ctx_data`` (and labels) for ``model``; validate and check finite."""
    if ctx_data is None:
        raise CalibrationError(f"pass '{pass_name}' needs training data",
                               hint="give --data FILE.npz (with a 'labels' array for supervised "
                                    "training) or PassManager.run(model, data=..., labels=...)")
    source = DataSource.open(ctx_data, model)
    chunks = list(source.feeds(batch=4096, limit=samples))
    inputs = {name: np.concatenate([c[name] for c in chunks]) for name in source.input_names}
    count = int(next(iter(inputs.values())).shape[0])
    if count == 0:
        raise CalibrationError("the training data holds no samples", hint="provide at least one sample")
    check_finite(inputs, where="training data")
    labels = _labels(ctx_labels, source)
    if labels is not None:
        labels = labels[:count] if samples is not None else labels
        if labels.shape[0] != count:
            raise CalibrationError(f"there are {labels.shape[0]} labels for {count} samples",
                                   where="training labels", hint="give exactly one label per sample")
        if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
            raise CalibrationError("the labels hold NaN/Inf values", where="training labels")
        if labels.dtype.kind not in "fiub":
            raise CalibrationError(f"labels of dtype {labels.dtype} are not numbers", where="training labels")
    return TrainingSet(inputs, labels)


def _labels(ctx_labels: Any, source: DataSource) -> np.ndarray | None:
    if ctx_labels is not None:
        if isinstance(ctx_labels, (str, os.PathLike)):
            return _read_labels_file(Path(ctx_labels), required=True)
        return np.asarray(ctx_labels)
    src = source.source
    if isinstance(src, Mapping):
        return np.asarray(src[LABELS_KEY]) if LABELS_KEY in src else None
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.is_file():
            return _read_labels_file(path, required=False) if path.suffix == ".npz" else None
        parts = [_read_labels_file(f, required=False) for f in sorted(path.glob("*.npz"))]
        if parts and all(p is not None for p in parts):
            return np.concatenate(parts)
    return None


def _read_labels_file(path: Path, *, required: bool) -> np.ndarray | None:
    if not path.is_file():
        raise CalibrationError("the labels file does not exist", where=str(path))
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            if LABELS_KEY in archive.files:
                return archive[LABELS_KEY]
    except Exception as exc:
        raise CalibrationError(f"cannot read labels: {exc}", where=str(path)) from exc
    if required:
        raise CalibrationError(f"the file holds no array named '{LABELS_KEY}'", where=str(path))
    return None


def fixed_batch_size(model: Model) -> int | None:
    """The static batch size of the model's inputs, if their first axis is a fixed number.

    Graphs exported with batch 1 often bake it into Reshape targets, so training must feed
    batches of exactly that size.
    """
    return static_batch(model)

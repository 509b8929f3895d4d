"""Input data for verification, calibration and evaluation.

A data source is a ``.npz`` file (one array per model input, leading sample axis), a folder
of ``.npz``/``.npy`` files, any Python iterable of ``{input name: array}`` feeds, or a function
returning such an iterable (called anew each time the data is read). Samples are streamed,
never all loaded at once, so memory does not grow with the sample count. A one-shot iterator
(a generator) can be read only once; reading it again is a :class:`CalibrationError`.

Every chunk is checked as it streams, and a problem is a :class:`CalibrationError` naming the
input, the file or item, and the sample index (counted over the whole source): a missing
input, a rank that does not fit, a dtype of another kind than the model's (float data is cast
to the model's float type, integer data to its integer type when the values fit), NaN/Inf
values, inputs with different sample counts, and a source without any sample.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CalibrationError
from .model import Model

Feed = dict[str, np.ndarray]


@dataclass
class DataSource:
    """Streams model-ready feeds from a file, a folder or an iterable."""

    source: Any
    input_names: list[str]
    input_ranks: dict[str, int | None]
    input_shapes: dict[str, list | None] = field(default_factory=dict)
    input_dtypes: dict[str, np.dtype | None] = field(default_factory=dict)
    _started: bool = field(default=False, init=False, repr=False)  # a one-shot iterator was read

    @classmethod
    def open(cls, source: Any, model: Model) -> DataSource:
        if isinstance(source, DataSource):
            return source
        if source is None:
            raise CalibrationError("no data was given", hint="pass a .npz file, a folder of .npy/.npz files, "
                                   "or an iterable of {input name: array} dicts")
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise CalibrationError("data path does not exist", where=str(path), hint="check the --data path")
            if path.is_dir() and not _data_files(path):
                raise CalibrationError("data folder holds no .npz or .npy files", where=str(path),
                                       hint="save samples with np.savez(file, **{input name: array})")
            if path.is_file() and path.suffix not in (".npz", ".npy"):
                raise CalibrationError(f"unsupported data file type '{path.suffix}'", where=str(path),
                                       hint="use .npz (one array per input) or .npy")
        inputs = model.data_inputs()
        ranks = {t.name: (len(t.shape) if t.shape is not None else None) for t in inputs}
        shapes = {t.name: (list(t.shape) if t.shape is not None else None) for t in inputs}
        dtypes = {t.name: _numpy_dtype(t.dtype) for t in inputs}
        return cls(source, [t.name for t in inputs], ranks, shapes, dtypes)

    def __iter__(self) -> Iterator[Feed]:
        return self.feeds()

    @property
    def model_batch(self) -> int | None:
        """The batch size the model's inputs fix on axis 0, or None when it is dynamic."""
        sizes = {shape[0] for shape in self.input_shapes.values() if shape}
        if len(sizes) == 1 and isinstance(next(iter(sizes)), int) and next(iter(sizes)) > 0:
            return int(next(iter(sizes)))
        return None

    def feeds(self, batch: int | None = None, limit: int | None = None) -> Iterator[Feed]:
        """Model-ready feeds of up to ``batch`` samples each, ``limit`` samples in total.

        ``batch`` defaults to the model's static batch size (1 when it is dynamic). When
        ``batch`` is that static size, the remainder of a chunk too small to fill a batch is
        skipped, since the model accepts nothing else.
        """
        batch = batch or self.model_batch or 1
        exact = batch if batch == self.model_batch else None
        produced = 0
        empty = True
        for chunk in self._chunks():
            count = _sample_count(chunk)
            for start in range(0, count, batch):
                if limit is not None and produced >= limit:
                    return
                stop = min(start + batch, count)
                if limit is not None:
                    stop = min(stop, start + limit - produced)
                if exact is not None and stop - start != exact:
                    continue
                feed = {k: v[start:stop] for k, v in chunk.items()}
                produced += stop - start
                empty = False
                yield feed
        if empty:
            raise CalibrationError("the data source holds no samples" + (
                f" in a full batch of {exact} (the model's fixed batch size)" if exact and exact > 1 else ""),
                where=str(self.source) if isinstance(self.source, (str, os.PathLike)) else "data",
                hint="provide at least one sample per input, along the first axis of each array")

    # Each chunk maps every input name to an array with a leading sample axis (batch axis).
    def _chunks(self) -> Iterator[Feed]:
        first = 0  # index of the chunk's first sample in the whole source, for messages
        for arrays, where, batched in self._raw_chunks():
            chunk = self._normalize(arrays, where=where, batched=batched, first=first)
            first += _sample_count(chunk)
            yield chunk

    def _raw_chunks(self) -> Iterator[tuple[dict[str, Any], str, bool]]:
        """(arrays as given, where they come from, whether they are one batch) per file or item."""
        src = self.source
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            files = _data_files(path) if path.is_dir() else [path]
            for file in files:
                yield _read_file(file, self.input_names), str(file), False
        elif isinstance(src, Mapping):
            yield dict(src), "data dict", False
        elif isinstance(src, Iterable) or callable(src):
            items = src() if callable(src) and not isinstance(src, Iterable) else src
            if isinstance(items, Iterator):
                # A generator can be read once; verification and each pass read the data anew.
                if items is src and self._started:
                    raise CalibrationError(
                        "the data is a one-shot iterator (e.g. a generator) that was already read",
                        hint="pass a list of feeds, a .npz file, a folder, or a function that returns "
                             "a fresh iterator each time")
                self._started = True
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise CalibrationError(
                        f"data item {i} is a {type(item).__name__}, not a dict of input arrays",
                        hint="yield {input name: numpy array} dicts")
                yield dict(item), f"data item {i}", True
        else:
            raise CalibrationError(f"unsupported data source of type {type(src).__name__}",
                                   hint="pass a .npz file, a folder of .npy/.npz files, or an iterable of "
                                        "{input name: array} dicts")

    def _normalize(self, arrays: dict[str, Any], *, where: str, batched: bool = False,
                   first: int = 0) -> Feed:
        missing = [n for n in self.input_names if n not in arrays]
        if missing:
            raise CalibrationError(f"data has no array for input(s) {missing}", where=where,
                                   hint=f"the model's inputs are {self.input_names}; data holds {sorted(arrays)}")
        result = {}
        for name in self.input_names:
            try:
                value = np.asarray(arrays[name])
            except (ValueError, TypeError) as exc:  # ragged lists and the like
                raise CalibrationError(f"input '{name}' data is not an array: {exc}", where=where,
                                       hint="give numeric arrays of one shape per input") from exc
            rank = self.input_ranks.get(name)
            if rank is not None and not batched and value.ndim == rank + 1:
                # leading sample axis on top of the model's own batch axis: merge them
                value = value.reshape((-1, *value.shape[2:])) if rank > 0 and value.shape[1] == 1 else value
            if rank is not None and value.ndim != rank:
                raise CalibrationError(
                    f"input '{name}' data has shape {list(value.shape)}, which does not fit the model's "
                    f"rank-{rank} input", where=where,
                    hint="store one array per input with the samples along the first axis")
            if value.ndim == 0:
                raise CalibrationError(f"input '{name}' data is a scalar", where=where,
                                       hint="give an array with the samples along the first axis")
            value = self._cast(name, value, where)
            _check_finite_samples(name, value, where, first)
            result[name] = value
        counts = {n: _sample_count({n: v}) for n, v in result.items()}
        if len(set(counts.values())) > 1:
            (a, count_a), (b, count_b) = sorted(counts.items(), key=lambda kv: kv[1])[::len(counts) - 1]
            raise CalibrationError(f"inputs have different sample counts: input '{a}' has {count_a} sample(s) "
                                   f"but input '{b}' has {count_b}", where=where,
                                   hint="every input needs the same number of samples along the first axis")
        return result

    def _cast(self, name: str, value: np.ndarray, where: str) -> np.ndarray:
        """The data in the model's dtype, when that loses nothing a user would mind."""
        want = self.input_dtypes.get(name)
        if want is None or value.dtype == want:
            return value
        have = value.dtype
        if have.kind == "f" and want.kind == "f":
            return value.astype(want)  # numpy makes float64 by default; the model decides the precision
        if have.kind in "iu" and want.kind in "iu":
            info = np.iinfo(want)
            if value.size == 0 or (value.min() >= info.min and value.max() <= info.max):
                return value.astype(want)
            raise CalibrationError(
                f"input '{name}' data holds values in [{value.min()}, {value.max()}], outside the "
                f"model's {want} range", where=where, hint=f"give {want} values")
        if have.kind in "iub" and want.kind == "f":
            hint = (f"convert it with .astype(np.{want}) after the model's preprocessing (e.g. scaling "
                    "images to [0, 1] and normalizing)")
        elif have.kind == "f" and want.kind in "iu":
            hint = f"the model takes integers (ids, bytes, indices): give {want} arrays, not floats"
        else:
            hint = f"give {want} arrays"
        raise CalibrationError(f"input '{name}' expects dtype {want} but the data is {have}", where=where, hint=hint)


def _numpy_dtype(dtype: Any) -> np.dtype | None:
    try:
        return np.dtype(dtype) if dtype is not None else None
    except TypeError:  # an ONNX type numpy has no name for (bfloat16, float8…): leave the data as is
        return None


def _check_finite_samples(name: str, value: np.ndarray, where: str, first: int) -> None:
    if value.dtype.kind not in "fc":
        return
    finite = np.isfinite(value)
    if finite.all():
        return
    bad_samples = np.flatnonzero(~finite.reshape(len(value), -1).all(axis=1)) if value.ndim else [0]
    count = int(finite.size - np.count_nonzero(finite))
    raise CalibrationError(
        f"input '{name}' holds {count} NaN/Inf value(s) in {len(bad_samples)} sample(s), first in sample "
        f"{first + int(bad_samples[0])}", where=where,
        hint="clean the data: NaN/Inf would poison scales and statistics")


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())


def _read_file(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            if len(input_names) != 1:
                raise CalibrationError(".npy data only fits single-input models", where=str(path),
                                       hint=f"use .npz files with arrays named {input_names}")
            return {input_names[0]: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"cannot read data file: {' '.join(str(exc).split())}", where=str(path),
                               hint="data files must be .npz/.npy written by numpy, without pickled objects") from exc


def _sample_count(chunk: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(chunk.values())).shape[0]) if chunk else 0


def check_finite(feed: Mapping[str, np.ndarray], *, where: str = "") -> None:
    """Raise :class:`CalibrationError` if any floating input holds NaN or Inf."""
    for name, value in feed.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise CalibrationError(f"input '{name}' holds {bad} NaN/Inf value(s)",
                                   where=where or f"input '{name}'",
                                   hint="clean the data: NaN/Inf would poison scales and statistics")


def random_feeds(model: Model, count: int = 2, *, seed: int = 0,
                 default_dim: int = 1) -> list[Feed]:
    """Random inputs matching the model's input specs, for verification.

    Dynamic dimensions become ``default_dim`` on axis 0 (batch) and 32 elsewhere; fix input
    shapes first (``fix_input_shapes``) when the model needs particular sizes.
    """
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for t in model.data_inputs():
            if t.shape is None:
                raise CalibrationError(f"input '{t.name}' has no shape, so random inputs cannot be made",
                                       where=f"input '{t.name}'", hint="give sample data or fix the shape")
            shape = [d if isinstance(d, int) and d > 0 else (default_dim if i == 0 else 32)
                     for i, d in enumerate(t.shape)]
            dtype = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
            if dtype.kind == "f":
                value = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                value = rng.integers(0, 2, shape).astype(dtype)
            else:
                value = rng.integers(0, 256, shape).astype(dtype)
            feed[t.name] = value
        feeds.append(feed)
    return feeds

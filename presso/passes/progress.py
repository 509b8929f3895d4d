"""Progress bars for the passes that stream data (calibration, training).

A bar shows the total, the percentage and the time left whenever the number of samples is
known: :func:`sample_count` reads it from the data's headers (``.npz``/``.npy`` files are not
loaded) or from in-memory arrays; only a one-shot iterator has no known length.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import DataSource


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "sample"):
    """A tqdm bar (None when disabled). With ``total`` it shows n/total, % and the time left."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def sample_count(data: Any, limit: int | None = None) -> int | None:
    """How many samples ``data`` (a DataSource, path, dict of arrays or list of feeds) yields,
    at most ``limit``; ``limit`` (or None) when it cannot be known without reading it."""
    names = data.input_names if isinstance(data, DataSource) else None
    source = data.source if isinstance(data, DataSource) else data
    try:
        count = _count(source, names)
    except Exception:  # a bar without a total is better than a failure before the data is read
        count = None
    if count is None:
        return limit
    return min(count, limit) if limit is not None else count


def _count(source: Any, names: list[str] | None) -> int | None:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
            counts = [_file_count(p, names) for p in files]
            return None if any(c is None for c in counts) else sum(counts)
        return _file_count(path, names)
    if isinstance(source, Mapping):
        return _leading(source, names)
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        counts = [_leading(item, names) if isinstance(item, Mapping) else None for item in source]
        return None if any(c is None for c in counts) else sum(counts)
    return None  # an iterator or a function: known only once read


def _leading(arrays: Mapping[str, Any], names: list[str] | None) -> int | None:
    key = next((n for n in (names or []) if n in arrays), next(iter(arrays), None))
    shape = np.shape(arrays[key]) if key is not None else ()
    return int(shape[0]) if shape else None


def _file_count(path: Path, names: list[str] | None) -> int | None:
    if path.suffix == ".npy":
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.namelist() if m.endswith(".npy")]
        wanted = [f"{n}.npy" for n in names or []]
        member = next((m for m in wanted if m in members), next((m for m in members if m != "labels.npy"), None))
        if member is None:
            return None
        with archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = reader(f)
    return int(shape[0]) if shape else None

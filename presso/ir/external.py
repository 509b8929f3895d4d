"""Weights that stay on disk: ONNX external data as read-only memory maps, and streaming writes.

A model whose weights live in external data is loaded without reading them: every such tensor
becomes a read-only ``numpy.memmap`` over its bytes in the data file. A pass that reads a
weight pulls in only its pages, and :func:`release` hands them back to the page cache once the
pass is done with it, so the resident memory of a pass that streams through the weights stays
near one weight, not the whole model. Writing goes the other way: :func:`write_external_data`
appends array after array to the data file at page-aligned offsets (onnxruntime then maps
them instead of copying) and records where each went in the proto's external-data fields.

Arrays are read-only: a pass that changes a weight makes a new array (``set_constant``), so
copies of the model can share the maps.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import ModelLoadError

# onnxruntime maps external data whose offset is a multiple of the allocation granularity.
ALIGNMENT = 4096
_CHUNK_BYTES = 64 * 2**20

_MAPPABLE = {
    onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2",
    onnx.TensorProto.INT8: "i1", onnx.TensorProto.UINT8: "u1", onnx.TensorProto.INT16: "<i2",
    onnx.TensorProto.UINT16: "<u2", onnx.TensorProto.INT32: "<i4", onnx.TensorProto.UINT32: "<u4",
    onnx.TensorProto.INT64: "<i8", onnx.TensorProto.UINT64: "<u8", onnx.TensorProto.BOOL: "?",
}


def external_array(tensor: onnx.TensorProto, folder: str | os.PathLike) -> np.ndarray:
    """The data of an external-data tensor, memory-mapped read-only when its dtype allows,
    else read into memory (bfloat16, 4-bit and string tensors)."""
    info = ExternalDataInfo(tensor)
    path = Path(folder) / info.location
    shape = tuple(int(d) for d in tensor.dims)
    dtype = _MAPPABLE.get(tensor.data_type)
    if dtype is None:
        return onnx.numpy_helper.to_array(tensor, base_dir=str(folder))
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=int(info.offset or 0), shape=shape)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"external data of tensor '{tensor.name}' cannot be mapped: {exc}",
                             where=str(path), hint="check that the data file is complete and readable") from exc


def _mapping(array: object) -> mmap.mmap | None:
    seen = array
    while seen is not None:
        if isinstance(seen, mmap.mmap):
            return seen
        if isinstance(seen, np.memmap) and getattr(seen, "_mmap", None) is not None:
            return seen._mmap
        seen = getattr(seen, "base", None)
    return None


def is_mapped(array: object) -> bool:
    """Whether ``array`` (or what it views) is a memory map of a file."""
    return _mapping(array) is not None


def release(array: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array (they are read again if touched)."""
    mapping = _mapping(array)
    if mapping is not None and hasattr(mapping, "madvise"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - a platform without the advice
            pass


def chunks(array: np.ndarray, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Flat pieces of ``array`` of about ``chunk_bytes``, releasing mapped pages as it goes."""
    flat = array.reshape(-1)
    step = max(1, chunk_bytes // max(array.itemsize, 1))
    for start in range(0, flat.size, step):
        yield flat[start:start + step]
    release(array)


def external_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers of the main graph whose data is external (where exporters put weights)."""
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            yield tensor


def write_external_data(stubs: Mapping[str, onnx.TensorProto], arrays: Iterable[tuple[str, np.ndarray]],
                        data_path: Path, location: str) -> None:
    """Write the ``(name, array)`` pairs one by one into ``data_path`` and point each stub at
    its bytes.

    ``stubs`` are the proto's tensors (by name) whose data is to be external; ``arrays`` may be
    a generator that makes each array when its turn comes. Each array is
    written at a page-aligned offset straight from its buffer (a mapped weight is read from
    disk page by page and released), so no second copy of the weights is ever held.
    """
    offset = 0
    with open(data_path, "wb") as handle:
        for name, array in arrays:
            stub = stubs[name]
            padding = -offset % ALIGNMENT
            if padding:
                handle.write(b"\0" * padding)
                offset += padding
            length = 0
            for piece in chunks(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)):
                handle.write(memoryview(np.ascontiguousarray(piece)).cast("B"))
                length += piece.nbytes
            del stub.external_data[:]
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                stub.external_data.add(key=key, value=value)
            stub.ClearField("raw_data")
            offset += length
        handle.flush()
        os.fsync(handle.fileno())

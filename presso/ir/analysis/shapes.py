"""Shapes and dtypes of every tensor, from ``onnx.shape_inference``; fixing dynamic dimensions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import PressoError
from ..model import Model
from ..subgraphs import proto_graphs

Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)

    @property
    def numel(self) -> int | None:
        return int(np.prod(self.shape, dtype=np.int64)) if self.is_static else None

    @property
    def nbytes(self) -> int | None:
        if self.numel is None or self.dtype is None:
            return None
        return self.numel * np.dtype(self.dtype).itemsize


def _dims(type_proto: onnx.TypeProto) -> tuple[Dim, ...] | None:
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _dtype(type_proto: onnx.TypeProto) -> np.dtype | None:
    elem = type_proto.tensor_type.elem_type
    if not elem:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError):
        return None


def infer_tensor_infos(model: Model) -> dict[str, TensorInfo]:
    """Shape and dtype of every tensor that shape inference can type (cached on the model)."""

    def compute() -> dict[str, TensorInfo]:
        proto, _ = model.to_proto_without_large_data()  # inference needs dims, not weights
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception:  # inference is best effort: unknown custom ops stop it
            inferred = proto
        infos: dict[str, TensorInfo] = {}
        graph = inferred.graph
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            if vi.type.HasField("tensor_type"):
                infos[vi.name] = TensorInfo(_dtype(vi.type), _dims(vi.type))
        for body in list(proto_graphs(graph))[1:]:  # values inside If/Loop/Scan bodies (names are unique)
            for vi in [*body.input, *body.value_info, *body.output]:
                if vi.type.HasField("tensor_type"):
                    infos.setdefault(vi.name, TensorInfo(_dtype(vi.type), _dims(vi.type)))
        for init in graph.initializer:
            infos[init.name] = TensorInfo(
                np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)), tuple(init.dims)
            )
        for name, tensor in model.graph.tensors().items():
            if isinstance(tensor, gs.Constant) and name not in infos and tensor.values is not None:
                infos[name] = TensorInfo(np.dtype(tensor.dtype), tuple(tensor.shape))
        return infos

    return model.analysis("tensor_infos", compute)


def apply_inferred_shapes(model: Model) -> int:
    """Write inferred shapes/dtypes into the graph's variables; returns how many changed."""
    infos = infer_tensor_infos(model)
    changed = 0
    for name, tensor in model.graph.tensors().items():
        if not isinstance(tensor, gs.Variable) or name not in infos:
            continue
        info = infos[name]
        new_shape = list(info.shape) if info.shape is not None else None
        old_shape = list(tensor.shape) if tensor.shape is not None else None
        if (info.dtype is not None and tensor.dtype != info.dtype) or (
            new_shape is not None and new_shape != old_shape
        ):
            tensor.dtype = info.dtype if info.dtype is not None else tensor.dtype
            tensor.shape = new_shape if new_shape is not None else tensor.shape
            changed += 1
    return changed


def fix_input_shapes(model: Model, shapes: Mapping[str, Sequence[int]] | None = None,
                     dims: Mapping[str, int] | None = None) -> list[str]:
    """Replace dynamic input dimensions by concrete sizes.

    ``shapes`` maps an input name to its full shape, where ``None`` keeps that axis as it is;
    ``dims`` maps a symbolic dimension name (e.g. ``"batch"``) to a size wherever it appears.
    Returns the names of inputs changed. Raises :class:`PressoError` for an unknown input or
    a shape that contradicts a static dim.
    """
    shapes = dict(shapes or {})
    dims = dict(dims or {})
    by_name = {t.name: t for t in model.graph.inputs}
    unknown = sorted(set(shapes) - set(by_name))
    if unknown:
        raise PressoError(
            f"cannot fix the shape of unknown input(s) {unknown}",
            hint=f"the model's inputs are {sorted(by_name)}",
        )
    changed = []
    for name, tensor in by_name.items():
        current = list(tensor.shape) if tensor.shape is not None else None
        if name in shapes:
            given = list(shapes[name])
            if current is not None and len(current) != len(given):
                raise PressoError(
                    f"input '{name}' has rank {len(current)} but the given shape {given} has rank {len(given)}",
                    where=f"input '{name}'",
                )
            if current is None and any(d is None for d in given):
                raise PressoError(f"input '{name}' has no shape, so every axis of {given} needs a size",
                                  where=f"input '{name}'")
            wanted = [current[i] if d is None else int(d) for i, d in enumerate(given)]
            for axis, (have, want) in enumerate(zip(current or wanted, wanted)):
                if given[axis] is not None and isinstance(have, int) and have > 0 and have != want:
                    raise PressoError(
                        f"input '{name}' has static size {have} on axis {axis}, not {want}",
                        where=f"input '{name}'",
                        hint="only dynamic dimensions can be fixed",
                    )
        elif current is not None:
            wanted = [dims.get(d, d) if isinstance(d, str) else d for d in current]
        else:
            continue
        if wanted != current:
            tensor.shape = wanted
            changed.append(name)
    if changed:
        forget_intermediate_shapes(model)
    return changed


def forget_intermediate_shapes(model: Model) -> None:
    """Drop the shapes of every variable but the graph's inputs and outputs, and the cached
    analyses: call after changing the interface shapes, whose stale inferred shapes inside the
    graph would contradict them. Shape inference fills them in again."""
    interface = {id(t) for t in [*model.graph.inputs, *model.graph.outputs]}
    for tensor in model.graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in interface:
            tensor.shape = None
    model.invalidate()


def dynamic_inputs(model: Model) -> dict[str, list[Dim]]:
    """Inputs whose shape has a symbolic or unknown dimension, with their shapes."""
    result = {}
    for t in model.graph.inputs:
        shape = list(t.shape) if t.shape is not None else None
        if shape is None or any(not (isinstance(d, int) and d >= 0) for d in shape):
            result[t.name] = shape
    return result

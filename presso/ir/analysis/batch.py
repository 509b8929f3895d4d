"""The batch axis: example shapes for hints, and a concrete batch for the passes that need one.

Models are often exported with a symbolic batch (``['unk__214', 2048]``). Passes that only
need *some* concrete batch to infer the other shapes (pruning; training and calibration, which
feed batches) pick one themselves with :func:`concrete_batch` or :func:`feed_batch`, and the
model keeps its dynamic batch. Only a dynamic axis other than the batch needs the user's
``--shape``, and the hint then shows an example that fits the input (:func:`shape_example`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from ..errors import PressoError
from ..model import Model
from .shapes import Dim, dynamic_inputs, fix_input_shapes, forget_intermediate_shapes, infer_tensor_infos


def _is_static(d: Dim) -> bool:
    return isinstance(d, int) and d >= 0


def shape_example(shape: Sequence[Dim] | None, *, batch: int = 1) -> list[int] | None:
    """A concrete shape that fits ``shape``: static sizes kept, ``batch`` on a dynamic axis 0,
    224 on other dynamic axes of image-like (rank-4, static channels) inputs, else 128.
    None when the rank is unknown."""
    if shape is None:
        return None
    image_like = len(shape) == 4 and _is_static(shape[1])
    return [int(d) if _is_static(d) else (batch if axis == 0 else (224 if image_like else 128))
            for axis, d in enumerate(shape)]


def shape_hint(name: str, shape: Sequence[Dim] | None) -> str:
    """``--shape NAME=…`` with an example that fits the input (its rank and static sizes)."""
    example = shape_example(shape)
    if example is None:
        return f"--shape {name}=D0,D1,... (the input has no declared rank)"
    return f"--shape {name}={','.join(map(str, example))}"


def batch_only_dynamic(model: Model) -> tuple[dict[str, Dim], dict[str, list[Dim] | None]]:
    """Split the dynamic inputs: ``({name: symbolic batch dim}, {name: shape})`` where the first
    holds inputs whose only dynamic axis is axis 0 and the second every other dynamic input."""
    batch, other = {}, {}
    for name, shape in dynamic_inputs(model).items():
        if shape and not _is_static(shape[0]) and all(_is_static(d) for d in shape[1:]):
            batch[name] = shape[0]
        else:
            other[name] = shape
    return batch, other


def static_batch(model: Model) -> int | None:
    """The batch size the model's inputs fix on axis 0 (the smallest if they differ), else None."""
    sizes = {t.shape[0] for t in model.graph.inputs
             if t.shape is not None and len(t.shape) > 0 and _is_static(t.shape[0]) and t.shape[0] > 0}
    return min(sizes) if sizes else None


def feed_batch(model: Model, preferred: int) -> int:
    """How many samples to feed at once: the model's static batch when it has one, else
    ``preferred`` (the batch axis is dynamic, so any size runs)."""
    return static_batch(model) or preferred


@contextlib.contextmanager
def concrete_batch(model: Model, size: int = 1, *, needs: str = "this pass",
                   error: type[PressoError] = PressoError) -> Iterator[int | None]:
    """Fix a dynamic batch axis to ``size`` inside the block and make it dynamic again after.

    Every input whose only dynamic axis is axis 0 gets ``size`` there, so shape inference
    gives static shapes; on exit the inputs (and the outputs that had a dynamic axis 0) get
    their symbolic dimension back and intermediate shapes are forgotten. If the block baked
    the size into the graph (shape inference then gives an output a static axis 0) the
    inputs keep ``size``, so the model stays valid. Yields ``size``, or None when nothing was
    dynamic. Raises :class:`PressoError` when another axis is dynamic, with a ``--shape``
    example that fits the input.
    """
    batch, other = batch_only_dynamic(model)
    if other:
        name, shape = next(iter(other.items()))
        raise error(f"{needs} needs static input shapes apart from the batch axis; "
                          f"input '{name}' has shape {shape}",
                          where=f"input '{name}'", hint=f"fix it, e.g. {shape_hint(name, shape)}")
    if not batch:
        yield None
        return
    outputs = {t.name: t.shape[0] for t in model.graph.outputs
               if t.shape is not None and len(t.shape) > 0 and not _is_static(t.shape[0])}
    fix_input_shapes(model, {name: [size] + [None] * (len(_shape(model, name)) - 1) for name in batch})
    try:
        yield size
    finally:
        _restore(model, batch, outputs, size)


def _shape(model: Model, name: str) -> list[Dim]:
    return next(list(t.shape) for t in model.graph.inputs if t.name == name)


def _restore(model: Model, batch: dict[str, Dim], outputs: dict[str, Dim], size: int) -> None:
    inputs = {t.name: t for t in model.graph.inputs}
    for name, dim in batch.items():
        if name in inputs and inputs[name].shape:
            inputs[name].shape = [dim if dim is not None else "batch", *inputs[name].shape[1:]]
    for t in model.graph.outputs:
        if t.name in outputs and t.shape is not None and len(t.shape) > 0:
            t.shape = [outputs[t.name], *t.shape[1:]]
    forget_intermediate_shapes(model)
    infos = infer_tensor_infos(model)
    baked = [t.name for t in model.graph.outputs if t.name in outputs
             and (info := infos.get(t.name)) is not None and info.shape and _is_static(info.shape[0])]
    if baked:  # the block folded the batch into the graph: keep the size it was built for
        fix_input_shapes(model, {name: [size] + [None] * (len(inputs[name].shape) - 1) for name in batch})
        for t in model.graph.outputs:
            if t.name in outputs and t.shape is not None and len(t.shape) > 0:
                t.shape = [size, *t.shape[1:]]
        forget_intermediate_shapes(model)

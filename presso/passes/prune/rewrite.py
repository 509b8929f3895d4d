"""Removing channel units from a model: every affected initializer, attribute and static shape.

Given the `channel-groups` analysis and a set of units (union-find roots) to remove, this
slices every recorded parameter, fixes the attributes and shape constants that spell channel
counts out (depthwise ``group``, Reshape/Expand targets, Split sizes, Slice bounds, Resize
sizes), and re-infers the shapes of intermediate tensors. New constants are created per use,
so a constant shared with an unaffected node keeps its value there.

:func:`zero_channels` is the soft version: it zeroes the same parameter slices instead of
removing them (used to check the rewriting exactly: removing all-zero channels must not change
the outputs).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.analysis.shapes import apply_inferred_shapes, forget_intermediate_shapes
from ...ir.annotations import PruneRecord
from ...ir.edit import add_initializer, set_constant, unique_name
from ...ir.errors import PassError
from .dependency import ChannelGroups, node_label

_ZEROED_ROLES = ("out", "in", "bias")


def remove_channels(model: Model, analysis: ChannelGroups, removed: set[int], *,
                    criterion: str | None = None) -> list[PruneRecord]:
    """Remove the units ``removed`` from ``model`` in place; return one record per producer."""
    if not removed:
        return []
    removed = analysis.removal_mask(removed)  # computed once, reused for every slice
    for name, m in analysis.maps.items():
        if len(m.ids) and not analysis.keep_mask(m.ids, removed).any():
            raise PassError(f"removing these channels would leave tensor '{name}' with none",
                            hint="keep at least one unit of every tensor (select_units does)")
    records = []
    for node, start, count in analysis.blocks:
        keep = analysis.keep_mask(np.arange(start, start + count), removed)
        if not keep.all():
            records.append(PruneRecord(layer=node_label(node), channels_before=int(count),
                                       channels_after=int(keep.sum()),
                                       removed=np.flatnonzero(~keep).tolist(), criterion=criterion))
    _slice_params(model, analysis, removed)
    for kind, node, facts in analysis.rewrites:
        _REWRITES[kind](model, analysis, removed, node, **facts)
    _refresh_shapes(model)
    return records


def zero_channels(model: Model, analysis: ChannelGroups, removed: set[int]) -> int:
    """Zero (in place) the weights, biases and BN shifts of the units ``removed``; returns
    how many parameter slices were zeroed. Consumers' weights are zeroed too, so the units
    contribute nothing downstream whatever their activation does at zero."""
    zeroed = 0
    removed = analysis.removal_mask(removed)
    for p in analysis.params:
        if p.role not in _ZEROED_ROLES and not (p.role == "norm" and p.input_index in (2, 3)):
            continue
        tensor = p.node.inputs[p.input_index]
        drop = ~analysis.keep_mask(p.ids, removed)
        if not drop.any():
            continue
        values = np.array(tensor.values, copy=True)
        index = [slice(None)] * values.ndim
        index[p.axis] = drop
        values[tuple(index)] = 0
        _replace_constant(model, p.node, p.input_index, values, "zeroed")
        zeroed += 1
    return zeroed


def _slice_params(model: Model, analysis: ChannelGroups, removed: np.ndarray) -> None:
    by_input: dict[tuple[int, int], list] = defaultdict(list)
    nodes = {}
    for p in analysis.params:
        by_input[(id(p.node), p.input_index)].append(p)
        nodes[id(p.node)] = p.node
    for (node_id, index), slices in by_input.items():
        node = nodes[node_id]
        tensor = node.inputs[index]
        values = np.asarray(tensor.values)
        new = values
        for axis in sorted({p.axis for p in slices}):
            masks = [analysis.keep_mask(p.ids, removed) for p in slices if p.axis == axis]
            keep = masks[0]
            if any(not np.array_equal(keep, k) for k in masks[1:]):
                raise PassError(f"conflicting channel removals on axis {axis} of '{tensor.name}'",
                                where=f"node '{node_label(node)}'", hint="this is a bug in channel-groups")
            if len(keep) != new.shape[axis]:
                raise PassError(f"'{tensor.name}' has {new.shape[axis]} entries on axis {axis}, "
                                f"expected {len(keep)}", where=f"node '{node_label(node)}'",
                                hint="this is a bug in channel-groups")
            if not keep.all():
                new = np.compress(keep, new, axis=axis)
        if new is not values:
            _replace_constant(model, node, index, new, "pruned")
            if tensor.name in model.annotations.sparsity:
                _update_sparsity(model, tensor.name, node.inputs[index].name, slices, values, new)


def _replace_constant(model: Model, node: gs.Node, index: int, values: np.ndarray, suffix: str) -> None:
    """Give input ``index`` of ``node`` new values: in place when only this input reads the
    constant (it keeps its name, so annotations stay attached), else as a new constant."""
    tensor = node.inputs[index]
    if len(tensor.outputs) == 1 and sum(t is tensor for t in node.inputs) == 1:
        set_constant(tensor, np.asarray(values, dtype=tensor.values.dtype))
    else:
        node.inputs[index] = add_initializer(model, f"{tensor.name}_{suffix}",
                                             np.asarray(values, dtype=tensor.values.dtype))


def _update_sparsity(model: Model, old: str, new: str, slices, before: np.ndarray, after: np.ndarray) -> None:
    spec = model.annotations.sparsity[old]
    if old == new:
        del model.annotations.sparsity[old]
    cut_axes = {p.axis for p in slices if before.shape[p.axis] != after.shape[p.axis]}
    if spec.axis is not None and spec.axis in cut_axes:
        return  # N:M groups along a pruned axis no longer line up; sparsify again after pruning
    model.annotations.sparsity[new] = dataclasses.replace(spec, ratio=float(np.mean(after == 0)))


def _kept(analysis: ChannelGroups, tensor: gs.Tensor, removed: np.ndarray) -> int | None:
    m = analysis.maps.get(tensor.name)
    return None if m is None else int(analysis.keep_mask(m.ids, removed).sum())


def _replace_vector(model: Model, node: gs.Node, index: int, values: np.ndarray) -> None:
    _replace_constant(model, node, index, values, "pruned")


def _rewrite_group(model: Model, analysis: ChannelGroups, removed: np.ndarray, node: gs.Node, **facts) -> None:
    node.attrs["group"] = _kept(analysis, node.inputs[0], removed)


def _rewrite_reshape(model: Model, analysis: ChannelGroups, removed: np.ndarray, node: gs.Node, *,
                     entry=None) -> None:
    if node.op != "Reshape":
        return  # Flatten, Squeeze, Unsqueeze infer their output shape
    out = node.outputs[0]
    m = analysis.maps.get(out.name)
    if m is None:
        return
    new_size = int(analysis.keep_mask(m.ids, removed).sum())
    if new_size == len(m.ids):
        return
    if entry is not None:  # a computed target: the count is a constant of its Concat
        _set_computed_entry(model, node, 1, entry, new_size, keep=(-1,))
        return
    target = np.array(node.inputs[1].values, copy=True).reshape(-1)
    in_map = analysis.maps.get(node.inputs[0].name)
    if target[m.axis] != -1:
        target[m.axis] = new_size
    # A 0 entry copies the input dimension: right only if that dimension did not change.
    if in_map is not None and in_map.axis < len(target) and target[in_map.axis] == 0 and in_map.axis != m.axis:
        raise PassError("a Reshape copies (0) a dimension whose channels were removed",
                        where=f"node '{node_label(node)}'", hint="run fold-constants with fixed shapes first")
    _replace_vector(model, node, 1, target)


def _rewrite_expand(model: Model, analysis: ChannelGroups, removed: np.ndarray, node: gs.Node, *,
                    rank: int, entry=None) -> None:
    m = analysis.maps.get(node.outputs[0].name)
    if m is None:
        return
    if entry is not None:
        _set_computed_entry(model, node, 1, entry, int(analysis.keep_mask(m.ids, removed).sum()), keep=(1,))
        return
    target = np.array(node.inputs[1].values, copy=True).reshape(-1)
    entry = m.axis - (rank - len(target))
    if entry >= 0 and target[entry] != 1:
        target[entry] = int(analysis.keep_mask(m.ids, removed).sum())
        _replace_vector(model, node, 1, target)


def _rewrite_resize_sizes(model: Model, analysis: ChannelGroups, removed: np.ndarray, node: gs.Node, **facts) -> None:
    m = analysis.maps.get(node.outputs[0].name)
    if m is None:
        return
    sizes = np.array(node.inputs[3].values, copy=True).reshape(-1)
    sizes[m.axis] = int(analysis.keep_mask(m.ids, removed).sum())
    _replace_vector(model, node, 3, sizes)


def _rewrite_split(model: Model, analysis: ChannelGroups, removed: np.ndarray, node: gs.Node, **facts) -> None:
    sizes = np.array([_kept(analysis, out, removed) for out in node.outputs], dtype=np.int64)
    node.attrs.pop("num_outputs", None)
    if model.opset >= 13:
        split = add_initializer(model, f"{node_label(node)}_split_pruned", sizes)
        if len(node.inputs) > 1:
            node.inputs[1] = split
        else:
            node.inputs.append(split)
    else:
        node.attrs["split"] = sizes.tolist()


def _rewrite_slice(model: Model, analysis: ChannelGroups, removed: np.ndarray, node: gs.Node, *,
                   start: int, end: int, rank: int) -> None:
    m_in = analysis.maps[node.inputs[0].name]
    keep = analysis.keep_mask(m_in.ids, removed)
    new_start = int(keep[:start].sum())
    new_end = new_start + int(keep[start:end].sum())
    if "starts" in node.attrs:  # opset < 10
        axes = [int(a) % rank for a in node.attrs.get("axes", range(len(node.attrs["starts"])))]
        k = axes.index(m_in.axis)
        node.attrs["starts"] = [new_start if i == k else v for i, v in enumerate(node.attrs["starts"])]
        node.attrs["ends"] = [new_end if i == k else v for i, v in enumerate(node.attrs["ends"])]
        return
    starts = np.array(np.asarray(node.inputs[1].values).reshape(-1), copy=True)
    ends = np.array(np.asarray(node.inputs[2].values).reshape(-1), copy=True)
    axes_t = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    axes = np.asarray(axes_t.values).reshape(-1) if axes_t is not None else np.arange(len(starts))
    k = [int(a) % rank for a in axes].index(m_in.axis)
    starts[k], ends[k] = new_start, new_end
    _replace_vector(model, node, 1, starts)
    _replace_vector(model, node, 2, ends)


def _rewrite_mean_scale(model: Model, analysis: ChannelGroups, removed: np.ndarray, node: gs.Node, *,
                        index: int, ids: np.ndarray) -> None:
    """A Mul by 1/C (or Div by C) after a ReduceSum over C channels: C becomes the kept count."""
    kept = int(analysis.keep_mask(ids, removed).sum())
    if kept == len(ids):
        return
    values = np.asarray(node.inputs[index].values)
    factor = len(ids) / kept if node.op == "Mul" else kept / len(ids)
    _replace_vector(model, node, index, (values.astype(np.float64) * factor).astype(values.dtype))


def _set_computed_entry(model: Model, node: gs.Node, index: int, entry, value: int, *, keep=()) -> None:
    """Set one entry of a computed shape input: ``entry`` is ``(chain, input, offset)`` from
    the analysis (the Concat, then Cast/Identity nodes up to the input). The node gets a
    private copy of the chain, so other readers of the shape keep theirs."""
    chain, part, offset = entry
    constant = chain[0].inputs[part]
    values = np.array(np.asarray(constant.values), copy=True).reshape(-1)
    if values[offset] in keep:
        return  # -1 (Reshape infers it) or 1 (Expand keeps the input's size) stay right
    values[offset] = value
    previous = None
    for k, link in enumerate(chain):
        inputs = list(link.inputs)
        if k == 0:
            inputs[part] = add_initializer(model, f"{constant.name}_pruned",
                                           values.reshape(np.shape(constant.values)).astype(constant.values.dtype))
        else:
            inputs[0] = previous
        out = link.outputs[0]
        previous = gs.Variable(unique_name(model, f"{out.name}_pruned"), dtype=out.dtype, shape=out.shape)
        name = unique_name(model, f"{link.name}_pruned") if link.name else None
        model.graph.nodes.append(gs.Node(link.op, name, dict(link.attrs), inputs, [previous], domain=link.domain))
    node.inputs[index] = previous


_REWRITES = {
    "mean-scale": _rewrite_mean_scale,
    "group": _rewrite_group,
    "reshape": _rewrite_reshape,
    "expand": _rewrite_expand,
    "resize-sizes": _rewrite_resize_sizes,
    "split": _rewrite_split,
    "slice": _rewrite_slice,
}


def _refresh_shapes(model: Model) -> None:
    """Forget every intermediate shape (they spell old channel counts) and infer them again."""
    forget_intermediate_shapes(model)
    model.graph.cleanup(remove_unused_graph_inputs=False)
    model.invalidate()
    apply_inferred_shapes(model)


"""`channel-groups`: the sets of channels that must be removed together (an analysis).

Torch-Pruning's DepGraph idea on ONNX: before removing anything, follow every channel of every
prunable producer (Conv, ConvTranspose, Gemm, MatMul with constant weights) through the whole
graph and couple what must move together.

Each producer gives its output channels fresh integer *ids*. Every tensor that carries such
channels gets a :class:`ChannelMap`: the axis they lie on and, for each position along it, the
id of the channel found there (``FIXED`` for a position that nothing may remove: channels of a
graph input, padding). Rules per op propagate maps forward in topological order:

* BatchNormalization, element-wise activations, pooling, Resize, Pad, Transpose keep (or move)
  the map; Add/Sum/Mul/Sub… *unite* the ids found at the same position of their operands
  (residuals, Squeeze-and-Excitation scales);
* Concat concatenates maps (offsets), Split and Slice cut them;
* Reshape/Flatten/Squeeze/Unsqueeze are simulated on an index tensor: a channel axis that
  becomes ``channel × spatial`` blocks (Flatten into Gemm) repeats ids, one split into several
  axes (channel shuffle) unites the ids that must leave together so the split stays regular;
* depthwise convs pass ids from input to output; grouped convs unite the same local channel of
  every group so that per-group counts stay equal;
* consumers (Conv, Gemm, MatMul…) record the weight slices that follow their input channels.

Union-find over the ids gives the *units* (one removable channel, with every parameter slice
that belongs to it); producers whose ids meet form a *group*. Where the rules cannot prove
removal safe (a reduction or normalization across channels, an op without a rule, a graph
input or output, a dynamic shape), the ids are *pinned* with the reason.

With ``norms=True`` a normalization across the channels does not pin them, as in
Torch-Pruning: a LayerNormalization over the channel axis loses the removed channels' entries
of its scale and bias, and its written-out form (ReduceMean, or ReduceSum/ReduceSumSquare/
ReduceL2 over the channel axis only, followed by the normalization arithmetic) then computes its
statistics over the kept channels; a ReduceSum scaled by a constant 1/C (or divided by C)
gets 1/C' (C'). Removal is then lossy beyond the removed channels (the statistics change), so
fine-tune or distill afterwards.

A Reshape or Expand whose target is computed (``Concat(Shape(x)[:1], [C], …)``, as exporters
write for a dynamic batch) is handled when the entry that holds the channel count is a
constant of that Concat: the rewrite gives the node a private copy of the Concat with the new
count, so the batch stays dynamic.

Needs: static shapes for every tensor a channel passes through (fix dynamic inputs first,
or let `prune-channels` pick a concrete batch). Computed on demand and cached on the model
(``model.analysis("channel-groups")``, ``"channel-groups+norms"``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.analysis.graphview import topological_nodes
from ...ir.analysis.shapes import infer_tensor_infos
from ...ir.subgraphs import nodes_reading_in_bodies
from ...ir.table import format_table

FIXED = -1  # a position that no pruning may remove

_UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Abs",
    "Neg", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Mish", "Identity", "Dropout", "Cast",
    "ThresholdedRelu", "Not", "IsNaN", "IsInf", "Swish",
}
_BINARY = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "PRelu", "Where",
           "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod"}
_POOL = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
_RESHAPE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
# Reductions that compute a normalization's statistics over the channels (norms=True).
_NORM_REDUCE = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"}
_SHAPE_PASS = {"Cast", "Identity"}  # ops a computed shape target passes through unchanged
_FOLD_HINT = "fold-constants may make it constant (prune-channels runs it unless prepare=false)"


@dataclass
class ChannelMap:
    """Which channel id sits at each position of one axis of a tensor."""

    axis: int
    ids: np.ndarray  # int64, one per position; FIXED where nothing may be removed


@dataclass
class ParamSlice:
    """A constant input of a node whose positions along ``axis`` belong to channel ids."""

    node: gs.Node
    input_index: int
    axis: int
    ids: np.ndarray
    role: str  # out (producer weight), in (consumer weight), bias, gamma, norm, const


@dataclass
class ChannelGroup:
    """Producers whose output channels are coupled, with their removable units."""

    index: int
    sources: list[str]
    units: list[int]  # union-find roots, one per unit
    members: list[str]  # every node whose parameters the group touches
    pinned: dict[int, str] = field(default_factory=dict)  # root → why it cannot be removed

    @property
    def channels(self) -> int:
        return len(self.units)

    @property
    def prunable(self) -> list[int]:
        return [u for u in self.units if u not in self.pinned]

    @property
    def excluded(self) -> bool:
        return not self.prunable

    @property
    def reason(self) -> str:
        """The most common reason among pinned units ('' when none is pinned)."""
        if not self.pinned:
            return ""
        return Counter(self.pinned.values()).most_common(1)[0][0]


@dataclass
class ChannelGroups:
    """The result of the `channel-groups` analysis."""

    groups: list[ChannelGroup]
    maps: dict[str, ChannelMap]  # tensor name → map
    params: list[ParamSlice]
    rewrites: list[tuple[str, gs.Node, dict]]  # (kind, node, facts) for attribute/shape fix-ups
    blocks: list[tuple[gs.Node, int, int]]  # (producer, first id, count)
    roots: np.ndarray  # id → union-find root

    def root(self, ids: np.ndarray) -> np.ndarray:
        """Roots of ``ids`` (FIXED stays FIXED)."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.where(ids >= 0, self.roots[np.maximum(ids, 0)], FIXED)

    def removal_mask(self, removed: set[int]) -> np.ndarray:
        """A boolean array over ids, True for the ids of the units ``removed`` (roots)."""
        gone = np.zeros(len(self.roots), dtype=bool)
        if removed:
            gone[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
        return gone[self.roots]

    def keep_mask(self, ids: np.ndarray, removed: set[int] | np.ndarray) -> np.ndarray:
        """True at each position whose channel stays when the units ``removed`` go
        (a set of roots, or the :meth:`removal_mask` of one, which is faster when reused)."""
        gone = removed if isinstance(removed, np.ndarray) else self.removal_mask(removed)
        ids = np.asarray(ids, dtype=np.int64)
        return (ids < 0) | ~gone[np.maximum(ids, 0)]

    @cached_property
    def carriers(self) -> list[np.ndarray]:
        """The units (sorted roots) of every tensor that removal could empty, without repeats.

        A tensor carries channels of one or more units, possibly several positions per unit
        (a channel shuffle or Flatten repeats ids, a Pad adds positions that stay). Removing
        units one group at a time under per-group limits could still take *every* unit of one
        such tensor (a producer coupled with padding or with a wider producer), leaving a
        zero-channel tensor that no runtime accepts; :func:`select_units` keeps at least one
        unit of each carrier. Tensors with a ``FIXED`` position can never be emptied and are
        left out.
        """
        seen: dict[bytes, np.ndarray] = {}
        for m in self.maps.values():
            if len(m.ids) == 0 or (m.ids < 0).any():
                continue
            units = np.unique(self.roots[m.ids])
            seen.setdefault(units.tobytes(), units)
        return list(seen.values())

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.excluded]

    def summary(self) -> dict[str, int]:
        return {
            "groups": len(self.groups),
            "prunable_groups": len(self.prunable_groups),
            "channels": sum(g.channels for g in self.groups),
            "prunable_channels": sum(len(g.prunable) for g in self.groups),
        }

    def as_dicts(self) -> list[dict]:
        return [
            {"group": g.index, "sources": g.sources, "channels": g.channels,
             "prunable": len(g.prunable), "members": g.members, "reason": g.reason}
            for g in self.groups
        ]

    def table(self, *, width: int = 48) -> str:
        """One row per group: its producers, size, prunable units and why the rest are not."""
        return render_prunable({"summary": self.summary(), "groups": self.as_dicts()}, width=width)


def channel_groups(model: Model, *, norms: bool = False) -> ChannelGroups:
    """The `channel-groups` analysis of ``model`` (cached until the graph changes).
    ``norms``: channels normalized together (LayerNorm) are prunable (module docstring)."""
    key = "channel-groups+norms" if norms else "channel-groups"
    return model.analysis(key, lambda: _Builder(model, norms=norms).build())


def prunable_report(model: Model, *, norms: bool = False) -> dict:
    """What `presso inspect --prunable` shows: every group, its size and why it is excluded."""
    analysis = channel_groups(model, norms=norms)
    return {"summary": analysis.summary(), "groups": analysis.as_dicts()}


def render_prunable(report: dict, *, width: int = 48) -> str:
    """The text form of :func:`prunable_report`."""
    rows = []
    for g in report["groups"]:
        names = ", ".join(g["sources"])
        names = names if len(names) <= width else names[: width - 1] + "…"
        rows.append([g["group"], names, g["channels"], g["prunable"], g["reason"] or "-"])
    s = report["summary"]
    head = (f"channel groups: {s['groups']} ({s['prunable_groups']} prunable), "
            f"channels: {s['channels']} ({s['prunable_channels']} prunable)")
    table = format_table(["group", "producers", "channels", "prunable", "excluded because"], rows, align="rlrrl")
    return head + "\n" + table


def node_label(node: gs.Node) -> str:
    return node.name or f"<{node.op} writing {node.outputs[0].name if node.outputs else '?'}>"


class _Builder:
    """Propagates channel maps through the graph; see the module docstring."""

    def __init__(self, model: Model, *, norms: bool = False):
        self.model = model
        self.norms = norms
        self.infos = infer_tensor_infos(model)
        self.parent: list[int] = []
        self.maps: dict[str, ChannelMap] = {}
        self.params: list[ParamSlice] = []
        self.rewrites: list[tuple[str, gs.Node, dict]] = []
        self.blocks: list[tuple[gs.Node, int, int]] = []
        self.pins: dict[int, str] = {}

    # ---- union-find over channel ids ------------------------------------------------------
    def new_ids(self, node: gs.Node, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.blocks.append((node, start, count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def unite(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x == FIXED and y == FIXED:
                continue
            if x == FIXED or y == FIXED:
                self.pin([y if x == FIXED else x], reason)
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, ids: Iterable[int], reason: str) -> None:
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).tolist():
            if i != FIXED:
                self.pins.setdefault(int(i), reason)

    def pin_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            m = self.maps.get(t.name)
            if m is not None:
                self.pin(m.ids, reason)

    # ---- tensors ---------------------------------------------------------------------------
    def shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.shape)
        info = self.infos.get(tensor.name)
        if info is None or not info.is_static:
            return None
        return tuple(int(d) for d in info.shape)

    def map_of(self, tensor: gs.Tensor) -> ChannelMap | None:
        return self.maps.get(tensor.name) if tensor.name else None

    def set_map(self, tensor: gs.Tensor, axis: int, ids: np.ndarray) -> None:
        shape = self.shape(tensor)
        if shape is None or axis >= len(shape) or shape[axis] != len(ids):
            self.pin(ids, f"the shape of tensor '{tensor.name}' is unknown or unexpected; "
                          "fix the input shapes (--shape) and run infer-shapes")
            return
        self.maps[tensor.name] = ChannelMap(axis, np.asarray(ids, dtype=np.int64))

    def pass_through(self, node: gs.Node, m: ChannelMap, blocked: bool, why: str) -> None:
        """Carry `m` to the node's first output unchanged, or pin its channels when `blocked`."""
        if blocked:
            self.pin(m.ids, f"{node.op} node '{node_label(node)}' {why}")
        else:
            self.set_map(node.outputs[0], m.axis, m.ids)

    def param(self, node: gs.Node, index: int, axis: int, ids: np.ndarray, role: str) -> None:
        self.params.append(ParamSlice(node, index, axis, np.asarray(ids, dtype=np.int64), role))

    # ---- driver ----------------------------------------------------------------------------
    def build(self) -> ChannelGroups:
        for node in topological_nodes(self.model):
            rule = _RULES.get(node.op)
            if node.domain not in ("", "ai.onnx", None):
                rule = None
            if rule is None:
                if node.op in _UNARY or node.op in _BINARY:
                    rule = _Builder.elementwise
                else:
                    self.pin_inputs(node, f"consumed by {node.op} node '{node_label(node)}', "
                                          "which channel pruning has no rule for")
                    continue
            rule(self, node)
        for out in self.model.graph.outputs:
            m = self.maps.get(out.name)
            if m is not None:
                self.pin(m.ids, f"reaches graph output '{out.name}'")
        for name, node in nodes_reading_in_bodies(self.model.graph).items():
            m = self.maps.get(name)
            if m is not None:  # If/Loop/Scan bodies read outer tensors without listing them as inputs
                self.pin(m.ids, f"read inside the subgraph of {node.op} node '{node_label(node)}'")
        return self.finish()

    def finish(self) -> ChannelGroups:
        roots = np.asarray(self.parent, dtype=np.int64)
        while True:  # full path compression, vectorized
            nxt = roots[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        pinned_roots: dict[int, str] = {}
        for i, reason in self.pins.items():
            pinned_roots.setdefault(int(roots[i]), reason)
        # Producers whose ids share a root belong to one group (union-find over blocks).
        block_parent = list(range(len(self.blocks)))

        def find_block(b: int) -> int:
            while block_parent[b] != b:
                block_parent[b] = block_parent[block_parent[b]]
                b = block_parent[b]
            return b

        first_block_of_root: dict[int, int] = {}
        for b, (_, start, count) in enumerate(self.blocks):
            for r in np.unique(roots[start:start + count]).tolist():
                other = first_block_of_root.setdefault(r, b)
                if other != b:
                    ra, rb = find_block(other), find_block(b)
                    if ra != rb:
                        block_parent[max(ra, rb)] = min(ra, rb)
        by_group: dict[int, list[int]] = defaultdict(list)
        for b in range(len(self.blocks)):
            by_group[find_block(b)].append(b)
        group_of_root = np.full(len(roots), -1, dtype=np.int64)
        for g, blocks in enumerate(by_group.values()):
            for b in blocks:
                _, start, count = self.blocks[b]
                group_of_root[roots[start:start + count]] = g
        members: list[dict[str, None]] = [{} for _ in by_group]
        for p in self.params:
            ids = p.ids[p.ids >= 0]
            for g in np.unique(group_of_root[roots[ids]]).tolist():
                if g >= 0:
                    members[g][node_label(p.node)] = None
        groups = []
        for index, blocks in enumerate(by_group.values()):
            units: dict[int, None] = {}
            for b in blocks:
                _, start, count = self.blocks[b]
                units.update(dict.fromkeys(roots[start:start + count].tolist()))
            groups.append(ChannelGroup(
                index=index,
                sources=[node_label(self.blocks[b][0]) for b in blocks],
                units=list(units),
                members=list(members[index]),
                pinned={r: pinned_roots[r] for r in units if r in pinned_roots},
            ))
        return ChannelGroups(groups, self.maps, self.params, self.rewrites, self.blocks, roots)

    # ---- rules -----------------------------------------------------------------------------
    def elementwise(self, node: gs.Node) -> None:
        """Broadcasting element-wise ops: operands' channels at the same position are one."""
        out = node.outputs[0]
        out_shape = self.shape(out)
        mapped = [(i, t, self.map_of(t)) for i, t in enumerate(node.inputs) if self.map_of(t)]
        if not mapped:
            return
        if out_shape is None:
            self.pin_inputs(node, f"the output shape of {node.op} node '{node_label(node)}' is unknown")
            return
        rank = len(out_shape)
        axes = {m.axis + rank - len(self.shape(t) or ()) for _, t, m in mapped}
        if len(axes) != 1:
            self.pin_inputs(node, f"{node.op} node '{node_label(node)}' combines channels of different axes")
            return
        axis = axes.pop()
        size = out_shape[axis]
        ids = None
        for _, t, m in mapped:
            if len(m.ids) != size:
                self.pin(m.ids, f"{node.op} node '{node_label(node)}' broadcasts a single channel")
            elif ids is None:
                ids = m.ids
            else:
                self.unite(ids, m.ids, f"combined in {node.op} node '{node_label(node)}' with channels that stay")
        if ids is None:
            return
        for i, t in enumerate(node.inputs):
            if not t.name or self.map_of(t) is not None:
                continue
            shape = self.shape(t)
            if shape is None:
                self.pin(ids, f"the shape of '{t.name}' (input of '{node_label(node)}') is unknown")
                return
            a = axis - (rank - len(shape))
            if a < 0 or shape[a] == 1:
                continue
            if isinstance(t, gs.Constant):
                self.param(node, i, a, ids, "const")
            elif not self.absorb(t, a - len(shape), ids):
                self.pin(ids, f"{node.op} node '{node_label(node)}' combines them with tensor "
                              f"'{t.name}', whose channels cannot be pruned")
        self.set_map(out, axis, ids)

    def absorb(self, tensor: gs.Tensor, axis: int, ids: np.ndarray) -> bool:
        """Whether ``tensor`` (no channel map, but as many entries as ``ids`` along ``axis``,
        counted from the end) is computed element-wise from constants and broadcast
        statistics only, e.g. a LayerNorm's ``rsqrt(var) · γ``; if so its constants' slices
        are recorded so that the same channels leave them. Every tensor on the way must have
        one consumer, since it changes shape."""
        found: list[tuple[gs.Node, int, int]] = []

        def walk(t: gs.Tensor, depth: int) -> bool:
            node = t.inputs[0] if len(t.inputs) == 1 else None
            if (node is None or depth > 8 or len(t.outputs) != 1 or len(node.outputs) != 1
                    or not (node.op in _UNARY or node.op in _BINARY) or node.domain not in ("", "ai.onnx", None)):
                return False
            for i, u in enumerate(node.inputs):
                shape = self.shape(u)
                if shape is None:
                    return False
                if len(shape) < -axis or shape[axis] == 1:
                    continue  # broadcast along the channels (a statistic, a scalar)
                if shape[axis] != len(ids) or self.map_of(u) is not None:
                    return False
                if isinstance(u, gs.Constant):
                    found.append((node, i, len(shape) + axis))
                elif not walk(u, depth + 1):
                    return False
            return True

        if not walk(tensor, 0) or not found:
            return False
        for node, i, a in found:
            self.param(node, i, a, ids, "const")
        return True

    def conv(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        m = self.map_of(x)
        if not isinstance(w, gs.Constant):
            if m is not None:
                self.pin(m.ids, f"the weights of {node.op} node '{node_label(node)}' are not constant")
            return
        if m is not None and m.axis != 1:
            self.pin(m.ids, f"{node.op} node '{node_label(node)}' reads them on a non-channel axis")
            m = None
        group = int(node.attrs.get("group", 1))
        out_channels, cin_g = int(w.shape[0]), int(w.shape[1])
        has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
        if has_bias and not isinstance(node.inputs[2], gs.Constant):
            if m is not None:
                self.pin(m.ids, f"{node.op} node '{node_label(node)}' has a computed bias")
            return
        if group > 1 and cin_g == 1:  # depthwise (with channel multiplier): in and out move together
            if m is None:
                return
            ids = np.repeat(m.ids, out_channels // group)
            self.param(node, 1, 0, ids, "out")
            if has_bias:
                self.param(node, 2, 0, ids, "bias")
            self.rewrites.append(("group", node, {}))
            self.set_map(node.outputs[0], 1, ids)
            return
        if m is not None:
            local = m.ids.reshape(group, cin_g)
            for g in range(1, group):  # the same local input channel leaves every group
                self.unite(local[0], local[g], f"grouped {node.op} '{node_label(node)}' reads a fixed channel")
            self.param(node, 1, 1, local[0], "in")
        ids = self.new_ids(node, out_channels)
        per_group = ids.reshape(group, out_channels // group)
        for g in range(1, group):  # equal per-group counts: remove the same local channel in each
            self.unite(per_group[0], per_group[g], "grouped conv")
        self.param(node, 1, 0, ids, "out")
        if has_bias:
            self.param(node, 2, 0, ids, "bias")
        self.set_map(node.outputs[0], 1, ids)

    def conv_transpose(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        m = self.map_of(x)
        group = int(node.attrs.get("group", 1))
        if not isinstance(w, gs.Constant) or group != 1:
            if m is not None:
                self.pin(m.ids, f"ConvTranspose node '{node_label(node)}' has non-constant weights or groups")
            return
        if m is not None:
            if m.axis != 1:
                self.pin(m.ids, f"ConvTranspose node '{node_label(node)}' reads them on a non-channel axis")
            else:
                self.param(node, 1, 0, m.ids, "in")
        ids = self.new_ids(node, int(w.shape[1]))
        self.param(node, 1, 1, ids, "out")
        if len(node.inputs) > 2 and node.inputs[2].name:
            if isinstance(node.inputs[2], gs.Constant):
                self.param(node, 2, 0, ids, "bias")
            else:
                self.pin(ids, f"ConvTranspose node '{node_label(node)}' has a computed bias")
        self.set_map(node.outputs[0], 1, ids)

    def gemm(self, node: gs.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        m = self.map_of(a)
        trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
        if not isinstance(b, gs.Constant):
            if m is not None:
                self.pin(m.ids, f"the weights of Gemm node '{node_label(node)}' are not constant")
            return
        if m is not None:
            if m.axis != (0 if trans_a else 1):
                self.pin(m.ids, f"Gemm node '{node_label(node)}' reads them on its row axis")
            else:
                self.param(node, 1, 1 if trans_b else 0, m.ids, "in")
        n_out = int(b.shape[0 if trans_b else 1])
        ids = self.new_ids(node, n_out)
        self.param(node, 1, 0 if trans_b else 1, ids, "out")
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = node.inputs[2]
            c_shape = self.shape(c)
            if c_shape and c_shape[-1] == n_out and n_out > 1:
                if isinstance(c, gs.Constant):
                    self.param(node, 2, len(c_shape) - 1, ids, "bias")
                else:
                    self.pin(ids, f"Gemm node '{node_label(node)}' adds a non-constant bias")
        self.set_map(node.outputs[0], 1, ids)

    def matmul(self, node: gs.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        ma, mb = self.map_of(a), self.map_of(b)
        a_shape, b_shape = self.shape(a), self.shape(b)
        if a_shape is None or b_shape is None:
            self.pin_inputs(node, f"MatMul node '{node_label(node)}' has operands of unknown shape")
            return
        if mb is not None:  # both operands computed: their shared K axis must match
            if ma is not None and ma.axis == len(a_shape) - 1 and mb.axis == len(b_shape) - 2:
                self.unite(ma.ids, mb.ids, f"MatMul node '{node_label(node)}'")
            else:
                self.pin_inputs(node, f"MatMul node '{node_label(node)}' multiplies two computed tensors")
            return
        if ma is not None and ma.axis != len(a_shape) - 1:
            self.pin(ma.ids, f"MatMul node '{node_label(node)}' reads them on a row axis")
            ma = None
        if not isinstance(b, gs.Constant) or len(b_shape) != 2:
            if ma is not None:
                self.pin(ma.ids, f"MatMul node '{node_label(node)}' has no constant 2-D weight")
            return
        if ma is not None:
            self.param(node, 1, 0, ma.ids, "in")
        ids = self.new_ids(node, b_shape[1])
        self.param(node, 1, 1, ids, "out")
        out_shape = self.shape(node.outputs[0])
        self.set_map(node.outputs[0], len(out_shape) - 1 if out_shape else 0, ids)

    def batchnorm(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        params = node.inputs[1:5]
        if m.axis != 1 or not all(isinstance(p, gs.Constant) for p in params):
            self.pin(m.ids, f"{node.op} node '{node_label(node)}' has non-constant parameters "
                            "or normalizes another axis")
            return
        for i in range(1, len(node.inputs)):
            self.param(node, i, 0, m.ids, "gamma" if i == 1 else "norm")
        self.set_map(node.outputs[0], 1, m.ids)

    def layernorm(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        shape = self.shape(node.inputs[0])
        if m is None:
            return
        axis = int(node.attrs.get("axis", -1)) % len(shape) if shape else 0
        if self.norms and shape is not None and m.axis == axis == len(shape) - 1:
            params = [(i, t) for i, t in enumerate(node.inputs[1:3], 1) if t.name]
            if all(isinstance(t, gs.Constant) for _, t in params):
                for i, t in params:  # scale and bias along the normalized (channel) axis
                    if len(t.shape) and t.shape[-1] == len(m.ids):
                        self.param(node, i, len(t.shape) - 1, m.ids, "norm")
                self.set_map(node.outputs[0], m.axis, m.ids)
                return
            self.pin(m.ids, f"LayerNormalization node '{node_label(node)}' has a computed scale or bias")
            return
        self.pass_through(node, m, shape is None or m.axis >= axis,
                          "normalizes across them (prune-channels{norms=true} prunes them)")

    def lrn(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        self.pass_through(node, m, m.axis == 1, "normalizes across neighbouring channels")

    def softmax(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        shape = self.shape(node.inputs[0])
        if m is None:
            return
        if shape is None:
            self.pin(m.ids, f"{node.op} node '{node_label(node)}' has an input of unknown shape")
            return
        if self.model.opset >= 13:
            axis = int(node.attrs.get("axis", -1)) % len(shape)
            across = m.axis == axis
        else:  # before opset 13 the input is coerced to 2-D at `axis`
            across = m.axis >= int(node.attrs.get("axis", 1)) % len(shape)
        self.pass_through(node, m, across, "normalizes across them")

    def pool(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        self.pass_through(node, m, m.axis > 1, "pools along their axis")

    def resize(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        # Resize(X, roi, scales, sizes) from opset 11; (X, scales) in opset 10 and Upsample.
        scales_index = 2 if (node.op == "Resize" and self.model.opset >= 11) else 1
        inputs = node.inputs
        scales = inputs[scales_index] if len(inputs) > scales_index and inputs[scales_index].name else None
        sizes = inputs[3] if node.op == "Resize" and len(inputs) > 3 and inputs[3].name else None
        if "scales" in node.attrs:  # Upsample-7
            values = np.asarray(node.attrs["scales"])
        elif scales is not None and isinstance(scales, gs.Constant) and scales.values.size:
            values = np.asarray(scales.values)
        elif sizes is not None and isinstance(sizes, gs.Constant):
            if "axes" in node.attrs:
                self.pin(m.ids, f"Resize node '{node_label(node)}' uses `axes`")
                return
            self.rewrites.append(("resize-sizes", node, {}))
            self.set_map(node.outputs[0], m.axis, m.ids)
            return
        else:
            self.pin(m.ids, f"{node.op} node '{node_label(node)}' has non-constant scales/sizes")
            return
        if m.axis >= values.size or values[m.axis] != 1 or "axes" in node.attrs:
            self.pin(m.ids, f"{node.op} node '{node_label(node)}' resizes along their axis")
            return
        self.set_map(node.outputs[0], m.axis, m.ids)

    def pad(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        shape = self.shape(node.inputs[0])
        if "pads" in node.attrs:
            pads = np.asarray(node.attrs["pads"])
            axes = None
        else:
            if not isinstance(node.inputs[1], gs.Constant):
                self.pin(m.ids, f"Pad node '{node_label(node)}' has non-constant pads")
                return
            pads = np.asarray(node.inputs[1].values)
            axes_t = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
            if axes_t is not None and not isinstance(axes_t, gs.Constant):
                self.pin(m.ids, f"Pad node '{node_label(node)}' has non-constant axes")
                return
            axes = np.asarray(axes_t.values) if axes_t is not None else None
        rank = len(shape) if shape else 0
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        before, after = 0, 0
        if m.axis in axes:
            k = axes.index(m.axis)
            before, after = int(pads[k]), int(pads[k + len(axes)])
        if (before or after) and (before < 0 or after < 0 or node.attrs.get("mode", "constant") != "constant"):
            self.pin(m.ids, f"Pad node '{node_label(node)}' crops or reflects along their axis")
            return
        ids = np.concatenate([np.full(before, FIXED), m.ids, np.full(after, FIXED)])
        self.set_map(node.outputs[0], m.axis, ids)

    def transpose(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        shape = self.shape(node.inputs[0])
        perm = list(node.attrs.get("perm", list(range(len(shape or ())))[::-1]))
        if m.axis not in perm:
            self.pin(m.ids, f"Transpose node '{node_label(node)}' has an unexpected perm")
            return
        self.set_map(node.outputs[0], perm.index(m.axis), m.ids)

    def reshape(self, node: gs.Node) -> None:
        """Reshape-like ops, simulated on an index tensor (see the module docstring)."""
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        in_shape, out_shape = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        where = f"{node.op} node '{node_label(node)}'"
        if in_shape is None or out_shape is None:
            self.pin(m.ids, f"{where} has unknown shapes; fix the input shapes")
            return
        computed = node.op == "Reshape" and not isinstance(node.inputs[1], gs.Constant)
        size = len(m.ids)
        view = [1] * len(in_shape)
        view[m.axis] = size
        index = np.broadcast_to(np.arange(size, dtype=np.int32).reshape(view), in_shape).reshape(out_shape)
        varying = [b for b in range(len(out_shape)) if out_shape[b] > 1 and np.any(np.diff(index, axis=b))]
        if not varying:
            self.pin(m.ids, f"{where} leaves no axis for them")
            return
        if len(varying) == 1:  # channel × spatial blocks on one axis (e.g. Flatten into Gemm)
            b = varying[0]
            line = index[tuple(slice(None) if k == b else 0 for k in range(len(out_shape)))]
            repeat = int(np.argmax(line != line[0])) if np.any(line != line[0]) else len(line)
            expected = np.tile(np.repeat(np.arange(size), repeat), max(1, len(line) // (size * repeat)))
            if len(line) % (size * repeat) or not np.array_equal(line, expected):
                self.pin(m.ids, f"{where} mixes them with other axes irregularly")
                return
            entry = self.computed_entry(node.inputs[1], b) if computed else None
            if computed and entry is None:
                self.pin(m.ids, f"{where} has a computed target shape; {_FOLD_HINT}")
                return
            self.rewrites.append(("reshape", node, {"entry": entry}))
            self.set_map(node.outputs[0], b, m.ids[line])
            return
        # The channel axis is split into several axes (e.g. [N, g·c, H, W] → [N, g, c, H, W]).
        sizes = [out_shape[b] for b in varying]
        corner = index[tuple(slice(None) if k in varying else 0 for k in range(len(out_shape)))]
        if (varying != list(range(varying[0], varying[0] + len(varying))) or int(np.prod(sizes)) != size
                or not np.array_equal(corner, np.arange(size).reshape(sizes))):
            self.pin(m.ids, f"{where} mixes them with other axes irregularly")
            return
        primary = max(range(len(varying)), key=lambda k: (sizes[k], k))
        entry = self.computed_entry(node.inputs[1], varying[primary]) if computed else None
        if computed and entry is None:
            self.pin(m.ids, f"{where} has a computed target shape; {_FOLD_HINT}")
            return
        split = np.moveaxis(m.ids.reshape(sizes), primary, 0).reshape(sizes[primary], -1)
        for k in range(1, split.shape[1]):  # keep the split regular: the same index leaves every block
            self.unite(split[:, 0], split[:, k], f"{where} splits them into equal blocks")
        self.rewrites.append(("reshape", node, {"entry": entry}))
        self.set_map(node.outputs[0], varying[primary], split[:, 0])

    def expand(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        in_shape, out_shape = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        if in_shape is None or out_shape is None:
            self.pin(m.ids, f"Expand node '{node_label(node)}' has unknown shapes")
            return
        target = node.inputs[1]
        axis = m.axis + len(out_shape) - len(in_shape)
        entry = None
        if not isinstance(target, gs.Constant):
            length = (self.shape(target) or (None,))[0]
            position = axis - (len(out_shape) - length) if length is not None else -1
            entry = self.computed_entry(target, position) if position >= 0 else None
            if position >= 0 and entry is None:
                self.pin(m.ids, f"Expand node '{node_label(node)}' has a computed target shape; {_FOLD_HINT}")
                return
        self.rewrites.append(("expand", node, {"rank": len(out_shape), "entry": entry}))
        self.set_map(node.outputs[0], axis, m.ids)

    def concat(self, node: gs.Node) -> None:
        out_shape = self.shape(node.outputs[0])
        mapped = [self.map_of(t) for t in node.inputs]
        if not any(m is not None for m in mapped):
            return
        if out_shape is None:
            self.pin_inputs(node, f"Concat node '{node_label(node)}' has an unknown output shape")
            return
        axis = int(node.attrs.get("axis", 0)) % len(out_shape)
        if all(m is None or m.axis == axis for m in mapped):  # channels side by side: offsets
            parts = []
            for t, m in zip(node.inputs, mapped):
                shape = self.shape(t)
                if m is not None:
                    parts.append(m.ids)
                elif shape is not None:
                    parts.append(np.full(shape[axis], FIXED))
                else:
                    self.pin_inputs(node, f"Concat node '{node_label(node)}' has an input of unknown shape")
                    return
            self.set_map(node.outputs[0], axis, np.concatenate(parts))
            return
        self.elementwise(node)  # concatenated along another axis: like an element-wise op

    def split(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        shape = self.shape(node.inputs[0])
        axis = int(node.attrs.get("axis", 0)) % len(shape) if shape else 0
        if m.axis != axis:
            for out in node.outputs:
                self.set_map(out, m.axis, m.ids)
            return
        sizes = [self.shape(out) for out in node.outputs]
        if any(s is None for s in sizes):
            self.pin(m.ids, f"Split node '{node_label(node)}' has outputs of unknown shape")
            return
        offsets = np.cumsum([0] + [s[axis] for s in sizes])
        self.rewrites.append(("split", node, {}))
        for out, start, end in zip(node.outputs, offsets[:-1], offsets[1:]):
            self.set_map(out, axis, m.ids[start:end])

    def slice(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        spec = slice_spec(node, self.shape(node.inputs[0]))
        if spec is None:
            self.pin(m.ids, f"Slice node '{node_label(node)}' has non-constant or unknown parameters")
            return
        if m.axis not in spec:
            self.set_map(node.outputs[0], m.axis, m.ids)
            return
        start, end, step = spec[m.axis]
        if step != 1:
            self.pin(m.ids, f"Slice node '{node_label(node)}' takes every {step}th channel")
            return
        facts = {"start": start, "end": end, "rank": len(self.shape(node.inputs[0]))}
        self.rewrites.append(("slice", node, facts))
        self.set_map(node.outputs[0], m.axis, m.ids[start:end])

    def reduce(self, node: gs.Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        shape = self.shape(node.inputs[0])
        axes = reduce_axes(node, len(shape) if shape else None)
        if shape is not None and axes == [m.axis] and self.norms and node.op in _NORM_REDUCE:
            self.channel_statistic(node, m)
            return
        if shape is None or axes is None or m.axis in axes:
            hint = " (prune-channels{norms=true} prunes them)" if node.op in _NORM_REDUCE else ""
            self.pin(m.ids, f"{node.op} node '{node_label(node)}' reduces across them{hint}")
            return
        keep = int(node.attrs.get("keepdims", 1))
        axis = m.axis if keep else m.axis - sum(1 for a in axes if a < m.axis)
        self.set_map(node.outputs[0], axis, m.ids)

    def channel_statistic(self, node: gs.Node, m: ChannelMap) -> None:
        """A normalization statistic over the channel axis (norms=True): computed over the kept
        channels after removal; a sum's constant 1/C (or C it is divided by) is rescaled."""
        if node.op == "ReduceMean":
            return
        count = len(m.ids)
        for consumer in node.outputs[0].outputs:
            if consumer.op not in ("Mul", "Div") or len(consumer.inputs) != 2:
                continue
            k = 1 if consumer.inputs[0] is node.outputs[0] else 0
            if consumer.op == "Div" and k == 0:
                continue
            c = consumer.inputs[k]
            if not isinstance(c, gs.Constant) or np.size(c.values) != 1:
                continue
            value = float(np.asarray(c.values).reshape(-1)[0])
            wanted = 1.0 / count if consumer.op == "Mul" else float(count)
            if np.isclose(value, wanted, rtol=1e-5):
                self.rewrites.append(("mean-scale", consumer, {"index": k, "ids": m.ids}))

    def computed_entry(self, target: gs.Tensor, position: int):
        """Where entry ``position`` of a computed shape target is a constant of a Concat
        (through Cast/Identity), so that the rewrite can change it (module docstring); or None."""
        return _concat_entry(target, position, self.shape)

    def shape_reader(self, node: gs.Node) -> None:
        self.pin_inputs(node, f"{node.op} node '{node_label(node)}' reads their count")


def reduce_axes(node: gs.Node, rank: int | None) -> list[int] | None:
    """The axes a Reduce*/ArgMax node reduces, or None if unknown/all."""
    if rank is None:
        return None
    if node.op in ("ArgMax", "ArgMin"):
        return [int(node.attrs.get("axis", 0)) % rank]
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and node.inputs[1].name:
        if not isinstance(node.inputs[1], gs.Constant):
            return None
        axes = np.asarray(node.inputs[1].values).reshape(-1).tolist()
    else:
        axes = []
    if not axes:
        return None if not int(node.attrs.get("noop_with_empty_axes", 0)) else []
    return [int(a) % rank for a in axes]


def slice_spec(node: gs.Node, shape: tuple[int, ...] | None) -> dict[int, tuple[int, int, int]] | None:
    """{axis: (start, end, step)} of a Slice node, normalized to the input's shape."""
    if shape is None:
        return None
    if "starts" in node.attrs:  # opset < 10
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        values = []
        for i in range(1, 5):
            t = node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None
            if t is not None and not isinstance(t, gs.Constant):
                return None
            values.append(None if t is None else np.asarray(t.values).reshape(-1).tolist())
        starts, ends, axes, steps = values
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
    spec = {}
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % len(shape)
        spec[a] = (*slice(int(s), int(e), int(st)).indices(shape[a])[:2], int(st))
    return spec


def _concat_entry(target: gs.Tensor, position: int, shape_of) -> tuple[list[gs.Node], int, int] | None:
    """Where entry ``position`` of a computed 1-D shape tensor is spelled out: ``(chain, input
    index, offset)`` with ``chain`` the nodes from the Concat up to ``target`` (Cast/Identity
    between), when that entry lies in a constant input of the Concat; else None."""
    chain = []
    t = target
    while len(t.inputs) == 1 and t.inputs[0].op in _SHAPE_PASS:
        chain.append(t.inputs[0])
        t = t.inputs[0].inputs[0]
    if len(t.inputs) != 1 or t.inputs[0].op != "Concat":
        return None
    concat = t.inputs[0]
    offset = 0
    for i, part in enumerate(concat.inputs):
        shape = shape_of(part)
        if shape is None or len(shape) != 1:
            return None
        if offset <= position < offset + shape[0]:
            if not isinstance(part, gs.Constant):
                return None
            return [concat, *reversed(chain)], i, position - offset
        offset += shape[0]
    return None


_RULES = {
    "Conv": _Builder.conv,
    "ConvTranspose": _Builder.conv_transpose,
    "Gemm": _Builder.gemm,
    "MatMul": _Builder.matmul,
    "BatchNormalization": _Builder.batchnorm,
    "InstanceNormalization": _Builder.batchnorm,
    "LayerNormalization": _Builder.layernorm,
    "LRN": _Builder.lrn,
    "Softmax": _Builder.softmax,
    "LogSoftmax": _Builder.softmax,
    "Hardmax": _Builder.softmax,
    **{op: _Builder.pool for op in _POOL},
    "Resize": _Builder.resize,
    "Upsample": _Builder.resize,
    "Pad": _Builder.pad,
    "Transpose": _Builder.transpose,
    **{op: _Builder.reshape for op in _RESHAPE},
    "Expand": _Builder.expand,
    "Concat": _Builder.concat,
    "Split": _Builder.split,
    "Slice": _Builder.slice,
    **{op: _Builder.reduce for op in (*_REDUCE, "ArgMax", "ArgMin")},
    "Shape": _Builder.shape_reader,
    "Size": _Builder.shape_reader,
}

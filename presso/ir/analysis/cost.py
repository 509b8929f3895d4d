"""Cost analysis: parameters, MACs/FLOPs per node, activation memory and model size.

FLOPs are counted as 2 × MACs for the linear ops (Conv, ConvTranspose, Gemm, MatMul and their
quantized forms) and as one per output element for element-wise ops, pooling and
normalization. Counts need static shapes: nodes whose shapes are unknown report ``None``
and are listed in ``CostReport.unknown``.

Control flow: an If node costs its more expensive branch, a Loop or Scan its body times the
trip count when that is a constant (Loop's ``M``, Scan's sequence length), else one iteration;
the nodes of the bodies are listed in ``CostReport.body_nodes`` and their constants count as
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..model import Model
from ..subgraphs import node_bodies, nodes_reading_in_bodies
from .shapes import TensorInfo, infer_tensor_infos

LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul",
              "ConvInteger", "MatMulInteger", "MatMulNBits"}
ZERO_COST_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant",
                 "ConstantOfShape", "Transpose", "Concat", "Split", "Slice", "Gather", "Cast",
                 "Dropout", "Expand", "Tile", "Pad", "QuantizeLinear", "DequantizeLinear"}


@dataclass
class NodeCost:
    name: str
    op: str
    macs: int | None
    flops: int | None
    params: int
    output_bytes: int | None


@dataclass
class CostReport:
    nodes: list[NodeCost]
    params: int
    param_bytes: int
    flops: int
    macs: int
    activation_bytes: int
    peak_activation_bytes: int
    unknown: list[str] = field(default_factory=list)
    body_nodes: list[NodeCost] = field(default_factory=list)  # nodes inside If/Loop/Scan bodies

    def by_name(self) -> dict[str, NodeCost]:
        return {n.name: n for n in self.nodes}


def _static(info: TensorInfo | None) -> tuple[int, ...] | None:
    return tuple(int(d) for d in info.shape) if info is not None and info.is_static else None


def _shape_of(tensor: gs.Tensor, infos: dict[str, TensorInfo]) -> tuple[int, ...] | None:
    if isinstance(tensor, gs.Constant):
        return tuple(tensor.shape)
    return _static(infos.get(tensor.name))


def node_macs(node: gs.Node, infos: dict[str, TensorInfo]) -> int | None:
    """Multiply-accumulates of one linear node, or None if shapes are unknown."""
    op = node.op
    out = _shape_of(node.outputs[0], infos) if node.outputs else None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w_index = 3 if op == "QLinearConv" else 1
        w = _shape_of(node.inputs[w_index], infos)
        if out is None or w is None:
            return None
        # each output element needs (C_in / group) × kernel MACs, which is w[1:] exactly
        return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        x = _shape_of(node.inputs[0], infos)
        w = _shape_of(node.inputs[1], infos)
        if x is None or w is None:
            return None
        # every input element is scattered to (C_out / group) × kernel outputs: w[1:]
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        a = _shape_of(node.inputs[0], infos)
        if out is None or a is None:
            return None
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        return int(out[0] * out[1] * k)
    if op == "MatMulNBits":  # a contrib op: no ONNX shape inference, but K and N are attributes
        a = _shape_of(node.inputs[0], infos)
        if a is None or "K" not in node.attrs or "N" not in node.attrs:
            return None
        return int(np.prod(a[:-1], dtype=np.int64) * node.attrs["K"] * node.attrs["N"])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = _shape_of(node.inputs[0], infos)
        if out is None or a is None:
            return None
        k = a[-1]
        return int(np.prod(out, dtype=np.int64) * k)
    return 0


def node_flops(node: gs.Node, infos: dict[str, TensorInfo]) -> tuple[int | None, int | None]:
    """(macs, flops) of one node."""
    if node.op in LINEAR_OPS:
        macs = node_macs(node, infos)
        if macs is None:
            return None, None
        flops = 2 * macs
        if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2:
            out = _shape_of(node.outputs[0], infos)
            flops += int(np.prod(out, dtype=np.int64)) if out else 0
        return macs, flops
    if node.op in ZERO_COST_OPS or node.domain not in ("", "ai.onnx", None):
        return 0, 0
    out = _shape_of(node.outputs[0], infos) if node.outputs else ()
    if out is None:
        return 0, None
    elements = int(np.prod(out, dtype=np.int64))
    if node.op in ("MaxPool", "AveragePool"):
        kernel = int(np.prod(node.attrs.get("kernel_shape", [1]), dtype=np.int64))
        return 0, elements * kernel
    if node.op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        x = _shape_of(node.inputs[0], infos)
        return 0, int(np.prod(x, dtype=np.int64)) if x else None
    return 0, elements


def compute_cost(model: Model) -> CostReport:
    """Cost of the whole model (cached until the graph changes)."""

    def compute() -> CostReport:
        infos = infer_tensor_infos(model)
        walker = _CostWalker(infos)
        nodes = walker.graph_costs(model.graph)
        param_tensors = {id(t): t for t in model.initializers().values()}
        param_tensors.update(walker.body_constants)
        all_params = sum(n.params for n in nodes)  # logical counts: packed int4 blocks count K × N
        param_bytes = sum(t.values.nbytes for t in param_tensors.values())
        # Exporters such as Paddle2ONNX keep weights in Constant nodes: count those too.
        for node in [*model.graph.nodes, *walker.body_graph_nodes]:
            value = node.attrs.get("value") if node.op == "Constant" else None
            if isinstance(value, gs.Constant) and value.values is not None:
                all_params += int(value.values.size)
                param_bytes += int(value.values.nbytes)
        return CostReport(
            nodes=nodes,
            params=all_params,
            param_bytes=param_bytes,
            flops=sum(n.flops or 0 for n in nodes),
            macs=sum(n.macs or 0 for n in nodes),
            activation_bytes=sum(n.output_bytes or 0 for n in nodes),
            peak_activation_bytes=_peak_live_bytes(model, infos),
            unknown=walker.unknown,
            body_nodes=walker.body_costs,
        )

    return model.analysis("cost", compute)


class _CostWalker:
    """Costs node by node, descending into the bodies of control-flow nodes."""

    def __init__(self, infos: dict[str, TensorInfo]):
        self.infos = infos
        self.counted: set[int] = set()
        self.unknown: list[str] = []
        self.body_costs: list[NodeCost] = []
        self.body_graph_nodes: list[gs.Node] = []
        self.body_constants: dict[int, gs.Constant] = {}

    def graph_costs(self, graph: gs.Graph, *, in_body: bool = False) -> list[NodeCost]:
        costs = []
        for node in graph.nodes:
            cost = self.node_cost(node)
            costs.append(cost)
            if in_body:
                self.body_costs.append(cost)
                self.body_graph_nodes.append(node)
        return costs

    def node_cost(self, node: gs.Node) -> NodeCost:
        branches = list(node_bodies(node))
        if branches:
            macs, flops, params = self._control_flow(node, branches)
        else:
            macs, flops = node_flops(node, self.infos)
            params = 0
        if flops is None:
            self.unknown.append(node.name)
        for index, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and t.values is not None and t.shape is not None and id(t) not in self.counted:
                self.counted.add(id(t))
                if node.op == "MatMulNBits" and index == 1:  # packed blocks hold K × N weights
                    params += int(node.attrs.get("K", 0) * node.attrs.get("N", 0))
                elif not (node.op == "MatMulNBits" and index > 1):  # scales, zero points
                    params += int(np.prod(t.shape, dtype=np.int64))
        out_bytes = 0
        for t in node.outputs:
            info = self.infos.get(t.name)
            if info is None or info.nbytes is None:
                out_bytes = None
                break
            out_bytes += info.nbytes
        return NodeCost(node.name, node.op, macs, flops, params, out_bytes)

    def _control_flow(self, node: gs.Node, branches) -> tuple[int | None, int | None, int]:
        totals = []
        params = 0
        for body in branches:
            for t in body.graph.tensors().values():
                if isinstance(t, gs.Constant) and t.values is not None and t.shape is not None:
                    self.body_constants.setdefault(id(t), t)
            costs = self.graph_costs(body.graph, in_body=True)
            params += sum(c.params for c in costs)
            known = all(c.flops is not None for c in costs)
            totals.append((sum(c.macs or 0 for c in costs), sum(c.flops or 0 for c in costs) if known else None))
        if node.op == "If":
            macs = max(m for m, _ in totals)
            flops = None if any(f is None for _, f in totals) else max(f for _, f in totals)
            return macs, flops, params
        trips = _trip_count(node, self.infos)
        macs, flops = totals[0]
        return macs * trips, (flops * trips if flops is not None else None), params


def _trip_count(node: gs.Node, infos: dict[str, TensorInfo]) -> int:
    """Iterations of a Loop or Scan when they are known before running it, else 1."""
    if node.op == "Loop" and node.inputs and isinstance(node.inputs[0], gs.Constant):
        values = node.inputs[0].values
        if values is not None and values.size == 1:
            return max(int(values.reshape(-1)[0]), 0)
    if node.op == "Scan":
        count = int(node.attrs.get("num_scan_inputs", 0))
        if count:
            scanned = node.inputs[-count]
            axes = node.attrs.get("scan_input_axes") or [0]
            shape = _shape_of(scanned, infos)
            if shape is not None and axes[0] < len(shape):
                return int(shape[axes[0]])
    return 1


def _peak_live_bytes(model: Model, infos: dict[str, TensorInfo]) -> int:
    """Peak of simultaneously live activations when nodes run in graph order."""
    nodes = list(model.graph.nodes)
    last_use: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for t in node.inputs:
            if isinstance(t, gs.Variable):
                last_use[id(t)] = i
    # a value that an If/Loop/Scan body reads stays live until the node holding the body runs
    position = {id(n): i for i, n in enumerate(nodes)}
    tensors = model.graph.tensors()
    for name, owner in nodes_reading_in_bodies(model.graph).items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Variable):
            last_use[id(tensor)] = max(last_use.get(id(tensor), -1), position[id(owner)])
    keep = {id(t) for t in model.graph.outputs}
    live: dict[int, int] = {}
    for t in model.graph.inputs:
        info = infos.get(t.name)
        live[id(t)] = (info.nbytes or 0) if info else 0
    peak = sum(live.values())
    for i, node in enumerate(nodes):
        for t in node.outputs:
            info = infos.get(t.name)
            live[id(t)] = (info.nbytes or 0) if info else 0
        peak = max(peak, sum(live.values()))
        for key in [k for k in live if last_use.get(k, -1) <= i and k not in keep]:
            del live[key]
    return peak

"""Cost analysis: parameters, MACs/FLOPs per node, activation memory and model size.

FLOPs are counted as 2 × MACs for the linear ops (Conv, ConvTranspose, Gemm, MatMul and their
quantized forms) and as one per output element for element-wise ops, pooling and
normalization. Counts need static shapes: nodes whose shapes are unknown report ``None``
and are listed in ``CostReport.unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..model import Model
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
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits"):
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
        param_tensors = {id(t): t for t in model.initializers().values()}
        counted_params: set[int] = set()
        nodes: list[NodeCost] = []
        unknown: list[str] = []
        for node in model.graph.nodes:
            macs, flops = node_flops(node, infos)
            if flops is None:
                unknown.append(node.name)
            params = 0
            for t in node.inputs:
                if id(t) in param_tensors and id(t) not in counted_params:
                    counted_params.add(id(t))
                    params += int(np.prod(t.shape, dtype=np.int64))
            out_bytes = 0
            for t in node.outputs:
                info = infos.get(t.name)
                if info is None or info.nbytes is None:
                    out_bytes = None
                    break
                out_bytes += info.nbytes
            nodes.append(NodeCost(node.name, node.op, macs, flops, params, out_bytes))
        all_params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in param_tensors.values())
        param_bytes = sum(t.values.nbytes for t in param_tensors.values())
        # Exporters such as Paddle2ONNX keep weights in Constant nodes: count those too.
        for node in model.graph.nodes:
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
            unknown=unknown,
        )

    return model.analysis("cost", compute)


def _peak_live_bytes(model: Model, infos: dict[str, TensorInfo]) -> int:
    """Peak of simultaneously live activations when nodes run in graph order."""
    nodes = list(model.graph.nodes)
    last_use: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for t in node.inputs:
            if isinstance(t, gs.Variable):
                last_use[id(t)] = i
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

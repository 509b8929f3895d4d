"""Measured latency of one layer in each precision, on onnxruntime's CPU kernels.

For a layer of a calibrated Q/DQ model, three one-node models are built and timed with
onnxruntime (all graph optimizations, ``threads`` intra-op threads) on the layer's real input
values from one sample:

- ``int8``: integer inputs → DQ → layer → Q (the Q on its output, when it has one): the fused
  kernel onnxruntime runs in an int8 chain (QLinearConv, QLinearAdd, …), without the
  quantize/dequantize at the ends, which a chain does not pay.
- ``a16w8``: float activations, int8 weights through their DQ.
- ``float``: the float layer of the reference model.

Only reads the models. The times are medians of repeated runs (microseconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...ir import Model, create_session, evaluate
from ...ir.edit import producer
from .layer_precision import WEIGHT_OPS, _dq_of, is_activation_dq, layers
from .qdq import qparams
from .qmath import quantize

FORMS = ("int8", "a16w8", "float")


def _constant(tensor: gs.Constant, prefix: str) -> gs.Constant:
    return gs.Constant(f"{prefix}{tensor.name}", np.asarray(tensor.values))


def _qparam(tensor: gs.Constant, prefix: str) -> gs.Constant:
    """A scale or zero point; one-element ones as scalars, as fold-qdq stores them (the form
    onnxruntime's QLinearAdd/QLinearMul fusions match)."""
    values = np.asarray(tensor.values)
    return gs.Constant(f"{prefix}{tensor.name}", values.reshape(()) if values.size == 1 else values)


def _copy_dq(dq: gs.Node, source: gs.Tensor, prefix: str) -> tuple[gs.Node, gs.Variable]:
    out = gs.Variable(f"{prefix}{dq.outputs[0].name}", dtype=np.float32)
    inputs = [source] + [_qparam(t, prefix) if isinstance(t, gs.Constant) else t for t in dq.inputs[1:]]
    return gs.Node("DequantizeLinear", f"{prefix}{dq.name}", dict(dq.attrs), inputs, [out]), out


def _weight_source(dq: gs.Node, prefix: str) -> gs.Constant | None:
    """The integer constant a weight DQ reads (quantizing a Q'd float weight here, as fold-qdq does)."""
    src = dq.inputs[0]
    if isinstance(src, gs.Constant):
        return _constant(src, prefix)
    q = producer(src)
    params = qparams(q) if q is not None else None
    if q is None or params is None or not isinstance(q.inputs[0], gs.Constant):
        return None
    values = quantize(np.asarray(q.inputs[0].values), params.scale.values, params.zero_point.values,
                      np.asarray(params.zero_point.values).dtype.name, params.axis)
    return gs.Constant(f"{prefix}{src.name}", values)


def build_form(quantized: Model, reference: Model, name: str, form: str,
               values: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """(one-layer model, its feeds) for layer ``name`` in ``form``; None when it cannot be built.
    ``values``: float values of the layer's activation inputs (by the float tensor's name)."""
    node = next((n for n in layers(quantized) if n.name == name), None)
    if node is None:
        return None
    original = next((n for n in reference.graph.nodes if n.name == name), None)
    builder = _Builder(form if form != "a16w8" or node.op in WEIGHT_OPS else "a16w8-float-constants", values, original)
    new_inputs: list[gs.Tensor | None] = []
    for index, tensor in enumerate(node.inputs):
        if tensor.name and tensor.name in builder.built:  # an input read twice (Mul(x, x)) is built once
            new_inputs.append(builder.built[tensor.name])
            continue
        try:
            built = builder.input(tensor, index)
        except _CannotBuild:
            return None
        if tensor.name and built is not None:
            builder.built[tensor.name] = built
        new_inputs.append(built)
    while new_inputs and new_inputs[-1] is None:
        new_inputs.pop()
    if any(t is None for t in new_inputs):
        return None
    prefix = builder.prefix
    outputs = [gs.Variable(f"{prefix}out{i}", dtype=None) for i in range(len(node.outputs))]
    nodes = builder.nodes + [gs.Node(node.op, f"{prefix}{node.name}", dict(node.attrs), new_inputs, outputs,
                                     domain=node.domain)]
    graph_outputs = list(outputs)
    readers = node.outputs[0].outputs
    if form == "int8" and readers and all(r.op == "QuantizeLinear" for r in readers):
        q = readers[0]
        params = qparams(q)
        if params is not None:
            out = gs.Variable(f"{prefix}q_out", dtype=np.asarray(params.zero_point.values).dtype)
            nodes.append(gs.Node("QuantizeLinear", f"{prefix}q", dict(q.attrs),
                                 [outputs[0], _qparam(params.scale, prefix + "q_"),
                                  _qparam(params.zero_point, prefix + "q_")], [out]))
            graph_outputs[0] = out
    for out in graph_outputs:
        if out.dtype is None:
            out.dtype = np.float32
    graph = gs.Graph(nodes=nodes, inputs=builder.inputs, outputs=graph_outputs, opset=quantized.opset)
    proto = gs.export_onnx(graph)
    proto.ir_version = min(proto.ir_version, 10)
    del proto.opset_import[:]
    proto.opset_import.extend([onnx.helper.make_opsetid("", quantized.opset)])
    return proto, builder.feeds


class _CannotBuild(Exception):
    pass


class _Builder:
    """Builds the inputs of a one-layer model in one form."""

    def __init__(self, form: str, values: Mapping[str, np.ndarray], original: gs.Node | None):
        self.form, self.values, self.original = form, values, original
        self.prefix = f"{form}_"
        self.nodes: list[gs.Node] = []
        self.inputs: list[gs.Variable] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.built: dict[str, gs.Tensor] = {}

    def _feed(self, index: int, value: np.ndarray) -> gs.Variable:
        var = gs.Variable(f"{self.prefix}in{index}", dtype=value.dtype, shape=list(value.shape))
        self.feeds[var.name] = value
        self.inputs.append(var)
        return var

    def input(self, tensor: gs.Tensor, index: int) -> gs.Tensor | None:
        prefix = f"{self.prefix}{index}_"
        dq = _dq_of(tensor)
        if dq is not None and is_activation_dq(dq):
            q = producer(dq.inputs[0])
            if q.inputs[0].name not in self.values:
                raise _CannotBuild
            value = np.asarray(self.values[q.inputs[0].name], dtype=np.float32)
            if self.form != "int8":
                return self._feed(index, value)
            params = qparams(q)
            dtype = np.asarray(params.zero_point.values).dtype
            var = self._feed(index, quantize(value, params.scale.values, params.zero_point.values, dtype.name,
                                             params.axis))
            dq_node, out = _copy_dq(dq, var, prefix)
            self.nodes.append(dq_node)
            return out
        if dq is not None:
            if self.form in ("float", "a16w8-float-constants"):
                original = self.original
                if original is None or index >= len(original.inputs) or not isinstance(original.inputs[index], gs.Constant):
                    return None  # an input the float layer does not have (a bias that bias-correction added)
                return _constant(original.inputs[index], prefix)
            source = _weight_source(dq, prefix)
            if source is None:
                raise _CannotBuild
            dq_node, out = _copy_dq(dq, source, prefix)
            self.nodes.append(dq_node)
            return out
        if isinstance(tensor, gs.Constant):
            return _constant(tensor, prefix)
        if not tensor.name:
            return gs.Variable.empty()
        if tensor.name not in self.values:
            raise _CannotBuild
        return self._feed(index, np.asarray(self.values[tensor.name]))


def time_proto(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, threads: int = 1,
               budget_s: float = 0.05) -> float | None:
    """Median time of one run in microseconds (None when onnxruntime refuses the model)."""
    try:
        session = create_session(proto, optimization="all", threads=threads)
        session.run(None, dict(feeds))
    except Exception:  # a form onnxruntime cannot run (e.g. an op without an int8 kernel)
        return None
    start = time.perf_counter()
    session.run(None, dict(feeds))
    once = max(time.perf_counter() - start, 1e-6)
    runs = int(min(max(budget_s / once, 7), 400))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, dict(feeds))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def _session(model: Model, threads: int):
    from ..base import PassContext
    from .fold_qdq import FoldQDQ

    if model.nodes("QuantizeLinear", "DequantizeLinear"):
        model = model.copy()
        FoldQDQ(check_load=False).run(model, PassContext(progress=False))
    proto, arrays = model.to_proto_without_large_data()
    return create_session(proto, optimization="all", threads=threads, initializers=arrays)


class WholeModelTimer:
    """Times whole models against one baseline (the float model), runs interleaved one for
    one, so that a machine whose speed drifts (other processes, frequency changes) moves both
    medians alike. Models with Q/DQ are folded as deployed first."""

    def __init__(self, baseline: Model, feed: Mapping[str, np.ndarray], *, threads: int = 1,
                 budget_s: float = 0.6):
        self.feed, self.threads, self.budget_s = dict(feed), threads, budget_s
        self.baseline = _session(baseline, threads)
        self.baseline_ms = self.ms(baseline)

    def ms(self, model: Model) -> float:
        """The model's median milliseconds, scaled to the baseline's long-run median."""
        session = _session(model, self.threads)
        for _ in range(2):
            session.run(None, self.feed)
            self.baseline.run(None, self.feed)
        start = time.perf_counter()
        session.run(None, self.feed)
        self.baseline.run(None, self.feed)
        once = max(time.perf_counter() - start, 1e-6)
        mine, base = [], []
        for _ in range(int(min(max(self.budget_s / once, 5), 300))):
            start = time.perf_counter()
            session.run(None, self.feed)
            middle = time.perf_counter()
            self.baseline.run(None, self.feed)
            mine.append(middle - start)
            base.append(time.perf_counter() - middle)
        ratio = float(np.median(mine) / np.median(base))
        return ratio * (self.baseline_ms if hasattr(self, "baseline_ms") else float(np.median(base) * 1e3))


def measure_layers(quantized: Model, reference: Model, names: Iterable[str], feed: Mapping[str, np.ndarray], *,
                   threads: int = 1, forms: Iterable[str] = FORMS, progress=None) -> dict[str, dict[str, float | None]]:
    """{layer: {form: microseconds or None}} for the named layers, on one sample ``feed``."""
    names = list(names)
    by_name = {n.name: n for n in layers(quantized)}
    wanted = set()
    for name in names:
        for tensor in by_name[name].inputs:
            dq = _dq_of(tensor)
            if dq is not None and is_activation_dq(dq):
                wanted.add(producer(dq.inputs[0]).inputs[0].name)
            elif dq is None and isinstance(tensor, gs.Variable) and tensor.name:
                wanted.add(tensor.name)
    known = reference.graph.tensors()
    values = evaluate(reference, feed, sorted(w for w in wanted if w in known)) if wanted else {}
    result = {}
    for name in names:
        result[name] = {}
        for form in forms:
            built = build_form(quantized, reference, name, form, values)
            result[name][form] = time_proto(*built, threads=threads) if built is not None else None
        if progress is not None:
            progress.update(1)
    return result

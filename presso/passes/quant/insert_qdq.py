"""`insert-qdq`: place QuantizeLinear→DequantizeLinear pairs (fake quantization) on a model.

Step 1 of the quantization flow (insert → calibrate → fine-tune → fold). Lossy: the model
computes in float on values rounded to the integer grid.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model, QuantSpec
from ...ir.analysis.shapes import infer_tensor_infos
from ...ir.edit import add_initializer, is_graph_output, producer
from ...ir.errors import PassError
from ...ir.subgraphs import bodies
from ..base import Pass, PassContext, PassResult
from ..cleanup.constants_to_initializers import ConstantsToInitializers
from ..cleanup.fold_affine import FoldAffine
from ..cleanup.fold_batchnorm import FoldBatchNorm
from ..cleanup.fold_constants import FoldConstants
from ..cleanup.remove_identity import RemoveIdentity
from ..cleanup.upgrade_opset import UpgradeOpset
from ..registry import register_pass
from .qdq import FLOAT_DTYPES, insert_qdq_pair, make_qparam_constants
from .qdq import small_list as _small
from .qmath import channel_range, compute_qparams, storage_dtype
from .scheme import ABSORBED_ACTIVATIONS, QuantScheme, TensorScheme, named_scheme

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Inputs that carry data (the rest are shapes, scales, ROIs, clip bounds...).
_DATA_INPUTS = {"Resize": (0,), "Clip": (0,), "Pad": (0,), "Slice": (0,), "Gather": (0,), "Reshape": (0,),
                "Expand": (0,), "Tile": (0,), "Split": (0,), "Squeeze": (0,), "Unsqueeze": (0,)}


ELEMENTWISE_OPS = ("Add", "Mul")
# Ops whose inputs or outputs mark float arithmetic (statistics, normalisation, GELU/softmax
# pieces) where 8-bit rounding of an Add/Mul is catastrophic (E[x²] − E[x]² cancels) and buys
# no integer kernel anyway.
_FLOAT_MATH_OPS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceSumSquare", "Sqrt", "Reciprocal", "Sub", "Pow",
                   "Div", "Tanh", "Exp", "Erf", "Log", "Softmax", "Max", "Min", "Expand"}


# onnxruntime's QDQPropagationTransformer (on from the basic optimization level) copies a DQ
# forward through these ops, and aborts the whole process (a C++ assertion, onnxruntime 1.32)
# when a tensor it walks to is also read inside an If/Loop/Scan body (an implicit input).
_ORT_DQ_PROPAGATING = {"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Expand"}


def _subgraph_reads(graph: gs.Graph) -> set[str]:
    """Names of the tensors that nodes inside subgraphs (at any depth) read."""
    names: set[str] = set()
    for node in graph.nodes:
        for value in node.attrs.values():
            for sub in value if isinstance(value, list) else [value]:
                if isinstance(sub, gs.Graph):
                    names.update(t.name for inner in sub.nodes for t in inner.inputs)
                    names |= _subgraph_reads(sub)
    return names


def _dq_reaches_subgraph(readers: list[gs.Node], reads: set[str]) -> bool:
    """True when onnxruntime would propagate a DQ read by ``readers`` into a subgraph read."""
    stack, seen = [c for c in readers if c.op in _ORT_DQ_PROPAGATING], set()
    while stack:
        node = stack.pop()
        if id(node) in seen or not node.outputs:
            continue
        seen.add(id(node))
        if node.outputs[0].name in reads:
            return True
        stack.extend(c for c in node.outputs[0].outputs if c.op in _ORT_DQ_PROPAGATING)
    return False


def _pads_without_axes(model: Model) -> int:
    """Give every Pad with a constant ``axes`` input (opset ≥ 18) full-rank ``pads`` instead:
    the same padding, but onnxruntime's transpose optimizer, which runs on the QDQ form,
    gathers ``pads`` as if it had 2·rank values and fails at run time ("indices element out of
    data bounds", onnxruntime 1.32). Returns how many Pads were rewritten."""
    infos = None
    rewritten = 0
    for node in model.nodes("Pad"):
        if len(node.inputs) < 4 or not node.inputs[3].name:
            continue
        pads, axes = node.inputs[1], node.inputs[3]
        if not isinstance(pads, gs.Constant) or not isinstance(axes, gs.Constant):
            continue
        infos = infos if infos is not None else infer_tensor_infos(model)
        info = infos.get(node.inputs[0].name)
        rank = len(info.shape) if info is not None and info.shape is not None else None
        if rank is None:
            continue
        axes_list = [int(a) % rank for a in np.asarray(axes.values).ravel()]
        values = np.asarray(pads.values).ravel()
        full = np.zeros(2 * rank, np.int64)
        for i, a in enumerate(axes_list):
            full[a], full[a + rank] = values[i], values[i + len(axes_list)]
        node.inputs[1] = add_initializer(model, f"{pads.name}_full", full)
        del node.inputs[3]
        if len(node.inputs) == 3 and not node.inputs[2].name:  # a trailing empty constant_value
            del node.inputs[2]
        rewritten += 1
    return rewritten


def _read_dilated_pools_in_float(model: Model) -> int:
    """An AveragePool with dilations (opset ≥ 19) reads the float tensor before its input's
    Q/DQ pair: onnxruntime fuses DQ → AveragePool → Q into QLinearAveragePool, which has no
    ``dilations`` attribute, and then refuses the whole model ("Unrecognized attribute:
    dilations", onnxruntime 1.32), even all ones, which are dropped instead. Returns how many
    pools were rewired."""
    rewired = 0
    for node in model.nodes("AveragePool"):
        if "dilations" not in node.attrs:
            continue
        if all(int(d) == 1 for d in node.attrs["dilations"]):  # the default, spelled out: drop it
            del node.attrs["dilations"]
            continue
        dq = producer(node.inputs[0])
        q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        if q is not None and q.op == "QuantizeLinear":
            node.inputs[0] = q.inputs[0]  # graphsurgeon keeps the use lists in step
            rewired += 1
    return rewired


def _in_float_math(node: gs.Node) -> bool:
    """True when an Add/Mul reads from or feeds float arithmetic (see _FLOAT_MATH_OPS)."""
    neighbours = [c for t in node.outputs for c in t.outputs]
    neighbours += [producer(t) for t in node.inputs if producer(t) is not None]
    return any(n.op in _FLOAT_MATH_OPS for n in neighbours)


@register_pass("insert-qdq")
class InsertQDQ(Pass):
    """Insert Q/DQ pairs on the inputs, weights and outputs of quantizable ops.

    The scheme comes from, in order of precedence: the explicit options below, the named
    ``scheme`` (``u8s8``, ``s8s8``, ``int8-symmetric``, ``a16w8``, ``w4a8``), the pass context's
    ``scheme``, its target's scheme (``presso opt --target``), and the default (``u8s8``). Options: ``weights``/``activations`` integer types
    (int8, uint8, int16, uint16, int4, uint4), ``symmetric`` (weights), ``activations_symmetric``,
    ``per_channel`` (weights), ``ops`` (op types to quantize), ``exclude`` (node or tensor names or
    regexes kept in float), ``concat_shared`` (one scale for a Concat's inputs and output),
    ``quantize_outputs`` (quantize the outputs of quantized ops, as onnxruntime's fusions need),
    ``reduce_range`` (7-bit weights: onnxruntime's u8·s8 kernels overflow without AVX-VNNI).
    Add/Mul that feed or read float arithmetic (normalisation statistics, GELU/softmax pieces:
    Reduce*, Sqrt, Sub, Div, Tanh, Exp…) stay float: rounding there is catastrophic and buys
    no integer kernel.

    Rules: a tensor with several consumers gets one shared pair; weights are quantized from
    their values (per channel along Conv axis 0, ConvTranspose axis 1, Gemm/MatMul output
    axis); a Conv/ConvTranspose/Gemm bias is marked for int32 with scale = input_scale ×
    weight_scale (``calibrate`` writes it once the input scale is known); pass-through ops
    (MaxPool, Reshape, Transpose, Flatten…) keep their input's scale; a Relu/Clip right after a
    quantized op is absorbed by the following Q. Activation scales are placeholders until
    ``calibrate`` runs. With ``prepare=true`` (default) the model is first made quantizable:
    Constant weights become initializers, constants fold, BatchNorm folds into convs, and the
    opset is upgraded to what the scheme needs (13 for per-channel, 21 for 4/16-bit); a context
    target with a ``prepare`` pipeline (``qnn-htp``: static shapes, fused LayerNorm/GELU/softmax…)
    runs that pipeline instead of the cleanup passes, and a target's variant of a named
    ``scheme`` (qnn-htp's ``a16w8``) replaces the generic one. Records a
    QuantSpec annotation per quantized tensor. Not semantics-preserving (fake quantization).
    """

    scheme: str | None = None
    weights: str | None = None
    activations: str | None = None
    symmetric: bool | None = None
    activations_symmetric: bool | None = None
    per_channel: bool | None = None
    ops: list[str] | None = None
    exclude: list[str] | None = None
    concat_shared: bool | None = None
    reduce_range: bool | None = None
    quantize_outputs: bool = True
    prepare: bool = True

    def resolve_scheme(self, ctx: PassContext | None = None) -> QuantScheme:
        variant = getattr(getattr(ctx, "target", None), "variant", None)
        if self.scheme and variant is not None and variant(self.scheme) is not None:
            base = variant(self.scheme)  # the target's own version of the named scheme
        elif self.scheme:
            base = named_scheme(self.scheme)
        elif ctx is not None and isinstance(ctx.scheme, QuantScheme):
            base = ctx.scheme
        elif ctx is not None and isinstance(getattr(ctx.target, "scheme", None), QuantScheme):
            base = ctx.target.scheme
        else:
            base = QuantScheme()
        w, a = base.weights, base.activations
        w = TensorScheme(self.weights or w.dtype, w.symmetric if self.symmetric is None else self.symmetric,
                         w.per_channel if self.per_channel is None else self.per_channel, w.axis,
                         w.reduce_range if self.reduce_range is None else self.reduce_range)
        a = TensorScheme(self.activations or a.dtype,
                         a.symmetric if self.activations_symmetric is None else self.activations_symmetric,
                         False, None)
        changes = {"weights": w, "activations": a}
        if self.ops is not None:
            changes["ops"] = tuple(self.ops)
        if self.exclude:
            for pattern in self.exclude:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise PassError(f"exclude pattern '{pattern}' is not a valid regular expression: {exc}") from None
            changes["exclude"] = tuple(base.exclude) + tuple(self.exclude)
        if self.concat_shared is not None:
            changes["concat_shared"] = self.concat_shared
        return replace(base, **changes)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        scheme = self.resolve_scheme(ctx)
        if model.nodes("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            raise PassError("the model already holds quantization nodes",
                            hint="insert-qdq works on a float model; run it on the original model")
        prepared = _prepare(model, ctx, scheme) if self.prepare else {}
        if model.opset < scheme.min_opset:
            raise PassError(f"the scheme needs opset ≥ {scheme.min_opset} but the model has opset {model.opset}",
                            hint="keep prepare=true (it upgrades the opset) or run upgrade-opset first")
        if _pads_without_axes(model):
            model.invalidate()
        plan = _Plan(model, scheme, self.quantize_outputs)
        plan.build()
        inserted = plan.insert()
        if _read_dilated_pools_in_float(model):
            model.graph.cleanup(remove_unused_graph_inputs=False)
        stats = {"activations": inserted["act"], "weights": inserted["weight"], "constants": inserted["const"],
                 "biases": inserted["bias"], "opset": model.opset, **prepared}
        in_bodies = quantizable_in_bodies(model, scheme)
        if in_bodies:
            # Calibration observes tensors through onnxruntime, which cannot return values
            # computed inside a body; such nodes stay float rather than get guessed ranges.
            stats["left_float_in_bodies"] = in_bodies
        return PassResult(changed=True, stats=stats)


def quantizable_in_bodies(model: Model, scheme: QuantScheme) -> int:
    """How many nodes of the quantized op types sit inside If/Loop/Scan bodies (left float)."""
    return sum(1 for body in bodies(model.graph) for node in body.graph.nodes if node.op in scheme.ops)


def _prepare(model: Model, ctx: PassContext, scheme: QuantScheme) -> dict[str, int]:
    """Make the model quantizable with the cleanup passes (all semantics-preserving); a target
    with its own ``prepare`` pipeline (the QNN HTP's rewrites) runs that one first."""
    steps = [ConstantsToInitializers(), FoldConstants(), FoldBatchNorm(), FoldAffine(), RemoveIdentity(),
             UpgradeOpset(version=max(scheme.min_opset, model.opset))]
    target_prepare = getattr(ctx.target, "prepare", "") if ctx is not None else ""
    if target_prepare:
        from ..pipeline import parse_pipeline

        steps = parse_pipeline(target_prepare) + steps[-1:]
    done = {}
    for step in steps:
        result = step.run(model, ctx)
        if result.changed:
            model.invalidate()
            model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            done[f"prepared_{step.name}"] = 1
    return done


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


class _Plan:
    """Decides which tensors get Q/DQ (and with which role), then inserts the pairs."""

    def __init__(self, model: Model, scheme: QuantScheme, quantize_outputs: bool):
        self.model = model
        self.scheme = scheme
        self.quantize_outputs = quantize_outputs
        self.infos = infer_tensor_infos(model)
        self.tensors: dict[str, gs.Tensor] = {}
        self.role: dict[str, str] = {}  # act | weight | const
        self.axis: dict[str, int | None] = {}
        self.consumers: dict[str, list[gs.Node]] = {}  # quantized consumers
        self.all_consumers: set[str] = set()  # every consumer (and the graph output) reads the DQ
        self.groups = _UnionFind()
        self.biases: list[tuple[gs.Node, gs.Constant]] = []
        self.propagated: list[gs.Node] = []
        self.subgraph_reads = _subgraph_reads(model.graph)

    # ---- deciding -------------------------------------------------------------------------
    def _is_float(self, tensor: gs.Tensor) -> bool:
        if not tensor.name:
            return False
        dtype = tensor.dtype if tensor.dtype is not None else getattr(self.infos.get(tensor.name), "dtype", None)
        try:
            return dtype is not None and np.dtype(dtype) in FLOAT_DTYPES
        except TypeError:
            return False

    def _node_quantized(self, node: gs.Node) -> bool:
        return (not node.domain and node.op in self.scheme.ops
                and not self.scheme.excludes(node.name, *(t.name for t in node.outputs))
                and not (node.op in ELEMENTWISE_OPS and self.scheme.float_math_guard and _in_float_math(node)))

    def _mark(self, tensor: gs.Tensor, role: str, consumer: gs.Node | None, axis: int | None = None) -> bool:
        if not self._is_float(tensor) or self.scheme.excludes(tensor.name):
            return False
        name = tensor.name
        if name in self.role and self.role[name] != role:
            role = "weight" if "weight" in (role, self.role[name]) else role
        if name in self.axis and self.axis[name] != axis:
            axis = None  # consumers disagree on the channel axis: per-tensor
        self.tensors[name] = tensor
        self.role[name] = role
        self.axis[name] = axis
        self.consumers.setdefault(name, [])
        self.groups.find(name)
        if consumer is not None and all(c is not consumer for c in self.consumers[name]):
            self.consumers[name].append(consumer)
        return True

    def _weight_axis(self, node: gs.Node, index: int, weight: gs.Constant) -> int | None:
        if not self.scheme.weights.per_channel or weight.values.ndim < 2:
            return None
        if self.scheme.weights.axis is not None:
            return self.scheme.weights.axis
        if node.op == "Conv":
            return 0
        if node.op == "ConvTranspose":
            return 1
        if node.op == "Gemm":
            return 0 if node.attrs.get("transB", 0) else 1
        if node.op == "MatMul" and index == 1:
            return weight.values.ndim - 1
        return None

    def _absorbed(self, node: gs.Node, quantized: set[int]) -> bool:
        """A Relu/Clip whose producer is quantized and feeds only it: the Q after it suffices."""
        if node.op not in ABSORBED_ACTIVATIONS or not node.inputs or not self.scheme.absorb_activations:
            return False
        if node.op == "Clip" and not all(isinstance(t, gs.Constant) or not t.name for t in node.inputs[1:]):
            return False
        x = node.inputs[0]
        p = producer(x)
        return (p is not None and id(p) in quantized and p.op not in ABSORBED_ACTIVATIONS
                and p.op not in self.scheme.pass_through and len(x.outputs) == 1
                and not is_graph_output(self.model, x))

    def build(self) -> None:
        nodes = list(self.model.graph.nodes)
        compute = [n for n in nodes if self._node_quantized(n) and n.op not in self.scheme.pass_through]
        quantized = {id(n) for n in compute}
        absorbed = {id(n) for n in compute if self._absorbed(n, quantized)}
        for node in compute:
            for index in _DATA_INPUTS.get(node.op, range(len(node.inputs))):
                if index >= len(node.inputs) or (index == 0 and id(node) in absorbed):
                    continue
                t = node.inputs[index]
                if node.op in ("Conv", "ConvTranspose", "Gemm") and index == 2:
                    unit = float(node.attrs.get("alpha", 1.0)) == 1.0 and float(node.attrs.get("beta", 1.0)) == 1.0
                    if isinstance(t, gs.Constant) and t.values.ndim == 1 and self._is_float(t) and unit:
                        self.biases.append((node, t))
                    continue
                if isinstance(t, gs.Constant):
                    if node.op in WEIGHT_OPS:
                        self._mark(t, "weight", node, self._weight_axis(node, index, t))
                    else:
                        self._mark(t, "const", node)
                else:
                    self._mark(t, "act", node)
            if self.quantize_outputs:
                for out in node.outputs:
                    if out.outputs and all(id(c) in absorbed for c in out.outputs) and not is_graph_output(self.model, out):
                        continue
                    if self._mark(out, "act", None):
                        self.all_consumers.add(out.name)
            if node.op == "Concat" and self.scheme.concat_shared:
                members = [t.name for t in [*node.inputs, *node.outputs] if t.name in self.role and self.role[t.name] == "act"]
                for other in members[1:]:
                    self.groups.union(members[0], other)
        self._propagate(nodes)
        # a bias becomes int32 only when both the input and the weight are quantized
        self.biases = [(n, b) for n, b in self.biases
                       if self.role.get(n.inputs[0].name) == "act" and self.role.get(n.inputs[1].name) == "weight"
                       and any(c is n for c in self.consumers.get(n.inputs[0].name, []))]

    def _propagate(self, nodes: list[gs.Node]) -> None:
        """Pass-through ops whose input is quantized keep its scale on their outputs."""
        for node in nodes:
            if (node.op not in self.scheme.pass_through or node.domain or not node.inputs
                    or self.scheme.excludes(node.name, *(t.name for t in node.outputs))):
                continue
            x = node.inputs[0]
            if self.role.get(x.name) != "act":
                continue
            outs = [o for o in node.outputs if self._is_float(o)]
            if not outs:
                continue
            self._mark(x, "act", node)
            for out in outs:
                self._mark(out, "act", None)
                self.all_consumers.add(out.name)
                self.groups.union(x.name, out.name)
            self.propagated.append(node)
        # drop propagation that feeds nothing quantized (walk back so chains unwind)
        for node in reversed(self.propagated):
            x = node.inputs[0]
            useless = all(not self._feeds_quantized(o) for o in node.outputs if o.name in self.role)
            if useless and not self._ort_would_requantize(node):
                for o in node.outputs:
                    self.role.pop(o.name, None)
                    self.all_consumers.discard(o.name)
                self.consumers[x.name] = [c for c in self.consumers.get(x.name, []) if c is not node]

    def _ort_would_requantize(self, node: gs.Node) -> bool:
        """onnxruntime (extended optimizations and up) copies a DQ forward through ``node`` and
        puts a Q after it; at opset ≥ 21 with signed zero points that Q fails its own type check
        ("output_dtype INT8 does not match y_zero_point type UINT8", onnxruntime 1.32), so the
        model does not load. Keeping the pair after ``node`` (exact: these ops only move grid
        values) leaves it nothing to copy."""
        return (node.op in _ORT_DQ_PROPAGATING and self.model.opset >= 21
                and self.scheme.activations.dtype.startswith("int")
                and not any(o.name in self.subgraph_reads for o in node.outputs))

    def _feeds_quantized(self, tensor: gs.Tensor) -> bool:
        return bool(self.consumers.get(tensor.name)) and tensor.name in self.role

    # ---- inserting ------------------------------------------------------------------------
    def insert(self) -> dict[str, int]:
        model, scheme = self.model, self.scheme
        counts = {"act": 0, "weight": 0, "const": 0, "bias": 0}
        group_params: dict[str, tuple[gs.Constant, gs.Constant]] = {}
        specs: list[tuple[gs.Tensor, QuantSpec]] = []
        subgraph_reads = _subgraph_reads(model.graph)
        for name, tensor in self.tensors.items():
            if name not in self.role:
                continue
            role = self.role[name]
            readers = None if name in self.all_consumers else list(self.consumers[name])
            if readers is not None and not readers:
                continue
            if subgraph_reads and _dq_reaches_subgraph(list(tensor.outputs) if readers is None else readers,
                                                       subgraph_reads):
                continue  # a model onnxruntime would crash on (see _ORT_DQ_PROPAGATING)
            if role == "act":
                ts = scheme.activations
                root = self.groups.find(name)
                if root not in group_params:
                    scale = np.array(1.0, dtype=np.dtype(self.tensors[root].dtype or np.float32)
                                     if self.tensors.get(root) is not None and self._is_float(self.tensors[root]) else np.float32)
                    zero = np.array(0, dtype=storage_dtype(ts.dtype))
                    group_params[root] = make_qparam_constants(model, root, scale, zero)
                s, z = group_params[root]
                insert_qdq_pair(model, tensor, s, z, None, consumers=readers)
                specs.append((tensor, QuantSpec(ts.dtype, ts.symmetric, None)))
            else:
                ts = scheme.weights if role == "weight" else scheme.activations
                axis = self.axis[name] if role == "weight" else None
                values = np.asarray(tensor.values)
                lo, hi = channel_range(values, axis)
                narrow = ts.reduce_range and role == "weight"
                scale, zero = compute_qparams(lo, hi, ts.dtype, ts.symmetric, scale_dtype=values.dtype,
                                              reduce_range=narrow)
                s, z = make_qparam_constants(model, name, scale, zero)
                insert_qdq_pair(model, tensor, s, z, axis, consumers=readers)
                specs.append((tensor, QuantSpec(ts.dtype, ts.symmetric, axis, scale=_small(scale), zero_point=_small(zero), method="minmax",
                                                reduce_range=narrow)))
            counts[role] += 1
        for tensor, spec in specs:  # names are final only now (graph outputs may be renamed)
            model.annotations.quant[tensor.name] = spec
        for node, bias in self.biases:
            model.annotations.quant[bias.name] = QuantSpec(scheme.bias_dtype, True, 0 if scheme.weights.per_channel else None)
            counts["bias"] += 1
        return counts

"""Structural checks of an ``onnx.ModelProto`` on the way in, with errors that name the culprit.

``onnx.checker`` catches most broken graphs, but its messages stop at "however input 'b' of
node:" and it does not look at dims of graph inputs, at NaN weights or at unknown domains;
onnx-graphsurgeon imports some broken graphs without a word and fails later, far from the
cause. These checks run first and raise :class:`ModelLoadError` (or
:class:`UnsupportedOpError`) naming the node, tensor or initializer:

- versions: an IR version or ONNX opset newer than the installed onnx package knows;
- names: a tensor defined twice (two producers, an initializer that a node also writes, a
  graph input or initializer declared twice), a node input or graph output nobody defines;
- order: a cycle (naming the nodes on it), or nodes out of topological order;
- dims: negative dimensions (other than the -1 some exporters write for "dynamic" in graph
  inputs, outputs and value_info), or more elements than any device holds, in those and in
  initializers; graph inputs without an element type; initializer data shorter or longer
  than its shape needs;
- weights: NaN anywhere in a float initializer or Constant, ±Inf in one that a weight slot
  reads (Conv, Gemm, MatMul, normalization, recurrent, Gather tables). A lone ±Inf elsewhere
  is a legitimate sentinel (``Max(-inf, x)``, attention masks) and passes;
- ops: an op that its ONNX opset does not define, or a domain without an opset import. Ops of
  a declared custom domain load (inspection and shape analysis work on them); running them is
  the engine's business, and its error names the node.

Subgraphs of If/Loop/Scan are checked too; names of the enclosing graphs are visible in them.
Needs: the proto with its external data already loaded (for the weight scan). Changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto

from .errors import ModelLoadError, UnsupportedOpError
from .external import chunks

# More elements than this in one tensor (2**36 float32 = 256 GiB) is a corrupt dim, not a model.
ABSURD_ELEMENTS = 2**36

# Ops whose tensor inputs are weights: ±Inf there is corruption, not a sentinel.
_WEIGHT_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "Gemm", "MatMul", "Einsum", "BatchNormalization",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization", "PRelu",
    "LSTM", "GRU", "RNN", "Gather", "DeformConv",
})



@functools.lru_cache(maxsize=1)
def _onnx_domains() -> frozenset[str]:
    """Domains whose ops onnx itself defines ("" is ai.onnx); other domains are custom."""
    return frozenset(schema.domain for schema in onnx.defs.get_all_schemas_with_history()) | {""}


def check_proto(proto: onnx.ModelProto, where: str, *, external: Mapping[str, np.ndarray] | None = None) -> None:
    """Run every check on ``proto``; ``where`` names the file (or "in-memory model").

    ``external`` holds the data of tensors stored as external data (by name, usually memory
    maps): their weights are scanned in chunks from there, without loading them all.
    """
    _check_versions(proto, where)
    _check_graph(proto.graph, outer=frozenset(), where=where, scope="")
    _check_ops(proto, where)
    _check_dims(proto, where)
    _check_finite_weights(proto, where, external or {})


# ---- versions ----------------------------------------------------------------------------------
def _check_versions(proto: onnx.ModelProto, where: str) -> None:
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(
            f"model has IR version {proto.ir_version}, newer than this onnx package knows ({onnx.IR_VERSION})",
            where=where,
            hint="upgrade the onnx package (pip install -U onnx) or export the model with an older IR version",
        )
    known = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > known:
            raise ModelLoadError(
                f"model uses ONNX opset {opset.version}, newer than this onnx package knows ({known})",
                where=where,
                hint="upgrade the onnx package or export the model with an older opset",
            )


# ---- names and order ---------------------------------------------------------------------------
def _describe(node: onnx.NodeProto, index: int) -> str:
    return f"node '{node.name or f'#{index}'}' ({node.op_type})"


def _at(scope: str, where: str) -> str:
    return f"{scope} in {where}" if scope else where


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    defined |= {o for n in graph.node for o in n.output if o}
    used = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    for node in graph.node:
        for _, sub in _subgraphs(node):
            used |= _free_names(sub)
    return used - defined


def _check_graph(graph: onnx.GraphProto, *, outer: frozenset[str], where: str, scope: str) -> None:
    at = _at(scope, where)
    defined: dict[str, str] = {}  # tensor name -> what defines it
    for value in graph.input:
        if value.name in defined:
            raise ModelLoadError(f"graph input '{value.name}' is declared twice", where=at,
                                 hint="tensor names must be unique; fix the exporter or rename one input")
        defined[value.name] = f"graph input '{value.name}'"
    seen_initializers: set[str] = set()
    for name in [t.name for t in graph.initializer] + [t.values.name for t in graph.sparse_initializer]:
        if name in seen_initializers:
            raise ModelLoadError(f"initializer '{name}' is stored twice", where=at,
                                 hint="tensor names must be unique; remove or rename the duplicate")
        seen_initializers.add(name)
        defined.setdefault(name, f"initializer '{name}'")  # an input may share its initializer's name (IR < 4)
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue  # an omitted optional output
            if name in producer:
                first = producer[name]
                raise ModelLoadError(
                    f"tensor '{name}' is produced twice: by {_describe(graph.node[first], first)} and by "
                    f"{_describe(node, index)}", where=at,
                    hint="every tensor must have one producer (SSA form); rename one of the outputs")
            if name in defined:
                raise ModelLoadError(
                    f"tensor '{name}' is both the {defined[name]} and an output of {_describe(node, index)}",
                    where=at, hint="every tensor must have one definition; rename the node's output")
            producer[name] = index
    visible = outer | set(defined) | set(producer)

    reads: list[list[str]] = []  # per node: the names it depends on, subgraph reads included
    for index, node in enumerate(graph.node):
        names = [n for n in node.input if n]
        for n in names:
            if n not in visible:
                raise ModelLoadError(
                    f"{_describe(node, index)} reads tensor '{n}', which no node, graph input or initializer defines",
                    where=at, hint="the graph is incomplete: re-export it, or add the missing input or initializer")
        for attr_name, sub in _subgraphs(node):
            sub_scope = f"subgraph '{attr_name}' of {_describe(node, index)}"
            _check_graph(sub, outer=frozenset(visible), where=where,
                         scope=f"{sub_scope} in {scope}" if scope else sub_scope)
            names.extend(sorted(_free_names(sub) & set(producer)))
        reads.append(names)
    for value in graph.output:
        if value.name not in visible:
            raise ModelLoadError(f"graph output '{value.name}' is not produced by any node, input or initializer",
                                 where=at, hint="the graph is incomplete: re-export it or drop that output")
    _check_order(graph, reads, producer, at)


def _check_order(graph: onnx.GraphProto, reads: list[list[str]], producer: dict[str, int], at: str) -> None:
    deps = [[producer[n] for n in names if n in producer] for names in reads]
    if all(d < i for i, ds in enumerate(deps) for d in ds):
        return  # already in topological order: the common case
    # Kahn's algorithm: whatever never becomes ready sits on (or behind) a cycle.
    pending = [len(set(ds)) for ds in deps]
    users: dict[int, set[int]] = {}
    for i, ds in enumerate(deps):
        for d in set(ds):
            users.setdefault(d, set()).add(i)
    ready = [i for i, count in enumerate(pending) if count == 0]
    done = set()
    while ready:
        i = ready.pop()
        done.add(i)
        for user in users.get(i, ()):
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    if len(done) == len(deps):
        late = next((i, d) for i, ds in enumerate(deps) for d in ds if d >= i)
        node, first = late
        read = next(n for n in reads[node] if producer.get(n) == first)
        raise ModelLoadError(
            f"nodes are not in topological order: {_describe(graph.node[node], node)} reads '{read}' before "
            f"{_describe(graph.node[first], first)} produces it", where=at,
            hint="sort the nodes (e.g. onnx_graphsurgeon's graph.toposort()) or re-export the model")
    # Walk back along dependencies inside the stuck set until a node repeats: that is a cycle.
    stuck = set(range(len(deps))) - done
    path: list[int] = []
    node = min(stuck)
    while node not in path:
        path.append(node)
        node = next(d for d in deps[node] if d in stuck)
    cycle = path[path.index(node):][::-1]
    names = " → ".join(f"'{graph.node[i].name or f'#{i}'}'" for i in [*cycle, cycle[0]])
    raise ModelLoadError(
        f"the graph has a cycle through {len(cycle)} node(s): {names}", where=at,
        hint="an ONNX graph must be acyclic (loops belong in a Loop node); fix the exporter")


# ---- ops and domains ---------------------------------------------------------------------------
def _all_nodes(graph: onnx.GraphProto, scope: str = "") -> Iterator[tuple[onnx.NodeProto, int, str]]:
    for index, node in enumerate(graph.node):
        yield node, index, scope
        for attr_name, sub in _subgraphs(node):
            yield from _all_nodes(sub, f"subgraph '{attr_name}' of {_describe(node, index)}")


def _check_ops(proto: onnx.ModelProto, where: str) -> None:
    domains = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    domains.setdefault("", 1)
    functions = {(f.domain, f.name) for f in proto.functions}
    for node, index, scope in _all_nodes(proto.graph):
        if (node.domain, node.op_type) in functions:
            continue  # a model-local function
        domain = "" if node.domain == "ai.onnx" else node.domain
        at = f"{_describe(node, index)} in {_at(scope, where)}"
        if domain not in domains:
            raise ModelLoadError(
                f"op '{node.op_type}' is in domain '{domain}', for which the model declares no opset import",
                where=at, hint=f"add an opset import for '{domain}' (or fix the exporter)")
        if domain in _onnx_domains():
            try:
                onnx.defs.get_schema(node.op_type, domains[domain], domain)
            except onnx.defs.SchemaError:
                raise UnsupportedOpError(
                    f"unknown operator '{node.op_type}' in domain '{domain or 'ai.onnx'}' at opset {domains[domain]}",
                    where=at, hint="the op does not exist in that opset: fix the exporter or the opset version",
                ) from None


# ---- dims ----------------------------------------------------------------------------------------
def _value_infos(graph: onnx.GraphProto, scope: str = "") -> Iterator[tuple[str, onnx.ValueInfoProto, str]]:
    for kind, values in (("graph input", graph.input), ("graph output", graph.output),
                         ("value_info", graph.value_info)):
        for value in values:
            yield kind, value, scope
    for node in graph.node:
        for attr_name, sub in _subgraphs(node):
            yield from _value_infos(sub, f"subgraph '{attr_name}' of node '{node.name}'")


def _check_dim_list(dims: list[int], what: str, where: str, *, dynamic: int | None = None) -> None:
    for axis, dim in enumerate(dims):
        if dim is not None and dim < 0 and dim != dynamic:
            raise ModelLoadError(f"{what} has negative dimension {dim} on axis {axis} (shape {dims})", where=where,
                                 hint="dimensions must be ≥ 0; a dynamic size needs a symbolic name (dim_param)")
    known = [d for d in dims if d is not None and d >= 0]
    if known and int(np.prod(np.array(known, dtype=object))) > ABSURD_ELEMENTS:
        raise ModelLoadError(f"{what} declares an absurd shape {dims} (more than 2**36 elements)", where=where,
                             hint="a dimension is corrupt; fix the exporter or set the shape explicitly")


def _check_dims(proto: onnx.ModelProto, where: str) -> None:
    for kind, value, scope in _value_infos(proto.graph):
        if not value.type.HasField("tensor_type"):
            continue
        if kind == "graph input" and value.type.tensor_type.elem_type == TensorProto.UNDEFINED:
            raise ModelLoadError(f"graph input '{value.name}' has no element type", where=_at(scope, where),
                                 hint="every input needs a dtype; fix the exporter or set it in the graph")
        if not value.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        # Some exporters (paddle2onnx, old tf2onnx) write -1 for a dynamic size; onnxruntime accepts it.
        _check_dim_list(dims, f"{kind} '{value.name}'", _at(scope, where), dynamic=-1)
    for tensor, scope, _, label in _stored_tensors(proto.graph):
        _check_dim_list(list(tensor.dims), label, _at(scope, where))
        _check_data_size(tensor, label, _at(scope, where))


# Types stored one element per fixed number of bytes in raw_data (sub-byte and string types aren't).
_FIXED_SIZE = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2,
               TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2,
               TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
               TensorProto.BOOL: 1, TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16}


def _check_data_size(tensor: TensorProto, label: str, where: str) -> None:
    size = _FIXED_SIZE.get(tensor.data_type)
    if size is None or not tensor.HasField("raw_data") or tensor.data_location == TensorProto.EXTERNAL:
        return
    needed = int(np.prod(tensor.dims, dtype=np.int64)) * size
    if len(tensor.raw_data) != needed:
        raise ModelLoadError(
            f"{label} holds {len(tensor.raw_data)} bytes of data, but its shape {list(tensor.dims)} of "
            f"{TensorProto.DataType.Name(tensor.data_type).lower()} needs {needed}", where=where,
            hint="the weights are truncated or the shape is wrong; re-export the model")


# ---- weights -------------------------------------------------------------------------------------
def _stored_tensors(graph: onnx.GraphProto, scope: str = "") -> Iterator[tuple[TensorProto, str, str, str]]:
    """Every stored tensor (initializers, Constant values): the tensor, its scope, the name its
    readers use, and a label for messages."""
    for tensor in graph.initializer:
        yield tensor, scope, tensor.name, f"initializer '{tensor.name}'"
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    yield attr.t, scope, node.output[0], f"Constant '{node.output[0]}'"
        for attr_name, sub in _subgraphs(node):
            yield from _stored_tensors(sub, f"subgraph '{attr_name}' of node '{node.name}'")


def _non_finite_counts(tensor: TensorProto, external: Mapping[str, np.ndarray]) -> tuple[int, int] | None:
    """(NaN count, ±Inf count) of a float tensor, or None for other dtypes."""
    dtype = tensor.data_type
    if tensor.data_location == TensorProto.EXTERNAL:
        values = external.get(tensor.name)
        if values is None or values.dtype.kind != "f":
            return None
        nan = inf = 0
        for piece in chunks(values):  # a chunk at a time: the weights stay on disk
            nan += int(np.count_nonzero(np.isnan(piece)))
            inf += int(np.count_nonzero(np.isinf(piece)))
        return nan, inf
    if dtype == TensorProto.BFLOAT16:
        if tensor.HasField("raw_data"):
            bits = np.frombuffer(tensor.raw_data, dtype="<u2")
        else:
            bits = np.asarray(tensor.int32_data, dtype=np.uint32).astype(np.uint16)
        special = (bits & 0x7F80) == 0x7F80
        nan = int(np.count_nonzero(special & ((bits & 0x007F) != 0)))
        return nan, int(np.count_nonzero(special)) - nan
    numpy_dtype = {TensorProto.FLOAT: "<f4", TensorProto.DOUBLE: "<f8", TensorProto.FLOAT16: "<f2"}.get(dtype)
    if numpy_dtype is None:
        return None
    if tensor.HasField("raw_data"):
        values = np.frombuffer(tensor.raw_data, dtype=numpy_dtype)  # no copy of large weights
    else:
        values = onnx.numpy_helper.to_array(tensor)
    nan = int(np.count_nonzero(np.isnan(values)))
    return nan, int(np.count_nonzero(np.isinf(values)))


def _check_finite_weights(proto: onnx.ModelProto, where: str, external: Mapping[str, np.ndarray]) -> None:
    readers: dict[str, list[str]] = {}
    weight_reads: set[str] = set()
    for node, index, _ in _all_nodes(proto.graph):
        for name in node.input:
            readers.setdefault(name, []).append(_describe(node, index))
            if node.op_type in _WEIGHT_OPS:
                weight_reads.add(name)
    for tensor, scope, name, label in _stored_tensors(proto.graph):
        counts = _non_finite_counts(tensor, external)
        if counts is None:
            continue
        nan, inf = counts
        if nan == 0 and (inf == 0 or name not in weight_reads):
            continue
        read_by = readers.get(name, [])
        place = label + (f", read by {read_by[0]}" if read_by else "")
        raise ModelLoadError(
            f"{label} holds {nan + inf} non-finite value(s) ({nan} NaN, {inf} Inf) "
            f"of {int(np.prod(tensor.dims, dtype=np.int64))}",
            where=f"{place} in {_at(scope, where)}",
            hint="the weights are corrupt (a diverged training run or a broken export); export again from a "
                 "finite checkpoint")

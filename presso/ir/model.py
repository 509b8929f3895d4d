"""`Model`: an onnx-graphsurgeon graph plus opsets, metadata and Presso's annotations."""

from __future__ import annotations

import copy as _copy
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from .annotations import METADATA_KEY, Annotations
from .errors import ModelLoadError
from .subgraphs import bodies, has_bodies, proto_graphs

T = TypeVar("T")

DEFAULT_DOMAIN = ""
ONNX_ML_DOMAIN = "ai.onnx.ml"


class Model:
    """A model in Presso's IR.

    The graph is an ``onnx_graphsurgeon.Graph``; edit it through the helpers in
    :mod:`presso.ir.edit` so that producer/consumer lists stay consistent. Analyses (shapes,
    costs, the networkx view) are computed on demand, cached here, and dropped by
    :meth:`invalidate`, which the pass manager calls whenever a pass reports a change.
    """

    def __init__(
        self,
        graph: gs.Graph,
        *,
        opset_imports: dict[str, int],
        ir_version: int | None = None,
        metadata: dict[str, str] | None = None,
        annotations: Annotations | None = None,
        producer: tuple[str, str] = ("", ""),
        source_path: str | None = None,
    ):
        self.graph = graph
        self.opset_imports = dict(opset_imports)
        self.ir_version = ir_version
        self.metadata = dict(metadata or {})
        self.annotations = annotations or Annotations()
        self.producer = producer
        self.source_path = source_path
        self._analyses: dict[str, Any] = {}
        self._version = 0
        self.reserved_names: set[str] = set()
        self._name_cache: set[str] | None = None  # set inside edit.batch_names blocks
        # Types graphsurgeon cannot export (optionals, maps, nested sequences), by value name:
        # written back into the exported proto so that such values keep their type.
        self.special_types: dict[str, onnx.TypeProto] = {}
        # Loaded from a file with external data: saved the same way, weights beside the file.
        self.external_data = False
        # Initializers that are also graph inputs (overridable defaults, IR ≥ 4): the graph sees
        # them as inputs, so no pass folds a value the caller may replace; exported as both.
        self.overridable: dict[str, onnx.TensorProto] = {}

    # ---- conversion -------------------------------------------------------------------
    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, *, source_path: str | None = None,
                   external: dict[str, np.ndarray] | None = None) -> Model:
        """Import ``proto``; ``external`` holds the data of its external-data tensors by name
        (read-only memory maps from :mod:`presso.ir.external`), which the graph uses in place."""
        metadata = {p.key: p.value for p in proto.metadata_props}
        annotations = Annotations()
        if METADATA_KEY in metadata:
            try:
                annotations = Annotations.from_json(metadata.pop(METADATA_KEY))
            except (ValueError, TypeError, KeyError) as exc:
                raise ModelLoadError(
                    f"the Presso annotations in metadata key '{METADATA_KEY}' are malformed: {exc}",
                    where=source_path,
                    hint="remove that metadata entry to load the model without annotations",
                ) from exc
        opsets = {o.domain: o.version for o in proto.opset_import}
        opsets = {("" if d == "ai.onnx" else d): v for d, v in opsets.items()}
        # below IR 4 every initializer had to be listed as an input too: those are plain weights
        overridable = _take_overridable_initializers(proto.graph, external or {}) if proto.ir_version >= 4 else {}
        try:
            graph = gs.import_onnx(proto)
        finally:
            proto.graph.initializer.extend(overridable.values())
        if external:
            _attach_external(graph, external)
        _restore_type_attributes(proto.graph, graph)
        _unknown_negative_dims(graph)
        _name_unnamed_nodes(graph)
        model = cls(
            graph,
            opset_imports=opsets,
            ir_version=proto.ir_version,
            metadata=metadata,
            annotations=annotations,
            producer=(proto.producer_name, proto.producer_version),
            source_path=source_path,
        )
        model.special_types = _special_types(proto.graph)
        model.external_data = bool(external)
        model.overridable = overridable
        return model

    def to_proto(self) -> onnx.ModelProto:
        """Export to an ``onnx.ModelProto`` with opsets, metadata and annotations."""
        return self._export(omit_data_over=None)[0]

    def to_proto_without_large_data(self, min_bytes: int = 2**20) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The proto with the data of constants of ``min_bytes`` or more left out, and those arrays.

        Each left-out initializer keeps its name, dtype and dims but its data becomes an
        external-data stub (location :data:`STUB_LOCATION`). Exporting and parsing hundreds of
        MB of weights costs seconds per copy; shape inference needs only dims, and onnxruntime
        takes the arrays directly (``create_session(..., initializers=arrays)``). Not a file to
        save or check with ``onnx.checker`` as is.
        """
        return self._export(omit_data_over=min_bytes)

    def _export(self, omit_data_over: int | None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        self.graph.opset = self.opset
        self.graph.import_domains = None
        _wrap_subbyte_constants(self.graph)
        omitted: dict[str, np.ndarray] = {}
        saved: list[tuple[gs.Constant, Any]] = []
        if omit_data_over is not None and not has_bodies(self.graph):
            for tensor in self.graph.tensors().values():
                array = _plain_array(tensor, omit_data_over)
                if array is not None:
                    saved.append((tensor, tensor._values))
                    omitted[tensor.name] = array
                    tensor._values = LazyValues(_stub_tensor(tensor.name, array))
        hidden = _hide_special_types(self.graph, self.special_types)
        try:
            proto = gs.export_onnx(self.graph, do_type_check=False)
        finally:
            for tensor, values in saved:
                tensor._values = values
            for tensor, dtype in hidden:
                tensor.dtype = dtype
        if self.special_types:
            _restore_special_types(proto.graph, self.special_types)
        inputs = {v.name for v in proto.graph.input}
        proto.graph.initializer.extend(t for name, t in self.overridable.items() if name in inputs)
        del proto.opset_import[:]
        for domain, version in sorted(self._used_opsets().items()):
            proto.opset_import.append(onnx.helper.make_opsetid(domain, version))
        if self.ir_version is not None:
            proto.ir_version = max(self.ir_version, _min_ir_version(self.opset))
        proto.producer_name, proto.producer_version = self.producer
        del proto.metadata_props[:]
        metadata = dict(self.metadata)
        if not self.annotations.is_empty():
            metadata[METADATA_KEY] = self.annotations.to_json()
        for key, value in metadata.items():
            proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        return proto, omitted

    def byte_size(self) -> int:
        """Bytes of the model as a single protobuf, counted without serializing its weights."""
        proto, weights = self.to_proto_without_large_data()
        # a stub's location fields stand in for the data's tag and length: a few bytes each
        return proto.ByteSize() + sum(int(a.nbytes) for a in weights.values())

    def copy(self) -> Model:
        """A deep, independent copy (graph, weights, annotations and metadata); read-only
        weights (memory-mapped external data) are shared, since nothing writes into them.

        Copies the graphsurgeon graph and the weight arrays directly: a round trip through a
        proto would serialize every weight several times (seconds for a VGG-sized model).
        """
        graph = self.graph.copy()
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant):
                # read-only arrays (weights mapped from external data) are shared, not copied:
                # passes replace arrays rather than write into them
                if isinstance(tensor._values, np.ndarray) and tensor._values.flags.writeable:
                    tensor._values = tensor._values.copy()
            elif tensor.shape is not None:
                tensor.shape = list(tensor.shape)  # graphsurgeon's copy shares the list
        clone = Model(
            graph,
            opset_imports=self.opset_imports,
            ir_version=self.ir_version,
            metadata=self.metadata,
            annotations=_copy.deepcopy(self.annotations),
            producer=self.producer,
            source_path=self.source_path,
        )
        clone.special_types = dict(self.special_types)
        clone.external_data = self.external_data
        clone.overridable = dict(self.overridable)
        return clone

    def save(self, path, **options: Any):
        """Validate and write the model atomically: :func:`presso.ir.io.save`."""
        from .io import save

        return save(self, path, **options)

    def _used_opsets(self) -> dict[str, int]:
        used = dict(self.opset_imports)
        for node in self.graph.nodes:
            if node.domain and node.domain not in used:
                used[node.domain] = 1
        return used

    # ---- basic queries ----------------------------------------------------------------
    @property
    def opset(self) -> int:
        """The version of the default ONNX domain."""
        return self.opset_imports.get(DEFAULT_DOMAIN, 1)

    @opset.setter
    def opset(self, version: int) -> None:
        self.opset_imports[DEFAULT_DOMAIN] = version

    @property
    def inputs(self) -> list[gs.Variable]:
        return self.graph.inputs

    @property
    def outputs(self) -> list[gs.Variable]:
        return self.graph.outputs

    def nodes(self, *op_types: str) -> list[gs.Node]:
        """Nodes in graph order, optionally only those of the given op types."""
        if not op_types:
            return list(self.graph.nodes)
        wanted = set(op_types)
        return [n for n in self.graph.nodes if n.op in wanted]

    def node(self, name: str) -> gs.Node:
        for n in self.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named '{name}'")

    def tensors(self) -> dict[str, gs.Tensor]:
        return self.graph.tensors()

    def tensor(self, name: str) -> gs.Tensor:
        try:
            return self.graph.tensors()[name]
        except KeyError:
            raise KeyError(f"no tensor named '{name}'") from None

    def initializers(self) -> dict[str, gs.Constant]:
        """Constant tensors that hold data (weights), by name."""
        return {
            name: t
            for name, t in self.graph.tensors().items()
            if isinstance(t, gs.Constant) and not _is_empty_optional(t)
        }

    def data_inputs(self) -> list[gs.Variable]:
        """The graph inputs that data feeds: all but the overridable defaults (initializers that
        are also inputs), which a feed may give but need not."""
        return [t for t in self.graph.inputs if t.name not in self.overridable]

    def input_names(self) -> list[str]:
        return [t.name for t in self.graph.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.graph.outputs]

    # ---- analyses ---------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Increases every time the graph is reported changed; keys caches that depend on it."""
        return self._version

    def analysis(self, key: str, compute: Callable[[], T]) -> T:
        """Return the cached analysis ``key``, computing it with ``compute()`` if absent."""
        if key not in self._analyses:
            self._analyses[key] = compute()
        return self._analyses[key]

    def invalidate(self) -> None:
        """Drop every cached analysis; call after changing the graph."""
        self._analyses.clear()
        self._version += 1

    def __repr__(self) -> str:
        return (
            f"Model({self.graph.name!r}, opset={self.opset}, nodes={len(self.graph.nodes)}, "
            f"inputs={self.input_names()}, outputs={self.output_names()})"
        )


# Where a stub made by `Model.to_proto_without_large_data` says its data is: nowhere on disk.
STUB_LOCATION = "presso:in-memory"
_PLAIN_DTYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                       np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)}


def _plain_array(tensor: gs.Tensor, min_bytes: int) -> np.ndarray | None:
    """The values of a large constant with a standard numpy dtype, else None."""
    if not isinstance(tensor, gs.Constant) or tensor.name == "":
        return None
    values = tensor._values
    if isinstance(values, LazyValues):
        if (type(values) is not LazyValues or values.nbytes < min_bytes
                or not isinstance(values.dtype, np.dtype) or values.dtype not in _PLAIN_DTYPES):
            return None
        values = tensor.values  # loads once; later exports reuse the array
    if not isinstance(values, np.ndarray) or values.nbytes < min_bytes or values.dtype not in _PLAIN_DTYPES:
        return None
    if tensor._export_dtype is not None and np.dtype(tensor._export_dtype) != values.dtype:
        return None
    return values


def _stub_tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
    stub.dims.extend(array.shape)
    stub.data_location = onnx.TensorProto.EXTERNAL
    stub.external_data.add(key="location", value=STUB_LOCATION)
    return stub


def _name_unnamed_nodes(graph: gs.Graph) -> None:
    """Give unnamed and duplicate-named nodes unique names (``<op>_<index>``).

    Many exporters leave node names empty; Presso addresses nodes by name (errors, the
    networkx view, pass logs), so every node gets one on load. Named nodes keep theirs.
    """
    seen: set[str] = set()
    renamed: set[int] = set()
    for node in graph.nodes:
        if node.name and node.name not in seen:
            seen.add(node.name)
        else:
            renamed.add(id(node))
    if not renamed:
        return
    taken = seen | {name for name in graph.tensors()}
    for index, node in enumerate(graph.nodes):
        if id(node) in renamed:
            base = f"{node.name or node.op}_{index}"
            name, suffix = base, 1
            while name in taken:
                name, suffix = f"{base}_{suffix}", suffix + 1
            node.name = name
            taken.add(name)


def _is_exportable_type(type_proto: onnx.TypeProto) -> bool:
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type", None):
        return True
    return kind == "sequence_type" and type_proto.sequence_type.elem_type.WhichOneof("value") == "tensor_type"


def _take_overridable_initializers(graph: onnx.GraphProto,
                                   external: dict[str, np.ndarray]) -> dict[str, onnx.TensorProto]:
    """Remove (and return copies of) the initializers that are also graph inputs, so that
    graphsurgeon imports those inputs as variables; the caller puts them back into ``graph``.
    External data of such a default is read in (they are small: old exports' weights)."""
    inputs = {v.name for v in graph.input}
    if not any(t.name in inputs for t in graph.initializer):
        return {}
    kept, taken = [], {}
    for tensor in graph.initializer:
        if tensor.name not in inputs:
            kept.append(tensor)
        elif tensor.name in external:
            taken[tensor.name] = onnx.numpy_helper.from_array(np.asarray(external[tensor.name]), tensor.name)
        else:
            taken[tensor.name] = onnx.TensorProto()
            taken[tensor.name].CopyFrom(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return taken


def _attach_external(graph: gs.Graph, external: dict[str, np.ndarray]) -> None:
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.name in external:
            tensor._values = external[tensor.name]
            tensor.data_location = None  # where the data goes is decided when saving


def _unknown_negative_dims(graph: gs.Graph) -> None:
    """Turn the -1 that some exporters write for a dynamic dim into an unknown dim.

    ONNX dims are non-negative; a stale -1 contradicts the shape that inference finds once the
    input shapes are fixed, and ``onnx.checker``'s full check rejects the model.
    """
    for g in [graph, *(b.graph for b in bodies(graph))]:
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor.shape is not None and any(
                    isinstance(d, int) and d < 0 for d in tensor.shape):
                tensor.shape = [None if isinstance(d, int) and d < 0 else d for d in tensor.shape]


def _restore_type_attributes(proto_graph: onnx.GraphProto, graph: gs.Graph) -> None:
    """Put back the type attributes (``Optional``'s ``type``) that graphsurgeon skips on import."""
    for proto_node, node in zip(proto_graph.node, graph.nodes, strict=True):
        for attr in proto_node.attribute:
            if attr.type == onnx.AttributeProto.TYPE_PROTO:
                node.attrs[attr.name] = attr.tp
            elif attr.type == onnx.AttributeProto.TYPE_PROTOS:
                node.attrs[attr.name] = list(attr.type_protos)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _restore_type_attributes(attr.g, node.attrs[attr.name])
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub_proto, sub in zip(attr.graphs, node.attrs[attr.name], strict=True):
                    _restore_type_attributes(sub_proto, sub)


def _special_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    found = {}
    for sub in proto_graphs(graph):
        for value in [*sub.input, *sub.output, *sub.value_info]:
            if not _is_exportable_type(value.type):
                found[value.name] = onnx.TypeProto()
                found[value.name].CopyFrom(value.type)
    return found


def _hide_special_types(graph: gs.Graph, special: dict[str, onnx.TypeProto]) -> list[tuple[gs.Variable, Any]]:
    """Clear the dtype of values with a special type, so graphsurgeon exports them untyped."""
    if not special:
        return []
    hidden = []
    for g in [graph, *(b.graph for b in bodies(graph))]:
        for tensor in [*g.inputs, *g.outputs, *(t for n in g.nodes for t in n.outputs)]:
            if isinstance(tensor, gs.Variable) and tensor.name in special and tensor.dtype is not None:
                hidden.append((tensor, tensor.dtype))
                tensor.dtype = None
    return hidden


def _restore_special_types(graph: onnx.GraphProto, special: dict[str, onnx.TypeProto]) -> None:
    for sub in proto_graphs(graph):
        for value in [*sub.input, *sub.output, *sub.value_info]:
            if value.name in special:
                value.type.CopyFrom(special[value.name])


def _wrap_subbyte_constants(graph: gs.Graph) -> None:
    """Hand 4-bit constants (int4/uint4 weights) to the exporter as packed TensorProtos.

    graphsurgeon imports them as one-byte-per-value numpy arrays and cannot export those
    (it writes unpacked raw bytes); ``onnx.numpy_helper.from_array`` packs them correctly.
    """
    from onnx_graphsurgeon.ir.tensor import LazyValues

    for tensor in graph.tensors().values():
        if (isinstance(tensor, gs.Constant) and not isinstance(tensor._values, LazyValues)
                and str(getattr(tensor._values, "dtype", "")) in ("int4", "uint4")):
            tensor._values = LazyValues(onnx.numpy_helper.from_array(tensor._values, tensor.name))


def _is_empty_optional(tensor: gs.Tensor) -> bool:
    return tensor.name == "" or (isinstance(tensor, gs.Constant) and tensor.values is None)


def _min_ir_version(opset: int) -> int:
    # onnx.helper.VERSION_TABLE rows: (release, ir_version, default opset, ml, ...)
    for row in onnx.helper.VERSION_TABLE:
        if row[2] >= opset:
            return row[1]
    return onnx.IR_VERSION


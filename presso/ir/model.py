"""`Model`: an onnx-graphsurgeon graph plus opsets, metadata and Presso's annotations."""

from __future__ import annotations

import copy as _copy
from collections.abc import Callable
from typing import Any, TypeVar

import onnx
import onnx_graphsurgeon as gs

from .annotations import METADATA_KEY, Annotations
from .errors import ModelLoadError

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

    # ---- conversion -------------------------------------------------------------------
    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, *, source_path: str | None = None) -> Model:
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
        graph = gs.import_onnx(proto)
        return cls(
            graph,
            opset_imports=opsets,
            ir_version=proto.ir_version,
            metadata=metadata,
            annotations=annotations,
            producer=(proto.producer_name, proto.producer_version),
            source_path=source_path,
        )

    def to_proto(self) -> onnx.ModelProto:
        """Export to an ``onnx.ModelProto`` with opsets, metadata and annotations."""
        self.graph.opset = self.opset
        self.graph.import_domains = None
        proto = gs.export_onnx(self.graph, do_type_check=False)
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
        return proto

    def copy(self) -> Model:
        """A deep, independent copy (graph, annotations and metadata)."""
        clone = Model.from_proto(self.to_proto(), source_path=self.source_path)
        clone.annotations = _copy.deepcopy(self.annotations)
        return clone

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


def _is_empty_optional(tensor: gs.Tensor) -> bool:
    return tensor.name == "" or (isinstance(tensor, gs.Constant) and tensor.values is None)


def _min_ir_version(opset: int) -> int:
    # onnx.helper.VERSION_TABLE rows: (release, ir_version, default opset, ml, ...)
    for row in onnx.helper.VERSION_TABLE:
        if row[2] >= opset:
            return row[1]
    return onnx.IR_VERSION


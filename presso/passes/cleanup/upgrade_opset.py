"""`upgrade-opset`: convert the model to a newer ONNX opset with onnx.version_converter."""

from __future__ import annotations

import onnx

from ...ir import Model
from ...ir.edit import remove_node
from ...ir.errors import PassError
from ...ir.subgraphs import bodies
from ..base import Pass, PassContext, PassResult
from ..registry import register_pass


@register_pass("upgrade-opset")
class UpgradeOpset(Pass):
    """Convert the default-domain opset to ``version`` (never downgrades).

    Quantization needs ≥ 13 (per-channel QuantizeLinear/DequantizeLinear take ``axis`` from
    13 on); int4/int16 Q/DQ need 21. Annotations and metadata are kept. Bodies of If/Loop/Scan
    are converted with their node. Refuses models below opset 9 that hold a Scan, which the
    converter gets wrong. Preserves semantics.
    """

    preserves_semantics = True
    version: int = 17

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        current = model.opset
        if current >= self.version:
            return PassResult(changed=False, stats={"opset": current})
        newest = onnx.defs.onnx_opset_version()
        if self.version > newest:
            raise PassError(f"cannot upgrade to opset {self.version}: this onnx package knows up to {newest}")
        if current < 9:
            scans = [n.name for g in [model.graph, *(b.graph for b in bodies(model.graph))]
                     for n in g.nodes if n.op == "Scan"]
            if scans:
                # Scan-8 carries a batch axis that Scan-9 dropped; the converter keeps the
                # old input layout under the new semantics (outputs change silently).
                raise PassError(
                    f"cannot upgrade opset {current} → {self.version}: onnx.version_converter does not "
                    "convert Scan-8 (batch axis) to Scan-9 correctly",
                    where=f"Scan node '{scans[0]}'",
                    hint="re-export the model at opset 9 or newer, or leave the opset as it is",
                )
        # Large weights travel as stubs and come back as the same arrays: the converter only
        # rewrites nodes, and a copy of every weight would double the memory of a big model.
        proto, weights = model.to_proto_without_large_data()
        shields = _shield_body_reads(proto.graph)
        try:
            converted = onnx.version_converter.convert_version(proto, self.version)
        except Exception as exc:
            raise PassError(
                f"onnx.version_converter cannot convert opset {current} → {self.version}: {exc}",
                hint="run fold-constants first, or choose a lower target version",
            ) from exc
        replacement = Model.from_proto(converted, source_path=model.source_path, external=weights)
        for node in replacement.nodes("Identity"):
            if node.name in shields:
                remove_node(replacement, node)
        model.graph = replacement.graph
        model.opset_imports = replacement.opset_imports
        model.ir_version = replacement.ir_version
        model.special_types = replacement.special_types
        model.overridable = replacement.overridable
        return PassResult(changed=True, stats={"opset_before": current, "opset": self.version})


def _shield_body_reads(graph: onnx.GraphProto) -> set[str]:
    """Let bodies read node outputs through an Identity (names of the Identities returned).

    The converter asserts when it rewrites a node whose output an If/Loop/Scan body reads
    (its use lists do not follow names into bodies); an Identity between them keeps the
    rewrite in the main graph. The Identities are removed again after the conversion.
    """
    produced = {name for node in graph.node for name in node.output if name}
    read = set()
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                read |= _free_reads(body)
    shielded = sorted(read & produced)
    if not shielded:
        return set()
    renamed = {name: f"{name}__presso_body_read" for name in shielded}
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _rename_reads(body, renamed)
    position = {name: i for i, node in enumerate(graph.node) for name in node.output}
    for name in sorted(shielded, key=lambda n: -position[n]):  # insert from the back: indices hold
        identity = onnx.helper.make_node("Identity", [name], [renamed[name]], name=renamed[name])
        graph.node.insert(position[name] + 1, identity)
    return set(renamed.values())


def _free_reads(body: onnx.GraphProto) -> set[str]:
    defined = {v.name for v in body.input} | {t.name for t in body.initializer}
    defined |= {o for node in body.node for o in node.output}
    read = {i for node in body.node for i in node.input if i} | {o.name for o in body.output}
    for node in body.node:
        for attr in node.attribute:
            for inner in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                read |= _free_reads(inner)
    return read - defined


def _rename_reads(body: onnx.GraphProto, renamed: dict[str, str]) -> None:
    local = {v.name for v in body.input} | {t.name for t in body.initializer}
    local |= {o for node in body.node for o in node.output}
    for node in body.node:
        for index, name in enumerate(node.input):
            if name in renamed and name not in local:
                node.input[index] = renamed[name]
        for attr in node.attribute:
            for inner in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _rename_reads(inner, renamed)
    for value in body.output:
        if value.name in renamed and value.name not in local:
            value.name = renamed[value.name]

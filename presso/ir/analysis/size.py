"""Where the bytes of a serialized ONNX model go (what ``presso inspect --size`` shows).

Works on the ``onnx.ModelProto`` as stored (no Presso model needed), so the numbers are the
file's, not a re-serialization's. Every byte of the protobuf is counted once, in one category;
the categories add up to the proto's size exactly (``other`` holds framing the others do not
claim: opset imports, producer, graph name). Read-only.

Categories:

- ``integer weights``: data of integer initializers (int8/uint8/int4…, not int32 biases, not
  scales or zero points) — the quantized weights;
- ``float weights``: data of float initializers that are not scales;
- ``int32 biases``: data of int32 initializers (quantized biases);
- ``scales`` / ``zero points``: data of the initializers that QuantizeLinear/DequantizeLinear
  and the QLinear* ops read as scales and zero points;
- ``int64 constants``: shapes, axes, indices;
- ``initializer headers``: dims and data type of every initializer (and protobuf framing);
- ``names``: every node and tensor name, everywhere it is written (node inputs and outputs,
  initializers, value_info, graph inputs/outputs);
- ``nodes``: op types, attributes, domains and framing of the nodes, without names;
- ``value_info``: shape/type records of intermediate tensors, without names;
- ``graph inputs/outputs``: their types, without names;
- ``doc strings``; ``metadata: <key>`` per metadata_props entry;
- ``other``: the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx

# (op type, input index) pairs that are scales or zero points.
_QPARAM_INPUTS: dict[str, dict[int, str]] = {
    "QuantizeLinear": {1: "scales", 2: "zero points"},
    "DequantizeLinear": {1: "scales", 2: "zero points"},
    "QLinearConv": {1: "scales", 2: "zero points", 4: "scales", 5: "zero points", 6: "scales", 7: "zero points"},
    "QLinearMatMul": {1: "scales", 2: "zero points", 4: "scales", 5: "zero points", 6: "scales", 7: "zero points"},
    "QLinearAdd": {1: "scales", 2: "zero points", 4: "scales", 5: "zero points", 6: "scales", 7: "zero points"},
    "QLinearMul": {1: "scales", 2: "zero points", 4: "scales", 5: "zero points", 6: "scales", 7: "zero points"},
    "ConvInteger": {2: "zero points", 3: "zero points"},
    "MatMulInteger": {2: "zero points", 3: "zero points"},
}
_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}

CATEGORIES = ("integer weights", "float weights", "int32 biases", "scales", "zero points", "int64 constants",
              "other constants", "initializer headers", "names", "nodes", "value_info", "graph inputs/outputs",
              "doc strings")


def _varint_len(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def _field_len(payload: int, tag: int = 1) -> int:
    """Bytes of a length-delimited field: tag, length varint, payload."""
    return _varint_len(tag << 3) + _varint_len(payload) + payload


def _string_len(text: str, tag: int = 1) -> int:
    return _field_len(len(text.encode()), tag) if text else 0


def _initializer_role(tensor: onnx.TensorProto, qparam: str | None) -> str:
    if qparam is not None:
        return qparam
    if tensor.data_type == onnx.TensorProto.INT32:
        return "int32 biases"
    if tensor.data_type in _INTEGER_TYPES:
        return "integer weights"
    if tensor.data_type in _FLOAT_TYPES:
        return "float weights"
    if tensor.data_type == onnx.TensorProto.INT64:
        return "int64 constants"
    return "other constants"


def _header_len(tensor: onnx.TensorProto) -> int:
    header = onnx.TensorProto(data_type=tensor.data_type, dims=tensor.dims)
    return header.ByteSize()


def size_breakdown(proto: onnx.ModelProto) -> dict[str, object]:
    """Bytes per category (see the module docstring) and a few counts, JSON-ready.

    Keys: ``total`` (the serialized size), ``categories`` (name → bytes, adding up to
    ``total``), ``duplicates`` (initializers whose dtype, dims and bytes equal an earlier one:
    count and bytes that one copy would save), ``qdq_nodes``, ``per_channel_params`` (scale
    values of per-axis parameters).
    """
    graph = proto.graph
    sizes: Counter[str] = Counter()
    qparam_of: dict[str, str] = {}
    for node in graph.node:
        for index, role in _QPARAM_INPUTS.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index]:
                qparam_of.setdefault(node.input[index], role)

    for node in graph.node:
        names = _string_len(node.name, 3) + sum(_string_len(n, 1) for n in node.input) \
            + sum(_string_len(n, 2) for n in node.output)
        docs = _string_len(node.doc_string, 6)
        whole = _field_len(node.ByteSize(), 1)
        sizes["names"] += names
        sizes["doc strings"] += docs
        sizes["nodes"] += whole - names - docs
    seen: dict[tuple, int] = {}
    duplicates = {"count": 0, "bytes": 0}
    per_channel = 0
    for tensor in graph.initializer:
        whole = _field_len(tensor.ByteSize(), 5)
        name = _string_len(tensor.name, 8)
        docs = _string_len(tensor.doc_string, 12)
        # the payload alone: raw bytes (or typed values); their field framing counts as header
        data = len(tensor.raw_data) if tensor.raw_data else tensor.ByteSize() - name - docs - _header_len(tensor)
        sizes["names"] += name
        sizes["doc strings"] += docs
        sizes["initializer headers"] += whole - name - docs - data
        role = _initializer_role(tensor, qparam_of.get(tensor.name))
        sizes[role] += data
        if role == "scales" and len(tensor.dims) == 1 and tensor.dims[0] > 1:
            per_channel += tensor.dims[0]
        key = (tensor.data_type, tuple(tensor.dims), tensor.raw_data or tensor.SerializeToString())
        if tensor.raw_data and key in seen:
            duplicates["count"] += 1
            duplicates["bytes"] += data
        seen.setdefault(key, 1)
    for field, tag, category in ((graph.value_info, 13, "value_info"), (graph.input, 11, "graph inputs/outputs"),
                                 (graph.output, 12, "graph inputs/outputs")):
        for info in field:
            name = _string_len(info.name, 1)
            docs = _string_len(info.doc_string, 3)
            sizes["names"] += name
            sizes["doc strings"] += docs
            sizes[category] += _field_len(info.ByteSize(), tag) - name - docs
    sizes["doc strings"] += _string_len(graph.doc_string, 10) + _string_len(proto.doc_string, 6)
    for entry in proto.metadata_props:
        sizes[f"metadata: {entry.key}"] += _field_len(entry.ByteSize(), 14)
    total = proto.ByteSize()
    claimed = sum(sizes.values())
    sizes["other"] = total - claimed  # includes the graph's own framing (a few bytes)
    categories = {key: sizes.get(key, 0) for key in CATEGORIES}
    categories.update({k: v for k, v in sorted(sizes.items()) if k not in categories})
    return {
        "total": total,
        "categories": categories,
        "duplicates": duplicates,
        "qdq_nodes": sum(1 for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")),
        "per_channel_params": per_channel,
    }


def render_size_breakdown(breakdown: dict[str, object], reference: int | None = None) -> Iterable[list[str]]:
    """Table rows ``[category, bytes, share]`` (share of ``reference`` if given, else of the total)."""
    total = int(breakdown["total"])
    base = reference or total
    for name, count in breakdown["categories"].items():
        if count:
            yield [name, f"{count:,}", f"{count / base:.1%}"]
    yield ["total", f"{total:,}", f"{total / base:.1%}"]

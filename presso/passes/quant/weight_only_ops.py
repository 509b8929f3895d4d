"""Weight-only 4-bit forms of Gemm and of embedding Gathers, for `quantize-weights`.

- ``Gemm(A, B, C)`` with a constant B (transA = 0) becomes onnxruntime's ``MatMulNBits`` on
  ``alpha · B`` (transposed to [K, N] when ``transB``), followed by ``Add(beta · C)``.
- ``Gather(table, ids)`` with a constant 2-D table read along axis 0 (an embedding) becomes
  ``com.microsoft.GatherBlockQuantized`` with int4 blocks of ``block`` values along each row,
  symmetric, with the rounding of onnxruntime's own quantizer (scale = the value of largest
  magnitude / −8), so the stored table takes 1/8 of its float32 bytes plus the scales.

Tables are quantized a slice of rows at a time, and mapped weights are released after use, so
the memory they need is bounded by the output, not by the float table.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model
from ...ir.edit import add_initializer, add_node, replace_all_uses
from ...ir.external import release

MS_DOMAIN = "com.microsoft"
_ROWS_PER_SLICE = 4096


def gemm_as_matmul_weight(node: gs.Node) -> np.ndarray | None:
    """The [K, N] float32 weight a Gemm multiplies by (alpha folded in), or None if it is not
    a Gemm that MatMulNBits can replace."""
    if node.op != "Gemm" or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    if node.attrs.get("transA", 0):
        return None
    weight = np.asarray(node.inputs[1].values)
    if weight.ndim != 2 or weight.dtype != np.float32:
        return None
    weight = weight.T if node.attrs.get("transB", 0) else weight
    alpha = float(node.attrs.get("alpha", 1.0))
    return weight * np.float32(alpha) if alpha != 1.0 else weight


def add_gemm_bias(model: Model, node: gs.Node, product: gs.Node) -> None:
    """Finish a Gemm replaced by ``product`` (a MatMulNBits): add ``beta · C`` and take over its output."""
    out = product.outputs[0]
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = node.inputs[2]
        beta = float(node.attrs.get("beta", 1.0))
        if beta != 1.0:
            if not isinstance(bias, gs.Constant):
                scale = add_initializer(model, f"{node.name}_beta", np.array(beta, np.float32))
                bias = add_node(model, "Mul", [bias, scale], name=f"{node.name}_beta_mul").outputs[0]
            else:
                bias = add_initializer(model, f"{bias.name}_beta", np.asarray(bias.values) * np.float32(beta))
        out = add_node(model, "Add", [out, bias], name=f"{node.name}_bias", dtype=node.outputs[0].dtype,
                       shape=node.outputs[0].shape).outputs[0]
    replace_all_uses(model, node.outputs[0], out)
    node.outputs.clear()


def quantize_gather(model: Model, node: gs.Node, block: int) -> tuple[int, int] | None:
    """Replace an embedding Gather by GatherBlockQuantized (int4, symmetric); returns
    (float bytes, stored bytes), or None when the node is not a constant 2-D float table
    gathered along axis 0."""
    table = node.inputs[0] if node.inputs else None
    if node.op != "Gather" or not isinstance(table, gs.Constant) or int(node.attrs.get("axis", 0)) != 0:
        return None
    values = np.asarray(table.values)
    if values.ndim != 2 or values.dtype != np.float32:
        return None
    rows, width = values.shape
    blocks = -(-width // block)
    quantized = np.empty((rows, width), dtype=ml_dtypes.int4)
    scales = np.empty((rows, blocks), dtype=np.float32)
    for start in range(0, rows, _ROWS_PER_SLICE):
        stop = min(start + _ROWS_PER_SLICE, rows)
        q, s = _symmetric_int4_blocks(np.asarray(values[start:stop]), block)
        quantized[start:stop] = q.astype(ml_dtypes.int4)
        scales[start:stop] = s
    release(values)
    inputs = [add_initializer(model, f"{table.name}_q4", quantized), node.inputs[1],
              add_initializer(model, f"{table.name}_scales", scales)]
    attrs = {"gather_axis": 0, "quantize_axis": 1, "block_size": block}
    new = add_node(model, "GatherBlockQuantized", inputs, name=f"{node.name}_q4", attrs=attrs, domain=MS_DOMAIN,
                   dtype=node.outputs[0].dtype, shape=node.outputs[0].shape)
    replace_all_uses(model, node.outputs[0], new.outputs[0])
    node.outputs.clear()
    return values.nbytes, rows * width // 2 + scales.nbytes


def _symmetric_int4_blocks(rows: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """int4 values (as int8) and per-block scales of ``rows`` [R, D], blocks along D.

    onnxruntime's MatMulNBits packing kernel quantizes a [K, N] matrix in blocks along K for
    each column: given the rows transposed ([D, R]) it makes exactly the blocks a row-wise
    GatherBlockQuantized needs, with its own rounding. It stores ``q + 8`` as unsigned nibbles.
    """
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    count, width = rows.shape
    blocks = -(-width // block)
    columns = np.zeros((blocks * block, count), dtype=np.float32)
    columns[:width] = rows.T
    packed = np.zeros((count, blocks, block // 2), dtype=np.uint8)
    scales = np.zeros((count, blocks), dtype=np.float32)
    zeros = np.zeros((count, (blocks * 4 + 7) // 8), dtype=np.uint8)
    quantize_matmul_4bits(packed, columns, scales, zeros, block, count, width, True)
    nibbles = np.empty((count, blocks * block), dtype=np.int8)
    nibbles[:, 0::2] = (packed & 0x0F).reshape(count, -1)
    nibbles[:, 1::2] = (packed >> 4).reshape(count, -1)
    return (nibbles - 8)[:, :width], scales

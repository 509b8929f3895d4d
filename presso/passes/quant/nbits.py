"""The block layout of onnxruntime's ``com.microsoft.MatMulNBits`` weights, in numpy.

A [K, N] weight is stored per output column n as ``ceil(K / block)`` blocks of ``block``
unsigned ``bits``-bit integers (4-bit: two per byte, low nibble first), one float scale per
block and, when asymmetric, one zero point per block (4-bit: packed two per byte); the value
is ``(q − zero) · scale``, with zero = 2^(bits−1) when no zero points are stored.

:func:`block_params` takes scales and zero points from onnxruntime's own quantizer
(``quantize_matmul_4bits``/``8bits``), so every algorithm rounds to the grid round-to-nearest
would use; :func:`pack` stores integers an algorithm chose (GPTQ) in exactly the bytes that
quantizer writes for the same integers. Pure functions: nothing here touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Blocks:
    """A quantized [K, N] weight in MatMulNBits form: what the node's inputs hold."""

    packed: np.ndarray  # uint8 [N, blocks, block * bits / 8]
    scales: np.ndarray  # float32 [N, blocks]
    zeros: np.ndarray  # uint8 [N, ceil(blocks * bits / 8)]; unused when symmetric


def quantize_blocks(values: np.ndarray, bits: int, block: int, symmetric: bool) -> Blocks:
    """Round-to-nearest with onnxruntime's kernel (the ``rtn`` algorithm)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    k, n = values.shape
    blocks = -(-k // block)
    padded = np.pad(values, ((0, blocks * block - k), (0, 0))) if blocks * block != k else values
    packed = np.zeros((n, blocks, block * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zeros = np.zeros((n, (blocks * bits + 7) // 8), dtype=np.uint8)
    kernel(packed, np.ascontiguousarray(padded, dtype=np.float32), scales, zeros, block, n, k, symmetric)
    return Blocks(packed, scales, zeros)


def block_params(values: np.ndarray, bits: int, block: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scales, zero points), both float [N, blocks], that onnxruntime's quantizer picks for ``values``."""
    quantized = quantize_blocks(values, bits, block, symmetric)
    blocks = quantized.scales.shape[1]
    if symmetric:
        zeros = np.full_like(quantized.scales, 2 ** (bits - 1))
    else:
        zeros = _unpack_ints(quantized.zeros, bits)[:, :blocks].astype(np.float32)
    return quantized.scales, zeros


def round_to_grid(values: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int) -> np.ndarray:
    """Integers q = clamp(round(values / scales) + zeros, 0, 2^bits − 1), elementwise (ties to even)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scales != 0, values / np.where(scales != 0, scales, 1), 0)
    return np.clip(np.rint(ratio) + zeros, 0, 2**bits - 1)


def pack(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, block: int, symmetric: bool) -> Blocks:
    """Store integers ``q`` ([K, N], in [0, 2^bits)) with per-block ``scales``/``zeros`` ([N, blocks])."""
    k, n = q.shape
    blocks = -(-k // block)
    ints = np.zeros((n, blocks * block), dtype=np.int64)  # past K: 0, as the kernel writes (never read)
    ints[:, :k] = q.T
    packed = _pack_ints(ints.reshape(n, blocks * block), bits).reshape(n, blocks, block * bits // 8)
    zero_bytes = np.zeros((n, (blocks * bits + 7) // 8), dtype=np.uint8)
    if not symmetric:
        # an unused last nibble holds the default zero point, as the kernel writes it
        zero_ints = np.full((n, zero_bytes.shape[1] * 8 // bits), 2 ** (bits - 1), dtype=np.int64)
        zero_ints[:, :blocks] = zeros
        zero_bytes = _pack_ints(zero_ints, bits)
    return Blocks(packed, np.ascontiguousarray(scales, dtype=np.float32), zero_bytes)


def dequantize(quantized: Blocks, k: int, bits: int, symmetric: bool) -> np.ndarray:
    """The float [K, N] weight MatMulNBits computes with."""
    n, blocks, _ = quantized.packed.shape
    q = _unpack_ints(quantized.packed.reshape(n, -1), bits).reshape(n, blocks, -1).astype(np.float32)
    if symmetric:
        zeros = np.full((n, blocks), 2 ** (bits - 1), dtype=np.float32)
    else:
        zeros = _unpack_ints(quantized.zeros, bits)[:, :blocks].astype(np.float32)
    values = (q - zeros[..., None]) * quantized.scales[..., None]
    return np.ascontiguousarray(values.reshape(n, -1)[:, :k].T)


def _pack_ints(ints: np.ndarray, bits: int) -> np.ndarray:
    ints = ints.astype(np.uint8)
    if bits == 8:
        return ints
    return (ints[..., 0::2] & 0x0F) | ((ints[..., 1::2] & 0x0F) << 4)


def _unpack_ints(data: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return data
    return np.stack([data & 0x0F, data >> 4], axis=-1).reshape(*data.shape[:-1], -1)

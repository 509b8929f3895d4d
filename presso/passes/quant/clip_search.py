"""Per-block weight clipping for block round-to-nearest, chosen on calibration inputs.

Round-to-nearest sets each block's scale from its largest |w|; one outlier weight then makes
the grid coarse for the other 31. Clipping the block to r · max|w| (r ∈ {1, 0.95, …, 0.5})
trades that outlier's error for a finer grid. As AWQ's ``auto_clip`` does, r is chosen per
block and output column by the output error it causes on the calibration inputs, measured
with their Gram matrix G = XᵀX: err(r) = Δᵀ G_block Δ, Δ = w − Q(clip_r(w)) on the block's K
rows (blocks are treated independently). Q is onnxruntime's own block quantizer, so the
error measured is the error the packed model has. Pure numpy; touches no model.
"""

from __future__ import annotations

import numpy as np

from . import nbits

RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))


def clip_weights(weight: np.ndarray, gram: np.ndarray, *, bits: int, block: int, symmetric: bool) -> np.ndarray:
    """``weight`` [K, N] with each (block, column) clipped to the ratio of least output error."""
    k, n = weight.shape
    blocks = -(-k // block)
    padded_k = blocks * block
    w = np.zeros((padded_k, n), dtype=np.float32)
    w[:k] = weight
    g = np.zeros((padded_k, padded_k))
    g[:k, :k] = gram
    # the diagonal [block, block] Gram blocks: [blocks, block, block]
    diag = np.stack([g[b * block:(b + 1) * block, b * block:(b + 1) * block] for b in range(blocks)])
    wb = w.reshape(blocks, block, n)
    high, low = wb.max(axis=1, keepdims=True), wb.min(axis=1, keepdims=True)  # [blocks, 1, N]
    best_err = np.full((blocks, n), np.inf)
    best = wb.copy()
    for ratio in RATIOS:
        # symmetric: clip to ±r·max|w|; asymmetric: shrink [min, max] toward 0 by r
        if symmetric:
            bound = ratio * np.maximum(np.abs(high), np.abs(low))
            clipped = np.clip(wb, -bound, bound)
        else:
            clipped = np.clip(wb, ratio * low, ratio * high)
        flat = np.ascontiguousarray(clipped.reshape(padded_k, n)[:k])
        rounded = nbits.dequantize(nbits.quantize_blocks(flat, bits, block, symmetric), k, bits, symmetric)
        delta = np.zeros((padded_k, n))
        delta[:k] = weight - rounded
        delta = delta.reshape(blocks, block, n)
        err = np.einsum("bkn,bkl,bln->bn", delta, diag, delta)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better[:, None, :], clipped, best)
    return np.ascontiguousarray(best.reshape(padded_k, n)[:k], dtype=np.float32)

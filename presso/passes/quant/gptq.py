"""GPTQ (Frantar et al. 2022): round a weight one input row at a time and push each rounding
error onto the rows not yet rounded, weighted by the inverse Hessian of the layer's inputs.

The layer computes y = x W with W [K, N]; its output error on calibration inputs X is
tr(ΔWᵀ H ΔW)/2 with H = 2 XᵀX / rows. Rows of W (input channels) are rounded in order (or by
decreasing diag H with ``act_order``); after rounding row i, the remaining rows j > i move by
−err_i · Hinv[i, j] / Hinv[i, i], where Hinv is the upper Cholesky factor of H⁻¹ (damped by
``damp`` · mean diag H). Updates are applied lazily in blocks of 128 rows, as in the paper.

Every row is rounded on the grid of its block (``block`` input channels share one scale and
zero point per output column): the grid comes from the *original* weights, as
round-to-nearest would pick it (``nbits.block_params``), so the packed result is exactly
MatMulNBits' format and the scales are the same as ``rtn``'s. Pure numpy; touches no model.
"""

from __future__ import annotations

import numpy as np

from ...ir.errors import PassError
from . import nbits
from .clip_search import clip_weights

LAZY_BLOCK = 128


def gptq_blocks(weight: np.ndarray, hessian: np.ndarray, *, bits: int, block: int, symmetric: bool,
                act_order: bool = False, damp: float = 0.01, clip: bool = False,
                where: str = "") -> tuple[nbits.Blocks, np.ndarray]:
    """(MatMulNBits blocks, dequantized float32 [K, N] weight) of ``weight`` [K, N] under GPTQ.

    ``clip``: each block's grid comes from the weights clipped as :mod:`.clip_search` finds
    best on the same Hessian (a finer grid where one outlier weight would set it), instead
    of from their largest value.
    """
    k, n = weight.shape
    grid_source = clip_weights(weight, hessian, bits=bits, block=block, symmetric=symmetric) if clip else weight
    scales, zeros = nbits.block_params(grid_source, bits, block, symmetric)  # [N, blocks]
    q = gptq_round(weight, hessian, scales, zeros, bits=bits, block=block, act_order=act_order, damp=damp, where=where)
    packed = nbits.pack(q, scales, zeros, bits, block, symmetric)
    group = np.arange(k) // block
    dequantized = ((q - zeros.T[group]) * scales.T[group]).astype(np.float32)
    return packed, dequantized


def gptq_round(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray, zeros: np.ndarray, *, bits: int,
               block: int, act_order: bool = False, damp: float = 0.01, where: str = "") -> np.ndarray:
    """Integers [K, N] (float64 holding whole numbers) chosen by GPTQ on the grid ``scales``/``zeros`` [N, K/block]."""
    k, n = weight.shape
    w = weight.astype(np.float64).T.copy()  # [N, K]: the paper's layout, columns = input channels
    h = np.array(hessian, dtype=np.float64, copy=True)
    dead = np.diag(h) == 0  # channels that are always 0: nothing to compensate, round them alone
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[:, order], h[np.ix_(order, order)]
    group = order // block  # each channel keeps the grid of its own block, whatever the order
    # columns of the transposed grids are contiguous: one row per input channel
    col_scales = np.ascontiguousarray(scales[:, group].T, dtype=np.float64)  # [K, N]
    col_zeros = np.ascontiguousarray(zeros[:, group].T, dtype=np.float64)
    col_inverse = np.divide(1.0, col_scales, out=np.zeros_like(col_scales), where=col_scales != 0)
    hinv = _inverse_cholesky(h, damp, where)
    q = np.zeros((k, n))
    top = 2**bits - 1
    for start in range(0, k, LAZY_BLOCK):
        stop = min(start + LAZY_BLOCK, k)
        w1 = np.ascontiguousarray(w[:, start:stop].T)  # [channels, N]: row i is channel start + i
        err1 = np.zeros_like(w1)
        hinv1 = hinv[start:stop, start:stop]
        for i in range(stop - start):
            c = start + i
            qi = np.clip(np.rint(w1[i] * col_inverse[c]) + col_zeros[c], 0, top)
            q[c] = qi
            err = (w1[i] - (qi - col_zeros[c]) * col_scales[c]) / hinv1[i, i]
            w1[i:] -= np.outer(hinv1[i, i:], err)
            err1[i] = err
        w[:, stop:] -= err1.T @ hinv[start:stop, stop:]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(k)
    return q[inverse]


def _inverse_cholesky(h: np.ndarray, damp: float, where: str) -> np.ndarray:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean diag H, raising λ tenfold while H is not
    positive definite (rank-deficient calibration data)."""
    k = len(h)
    mean_diag = float(np.mean(np.diag(h)))
    for attempt in range(6):
        damped = h + np.eye(k) * damp * (10**attempt) * mean_diag
        try:
            # with J the reversal and J H J = C Cᵀ: H⁻¹ = (J C⁻¹ J)ᵀ (J C⁻¹ J), and J C⁻¹ J is
            # upper triangular, so one Cholesky and one triangular inverse give the factor
            lower = np.linalg.cholesky(damped[::-1, ::-1])
            upper = np.linalg.inv(lower)[::-1, ::-1]
            if np.all(np.isfinite(upper)):
                return np.ascontiguousarray(upper)
        except np.linalg.LinAlgError:
            continue
    raise PassError("GPTQ: the Hessian of the layer's inputs stays singular after damping", where=where,
                    hint="give more (and more varied) calibration samples, or use algorithm=rtn")

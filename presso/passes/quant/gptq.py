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

LAZY_BLOCK = 128


def gptq_blocks(weight: np.ndarray, hessian: np.ndarray, *, bits: int, block: int, symmetric: bool,
                act_order: bool = False, damp: float = 0.01, where: str = "") -> tuple[nbits.Blocks, np.ndarray]:
    """(MatMulNBits blocks, dequantized float32 [K, N] weight) of ``weight`` [K, N] under GPTQ."""
    k, n = weight.shape
    scales, zeros = nbits.block_params(weight, bits, block, symmetric)  # [N, blocks]
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
    col_scales, col_zeros = scales[:, group].astype(np.float64), zeros[:, group].astype(np.float64)  # [N, K]
    hinv = _inverse_cholesky(h, damp, where)
    q = np.zeros_like(w)
    for start in range(0, k, LAZY_BLOCK):
        stop = min(start + LAZY_BLOCK, k)
        w1 = w[:, start:stop].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[start:stop, start:stop]
        for i in range(stop - start):
            column = w1[:, i]
            qi = nbits.round_to_grid(column, col_scales[:, start + i], col_zeros[:, start + i], bits)
            rounded = (qi - col_zeros[:, start + i]) * col_scales[:, start + i]
            q[:, start + i] = qi
            err = (column - rounded) / hinv1[i, i]
            w1[:, i:] -= np.outer(err, hinv1[i, i:])
            err1[:, i] = err
        w[:, stop:] -= err1 @ hinv[start:stop, stop:]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(k)
    return q[:, inverse].T


def _inverse_cholesky(h: np.ndarray, damp: float, where: str) -> np.ndarray:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean diag H, raising λ tenfold while H is not
    positive definite (rank-deficient calibration data)."""
    k = len(h)
    mean_diag = float(np.mean(np.diag(h)))
    for attempt in range(6):
        damped = h + np.eye(k) * damp * (10**attempt) * mean_diag
        try:
            lower = np.linalg.cholesky(damped)
            inverse = np.linalg.inv(lower)
            hinv = inverse.T @ inverse  # (L Lᵀ)⁻¹
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            continue
    raise PassError("GPTQ: the Hessian of the layer's inputs stays singular after damping", where=where,
                    hint="give more (and more varied) calibration samples, or use algorithm=rtn")

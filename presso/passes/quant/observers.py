"""Streaming statistics of one tensor (or a group sharing a scale) and the range methods.

A :class:`RangeObserver` keeps the running min/max and, when a method needs it, a fixed-size
histogram over ``[−R, R]`` that grows by doubling ``R`` (adjacent bins merge exactly, so no
sample is re-binned approximately). Memory is ``bins`` counters per observer, whatever the
number of samples. The range methods turn the statistics into a clipping range:

- ``minmax``: the observed range.
- ``percentile``: the ``p``-th percentile of |x| (symmetric) or the (100−p, p) percentiles.
- ``entropy``: the threshold minimising the KL divergence between the clipped distribution
  and its quantized version (TensorRT's calibrator), on |x|, one-sided for x ≥ 0 or x ≤ 0,
  ignoring exact zeros; min/max when the tensor has too few values for a histogram.
- ``mse``: the clipping range minimising the expected squared quantization error.
"""

from __future__ import annotations

import numpy as np

from .qmath import compute_qparams, qrange

DEFAULT_BINS = 2048
# Entropy calibration needs a populated histogram; with fewer values than this per integer
# level (e.g. the [N, C, 1, 1] vectors of squeeze-excitation blocks) it falls back to min/max.
MIN_VALUES_PER_LEVEL = 64


class RangeObserver:
    def __init__(self, *, histogram: bool, bins: int = DEFAULT_BINS):
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.bins = bins
        self.hist: np.ndarray | None = np.zeros(bins, dtype=np.int64) if histogram else None
        self.radius = 0.0  # histogram covers [−radius, radius]
        self._zeros = 0  # values seen while every value so far was 0 (no radius yet)
        self.exact_zeros = 0  # zeros are exact on any grid: entropy ignores their spike

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += values.size
        if self.hist is None:
            return
        self.exact_zeros += int(values.size - np.count_nonzero(values))
        amax = max(-lo, hi)
        if self.radius == 0.0:
            self.radius = amax if amax > 0 else 0.0
        elif amax > self.radius:
            self._grow(amax)
        if self.radius == 0.0:  # all zeros so far: they fall in the bin right above 0
            self._zeros += values.size
            return
        counts, _ = np.histogram(values, bins=self.bins, range=(-self.radius, self.radius))
        self.hist += counts

    def _grow(self, amax: float) -> None:
        while self.radius < amax:
            # double the range: bins pair up and move to the middle half
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros_like(self.hist)
            quarter = self.bins // 4
            self.hist[quarter:quarter + merged.size] = merged
            self.radius *= 2

    def merged_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, bin edges) including zeros seen before the range was known."""
        hist = self.hist.copy()
        if self._zeros:
            hist[self.bins // 2] += self._zeros
        edges = np.linspace(-self.radius, self.radius, self.bins + 1)
        return hist, edges

    # ---- methods ------------------------------------------------------------------------
    def compute_range(self, method: str, dtype: str, symmetric: bool, percentile: float = 99.99
                      ) -> tuple[float, float]:
        lo, hi = float(self.min), float(self.max)
        if method == "minmax" or self.hist is None or self.radius == 0.0 or self.count == 0:
            return lo, hi
        hist, edges = self.merged_histogram()
        if method == "percentile":
            return _percentile_range(hist, edges, lo, hi, percentile, symmetric)
        if method == "entropy":
            if self.count < MIN_VALUES_PER_LEVEL * (qrange(dtype)[1] - qrange(dtype)[0] + 1):
                return lo, hi  # too few values (pooled vectors): the KL minimum is noise
            # ReLU outputs put a spike of exact zeros in the first bin; it would pull the KL
            # threshold down although zero is exact on every grid.
            hist[self.bins // 2] -= min(self.exact_zeros, int(hist[self.bins // 2]))
            return _entropy_range(hist, edges, lo, hi, dtype)
        if method == "mse":
            return _mse_range(hist, edges, lo, hi, dtype, symmetric)
        raise ValueError(f"unknown calibration method '{method}'")


def _fold(hist: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of |x| from the signed one (upper edges of the magnitude bins)."""
    half = hist.size // 2
    folded = hist[half:] + hist[:half][::-1]
    return folded, edges[half + 1:]


def _percentile_range(hist, edges, lo, hi, p, symmetric):
    if symmetric or lo >= 0:
        mags, upper = _fold(hist, edges)
        cdf = np.cumsum(mags) / max(mags.sum(), 1)
        t = float(upper[min(np.searchsorted(cdf, p / 100.0), upper.size - 1)])
        return max(lo, -t), min(hi, t)
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    low = float(edges[min(np.searchsorted(cdf, 1 - p / 100.0), edges.size - 1)])
    high = float(edges[min(np.searchsorted(cdf, p / 100.0) + 1, edges.size - 1)])
    return max(lo, low), min(hi, high)


def _entropy_range(hist, edges, lo, hi, dtype):
    qmin, qmax = qrange(dtype)
    one_sided = lo >= 0 or hi <= 0  # all values on one side of 0: the whole grid is theirs
    levels = (qmax - qmin + 1) if one_sided else (qmax - qmin + 1) // 2
    mags, upper = _fold(hist, edges)
    last = int(np.nonzero(mags)[0].max()) + 1 if mags.any() else 0
    if last <= levels:
        return lo, hi  # the grid is already as fine as the histogram: nothing to clip
    t = float(upper[_kl_threshold(mags[:last], levels) - 1])
    if hi <= 0:
        return max(lo, -t), hi
    return (lo if lo >= 0 else max(lo, -t)), min(hi, t)


def _kl_threshold(mags: np.ndarray, levels: int) -> int:
    """Number of leading bins whose clipping minimises KL(P ‖ Q) (TensorRT's method)."""
    n = mags.size
    mags = mags.astype(np.float64)
    best_i, best_kl = n, np.inf
    total_tail = np.concatenate([np.cumsum(mags[::-1])[::-1], [0.0]])  # total_tail[i] = sum(mags[i:])
    stride = max(1, (n - levels) // 128)
    candidates = list(range(levels, n + 1, stride))
    if candidates[-1] != n:
        candidates.append(n)
    for i in candidates:
        ref = mags[:i].copy()
        p = ref.copy()
        p[i - 1] += total_tail[i]
        nonzero = ref != 0
        group = (np.arange(i) * levels) // i
        sums = np.bincount(group, weights=ref, minlength=levels)
        counts = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_bin = np.where(counts > 0, sums / counts, 0.0)
        q = np.where(nonzero, per_bin[group], 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def _mse_range(hist, edges, lo, hi, dtype, symmetric, steps: int = 100):
    centers = (edges[:-1] + edges[1:]) / 2
    weights = hist.astype(np.float64)
    keep = weights > 0
    centers, weights = centers[keep], weights[keep]
    centers = np.clip(centers, lo, hi)
    qmin, qmax = qrange(dtype)
    best, best_err = (lo, hi), np.inf
    for k in range(steps // 5, steps + 1):
        f = k / steps
        c_lo, c_hi = lo * f, hi * f
        scale, zero = compute_qparams(c_lo, c_hi, dtype, symmetric, scale_dtype=np.float64)
        s, z = float(scale), float(zero.astype(np.int64))
        q = np.clip(np.rint(centers / s) + z, qmin, qmax)
        err = float(np.sum(weights * (centers - (q - z) * s) ** 2))
        if err < best_err:
            best_err, best = err, (c_lo, c_hi)
    return best

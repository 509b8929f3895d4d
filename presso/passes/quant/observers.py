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
- ``mean-minmax``: the mean over samples of each sample's minimum and maximum (NNCF's default
  for activations): a range that most samples fill, ignoring the rare sample with outliers.

The statistics for all methods come from the same updates, so one streaming pass over the
data serves every method (``calibrate{method=auto}`` compares several of them).
"""

from __future__ import annotations

import numpy as np

from .qmath import compute_qparams, qrange

DEFAULT_BINS = 2048
# Entropy calibration needs a populated histogram; with fewer values than this per integer
# level (e.g. the [N, C, 1, 1] vectors of squeeze-excitation blocks) it falls back to min/max.
MIN_VALUES_PER_LEVEL = 64


class RangeObserver:
    def __init__(self, *, histogram: bool, bins: int = DEFAULT_BINS, count_zeros: bool = True):
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.bins = bins
        self.hist: np.ndarray | None = np.zeros(bins, dtype=np.int64) if histogram else None
        self.radius = 0.0  # histogram covers [−radius, radius]
        self._zeros = 0  # values seen while every value so far was 0 (no radius yet)
        # zeros are exact on any grid: entropy ignores their spike (counting them costs a pass
        # over the data, so callers that will not ask for entropy switch it off)
        self.count_zeros = count_zeros
        self.exact_zeros = 0
        self.samples = 0  # samples (or whole updates) behind the sums below
        self.sum_min = 0.0  # Σ per-sample minimum (mean-minmax)
        self.sum_max = 0.0

    def update(self, values: np.ndarray, samples: int | None = None) -> tuple[float, float]:
        """Add one batch and return its (min, max) — NaN or ±inf when it holds such values.

        ``samples``: the batch's sample count; when the leading axis has that size, per-sample
        extremes feed ``mean-minmax`` (otherwise the batch counts as one sample).
        """
        values = np.asarray(values)
        if values.size == 0:
            return 0.0, 0.0
        if samples and samples > 1 and values.ndim and values.shape[0] == samples:
            per = values.reshape(samples, -1)
            mins, maxs = per.min(axis=1).astype(np.float64), per.max(axis=1).astype(np.float64)
            lo, hi = float(mins.min()), float(maxs.max())
        else:
            lo, hi = float(values.min()), float(values.max())
            mins, maxs = np.array([lo]), np.array([hi])
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return lo, hi  # the caller reports it; such values must not reach the statistics
        self.sum_min += float(mins.sum())
        self.sum_max += float(maxs.sum())
        self.samples += mins.size
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += values.size
        if self.hist is None:
            return lo, hi
        if self.count_zeros:
            self.exact_zeros += int(values.size - np.count_nonzero(values))
        amax = max(-lo, hi)
        if self.radius == 0.0:
            self.radius = amax if amax > 0 else 0.0
        elif amax > self.radius:
            self._grow(amax)
        if self.radius == 0.0:  # all zeros so far: they fall in the bin right above 0
            self._zeros += values.size
            return lo, hi
        self.hist += _histogram(values, self.bins, self.radius)
        return lo, hi

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
        if method == "mean-minmax" and self.samples:
            return self.sum_min / self.samples, self.sum_max / self.samples
        if method in ("minmax", "mean-minmax") or self.hist is None or self.radius == 0.0 or self.count == 0:
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


def _histogram(values: np.ndarray, bins: int, radius: float) -> np.ndarray:
    """Counts of ``values`` in ``bins`` equal bins over [−radius, radius] (all values lie inside).

    Same bins as ``np.histogram(values, bins, range=(−radius, radius))``, about 3× faster: the
    range is known, so one multiply, a cast and ``bincount`` do it (calibration spends most of
    its time here on small models).
    """
    x = values.reshape(-1)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    # Scale first (x + radius could overflow float32 near its limit). x ≥ −radius, so the index
    # is ≥ 0 up to rounding, which the cast truncates to 0; x = radius reaches past the end.
    index = (x * np.asarray(bins / (2 * radius), x.dtype) + np.asarray(bins // 2, x.dtype)).astype(np.intp)
    np.minimum(index, bins - 1, out=index)
    return np.bincount(index, minlength=bins)


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
    """The range ``(f·lo, f·hi)``, f in [0.2, 1], with the least expected squared error over the
    histogram (bin centres stand for their values); every f at once."""
    centers = (edges[:-1] + edges[1:]) / 2
    weights = hist.astype(np.float64)
    keep = weights > 0
    centers, weights = np.clip(centers[keep], lo, hi), weights[keep]
    qmin, qmax = qrange(dtype)
    factors = np.arange(steps // 5, steps + 1) / steps
    scale, zero = compute_qparams(lo * factors, hi * factors, dtype, symmetric, scale_dtype=np.float64)
    s, z = scale[:, None], zero.astype(np.int64)[:, None].astype(np.float64)
    q = np.clip(np.rint(centers[None, :] / s) + z, qmin, qmax)
    err = np.sum(weights[None, :] * (centers[None, :] - (q - z) * s) ** 2, axis=1)
    f = factors[int(np.argmin(err))]
    return lo * f, hi * f

"""Scale/zero-point math, quantize and dequantize, exactly as ONNX defines them.

``QuantizeLinear``: ``y = saturate(round_half_to_even(x / scale) + zero_point)``;
``DequantizeLinear``: ``x = (y − zero_point) · scale``. Per-axis parameters broadcast along
``axis``. Every integer type of :data:`~presso.passes.quant.scheme.INTEGER_TYPES` is covered,
4-bit ones included (stored as ``ml_dtypes.int4``/``uint4``).
"""

from __future__ import annotations

import numpy as np

from ...ir.errors import CalibrationError
from .scheme import INTEGER_TYPES

# Scales below this would overflow int32 bias quantization and lose float32 precision; a
# tensor whose range is exactly zero (a constant) gets a unit range instead of a zero scale.
MIN_SCALE = 1e-10


def qrange(dtype: str) -> tuple[int, int]:
    _, lo, hi, _ = INTEGER_TYPES[dtype]
    return lo, hi


def storage_dtype(dtype: str) -> np.dtype:
    return INTEGER_TYPES[dtype][0]


def compute_qparams(rmin, rmax, dtype: str, symmetric: bool, *, scale_dtype=np.float32,
                    reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point covering ``[rmin, rmax]`` (scalars or per-channel arrays).

    The range always includes 0, so that zero (padding, ReLU) is exact. Symmetric signed
    types use the restricted range ``[−qmax, qmax]`` with zero point 0 (TFLite, ORT weights);
    symmetric unsigned types put the zero point in the middle. A zero range (a constant
    tensor) gets the range ``[0, 1]`` instead of a zero scale. ``reduce_range`` uses one bit
    less (int8 weights in [−64, 63]) so that onnxruntime's u8·s8 kernels on CPUs without VNNI
    cannot overflow their 16-bit intermediate sums.
    """
    qmin, qmax = qrange(dtype)
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise CalibrationError("cannot compute a scale from a non-finite range",
                               hint="the data or the weights hold NaN/Inf values")
    if symmetric:
        amax = np.maximum(-rmin, rmax)
        amax = np.where(amax > 0, amax, 1.0)
        if qmin < 0:
            scale = amax / qmax
            zero = np.zeros_like(scale)
        else:
            scale = 2 * amax / (qmax - qmin)
            zero = np.full_like(scale, (qmax + qmin + 1) // 2)
    else:
        span = rmax - rmin
        empty = span <= 0
        rmax = np.where(empty, 1.0, rmax)
        rmin = np.where(empty, 0.0, rmin)
        scale = (rmax - rmin) / (qmax - qmin)
        zero = np.clip(np.rint(qmin - rmin / scale), qmin, qmax)
    scale = np.maximum(scale, MIN_SCALE).astype(scale_dtype)
    return scale, zero.astype(np.int64).astype(storage_dtype(dtype))


def _broadcast(param: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def quantize(x: np.ndarray, scale, zero_point, dtype: str, axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, then saturate to the type's range."""
    x = np.asarray(x)
    qmin, qmax = qrange(dtype)
    s = _broadcast(np.asarray(scale, dtype=x.dtype if x.dtype.kind == "f" else np.float32), x.ndim, axis)
    z = _broadcast(np.asarray(zero_point).astype(np.int64), x.ndim, axis)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.rint(x / s).astype(np.float64) + z
    q = np.clip(np.nan_to_num(q, nan=0.0, posinf=qmax, neginf=qmin), qmin, qmax)
    return q.astype(np.int64).astype(storage_dtype(dtype))


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None, *, dtype=np.float32) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q − zero_point) · scale``."""
    q = np.asarray(q).astype(np.int64)
    s = _broadcast(np.asarray(scale, dtype=dtype), q.ndim, axis)
    z = _broadcast(np.asarray(zero_point).astype(np.int64), q.ndim, axis)
    return ((q - z).astype(dtype) * s).astype(dtype)


def fake_quantize(x: np.ndarray, scale, zero_point, dtype: str, axis: int | None = None) -> np.ndarray:
    return dequantize(quantize(x, scale, zero_point, dtype, axis), scale, zero_point, axis, dtype=np.asarray(x).dtype)


def channel_range(values: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of ``values``, per slice along ``axis`` (or over everything when None)."""
    values = np.asarray(values, dtype=np.float64)
    if axis is None or values.ndim == 0:
        return np.asarray(values.min() if values.size else 0.0), np.asarray(values.max() if values.size else 0.0)
    moved = np.moveaxis(values, axis % values.ndim, 0).reshape(values.shape[axis % values.ndim], -1)
    if moved.shape[1] == 0:
        zeros = np.zeros(moved.shape[0])
        return zeros, zeros
    return moved.min(axis=1), moved.max(axis=1)

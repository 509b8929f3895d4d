"""Constant folding in numpy for the ops TVM's ONNX frontend applies to constants.

``relax.transform.FoldConstant`` evaluates each constant subexpression by legalizing it and
compiling a kernel with LLVM: on PP-OCR det (its Clip bounds go through ``isnan``/``where``,
its biases through ``reshape``) that is some 150 compilations and 20+ seconds of build time.
:func:`fold_constants` first folds the ops that are pure data movement or exact element-wise
float arithmetic (reshape, squeeze, expand_dims, permute_dims, isnan, where, astype between
float types, add/subtract/multiply/divide) with numpy, then lets ``FoldConstant`` take
whatever is left. Preserves semantics exactly: numpy's float32 arithmetic is IEEE, as TVM's.
"""

from __future__ import annotations

import numpy as np

_RESHAPES = ("reshape", "squeeze", "expand_dims")
_BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}


def fold_constants(mod, *, fallback: bool = True):
    """``mod`` with constant subexpressions folded: numpy first, then (``fallback``) ``FoldConstant``
    for the rest (which costs a second or more on a big model even when nothing is left)."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    patterns = [(is_op(f"relax.{name}")(is_const(), wildcard()), _reshape) for name in ("reshape", "expand_dims")]
    patterns += [(is_op("relax.squeeze")(is_const()), _reshape), (is_op("relax.permute_dims")(is_const()), _permute),
                 (is_op("relax.isnan")(is_const()), _isnan), (is_op("relax.astype")(is_const()), _astype),
                 (is_op("relax.where")(is_const(), is_const(), is_const()), _where)]
    patterns += [(is_op(f"relax.{name}")(is_const(), is_const()), _binary) for name in _BINARY]
    # A few sweeps: folding one op exposes the next (reshape → where → ...).
    for _ in range(3):
        changed = False
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function):
                continue
            for pattern, fold in patterns:
                new = rewrite_call(pattern, lambda expr, _, fold=fold: _safe(fold, expr), func)
                changed |= not new.same_as(func)
                func = new
            mod[gvar] = func
        if not changed:
            break
    return relax.transform.FoldConstant()(mod) if fallback else mod


def _safe(fold, call):
    """``fold(call)``, or ``call`` unchanged when its result type is not static."""
    from tvm import relax

    shape = getattr(call.ty, "shape", None)
    if shape is None or not all(hasattr(d, "value") for d in shape):
        return call
    value = fold(call)
    if value is None:
        return call
    dtype = str(call.ty.dtype)
    value = np.asarray(value)
    if value.dtype != np.dtype(dtype) or list(value.shape) != [int(d.value) for d in shape]:
        return call
    return relax.const(np.ascontiguousarray(value), dtype)


def _value(expr):
    return expr.value.numpy()


def _reshape(call):
    return _value(call.args[0]).reshape([int(d.value) for d in call.ty.shape])


def _permute(call):
    value = _value(call.args[0])
    axes = call.attrs.axes
    return value.transpose([int(a) for a in axes] if axes is not None else None)


def _isnan(call):
    return np.isnan(_value(call.args[0]))


def _astype(call):
    value = _value(call.args[0])
    target = np.dtype(str(call.attrs.dtype))
    # Only float ↔ float: integer conversions' rounding and overflow rules differ from numpy's.
    return value.astype(target) if value.dtype.kind == "f" and target.kind == "f" else None


def _where(call):
    cond, a, b = (_value(arg) for arg in call.args)
    return np.where(cond, a, b).astype(a.dtype) if a.dtype == b.dtype else None


def _binary(call):
    a, b = _value(call.args[0]), _value(call.args[1])
    if a.dtype != b.dtype or a.dtype.kind != "f":
        return None
    with np.errstate(all="ignore"):
        return _BINARY[call.op.name.split(".")[-1]](a, b)

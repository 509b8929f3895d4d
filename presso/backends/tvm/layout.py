"""Relax-level layout rewrite for CPU targets: convolutions in NHWC with HWIO weights.

Why: on a CPU the fast inner loop of a convolution is a contiguous vector FMA. In NHWC the
output channels are the innermost dimension of both the output and of HWIO weights, so the
kernel (see :mod:`.schedule`) broadcasts one input value and multiplies it with a vector of
weights for 8 or 16 output channels at a time; depthwise convolutions read 8 channels of
one pixel at a time. ONNX models are NCHW, so :func:`to_nhwc`:

1. canonicalizes the graph so that TVM's ``ConvertLayout`` can carry NHWC through it:
   the ONNX frontend's ``Clip`` (``call_tir`` of TOPI maximum/minimum) and ``R.clip`` become
   ``R.maximum``/``R.minimum`` with constant bounds, and constants broadcast against
   higher-rank tensors get the full rank (``(1,)`` → ``(1, 1, 1, 1)``) so the
   layout pass can permute them;
2. runs TVM's ``ConvertLayout``: convolutions to NHWC with HWIO weights, transposed
   convolutions whose kernel equals their stride (no padding, no dilation, one group: the
   upsamplers of PP-OCR det's head) to NHWC too, other transposed convolutions to NCHW
   (the only layout TOPI has them in); folds the permuted weights into new constants
   (packed at compile time, not per run);
3. rewrites those NHWC transposed convolutions into a 1×1 convolution followed by a
   depth-to-space shuffle: the same products and sums, without the zero-stuffed input
   that TOPI's transposed convolution multiplies through; removes transposes that cancel;
4. packs the weights of NHWC convolutions into blocks of output channels
   (:func:`pack_conv_weights`).

Element-wise ops, reductions (GlobalAveragePool), concat and resize follow the layout; ops
that cannot (reshape, matmul) get one transpose back to NCHW. The model's inputs and outputs
keep their layout. Preserves semantics (up to float summation order in the rewritten
transposed convolutions).
"""

from __future__ import annotations

import warnings

import numpy as np

from .fold import fold_constants

# Element-wise binary ops whose constant operands may be given the full rank.
_BINARY = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "floor_divide")
_COMMUTATIVE = ("add", "multiply", "maximum", "minimum")


def to_nhwc(mod):
    """``mod`` with its 2-D convolutions in NHWC/HWIO and weights permuted at compile time."""
    import tvm
    from tvm import relax

    mod = _rewrite_main(mod.clone(), _canonicalize)
    try:
        converted = relax.transform.ConvertLayout({}, _desired_layout)(mod)
    except Exception as exc:  # noqa: BLE001  (TVM's layout inference has gaps; NCHW still builds)
        warnings.warn(f"TVM could not convert the model to NHWC ({str(exc).strip().splitlines()[-1]}); "
                      "compiling its convolutions in NCHW (slower untuned kernels)", stacklevel=2)
        return mod
    # The transposed weights become new constants (ConvertLayout adds nothing else to fold).
    mod = fold_constants(converted, fallback=False)
    mod = _rewrite_main(mod, _conv_transpose_as_conv)
    mod = _rewrite_main(mod, _fold_transposes)
    mod = tvm.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                    relax.transform.DeadCodeElimination()])(mod)
    return pack_conv_weights(mod)


def _desired_layout(call) -> dict:
    """ConvertLayout's choice per convolution: NHWC, except transposed convolutions that
    :func:`_depth_to_space` cannot rewrite (TOPI only has them in NCHW)."""
    transpose = "NHWC" if call.op.name == "relax.nn.conv2d_transpose" and _is_depth_to_space(call) else "NCHW"
    return {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": [transpose, "IOHW"]}


def _rewrite_main(mod, rewrite):
    from tvm import relax

    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            new = rewrite(func, mod)
            if not new.same_as(func):
                mod[gvar] = new
    return mod


# ---- 1. canonical forms that ConvertLayout understands ------------------------------------------
def _canonicalize(func, mod):
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    func = rewrite_call(is_op("relax.clip")(wildcard(), wildcard(), wildcard()),
                        lambda expr, _: _clip_as_min_max(expr), func)
    func = rewrite_call(is_op("relax.call_tir")(wildcard(), wildcard()),
                        lambda expr, _: _call_tir_as_min_max(expr, mod), func)
    quantize = is_op("relax.quantize")(wildcard(), is_const(), is_const())
    func = rewrite_call(is_op("relax.dequantize")(quantize, is_const(), is_const()),
                        lambda expr, matches: _qdq_as_elementwise(matches[quantize], expr), func)
    func = rewrite_call(quantize, lambda expr, _: _quantize_as_elementwise(expr), func)
    func = rewrite_call(is_op("relax.dequantize")(wildcard(), is_const(), is_const()),
                        lambda expr, _: _dequantize_as_elementwise(expr), func)
    func = rewrite_call(is_op("relax.broadcast_to")(wildcard(), wildcard()),
                        lambda expr, _: _drop_identity_broadcast(expr), func)
    stack = is_op("relax.stack")(wildcard())
    for reduce in ("max", "min"):
        func = rewrite_call(is_op(f"relax.{reduce}")(stack),
                            lambda expr, matches: _reduce_of_stack_as_elementwise(expr, matches[stack]), func)
    func = rewrite_call(is_op("relax.stack")(wildcard()), lambda expr, _: _stack_as_concat(expr), func)
    for name in _BINARY:
        for pattern in (is_op(f"relax.{name}")(wildcard(), is_const()),
                        is_op(f"relax.{name}")(is_const(), wildcard())):
            func = rewrite_call(pattern, lambda expr, _: _full_rank_constants(expr), func)
    return func


def _scalar_qparams(call):
    """(scale, zero point) as numpy scalars when both are single values, else None."""
    scale, zero = call.args[1].value.numpy(), call.args[2].value.numpy()
    if scale.size != 1 or zero.size != 1 or scale.dtype != np.float32:
        return None
    return scale.reshape(()), zero.reshape(())


def _quantize_as_elementwise(call):
    """Per-tensor ``quantize`` as the element-wise ops TVM legalizes it into, which (unlike
    ``quantize`` itself) ConvertLayout can carry NHWC through: ``round(x / s) + zp``, clamped to
    the integer type's range, cast."""
    from tvm import relax

    clamped = _quantized_float(call)
    return call if clamped is None else relax.op.astype(clamped, str(call.attrs.out_dtype))


def _quantized_float(call):
    """``clamp(round(x / s) + zp)`` in float32 (integral values in the type's range), or None."""
    from tvm import relax, tirx

    params = _scalar_qparams(call)
    dtype = str(call.attrs.out_dtype)
    if params is None or str(call.args[0].ty.dtype) != "float32" or "int" not in dtype:
        return None
    scale, zero = params
    x = relax.op.add(relax.op.round(relax.op.divide(call.args[0], relax.const(scale, "float32"))),
                     relax.const(np.float32(zero), "float32"))
    return relax.op.maximum(relax.op.minimum(x, relax.const(float(tirx.max_value(dtype).value), "float32")),
                            relax.const(float(tirx.min_value(dtype).value), "float32"))


def _qdq_as_elementwise(quantize, dequantize):
    """``dequantize(quantize(x))`` (an activation's fake quantization) in float32:
    ``(clamp(round(x / s1) + zp1) - zp2) · s2``. Exact: the clamped value is an integer in the
    8-bit range, so the casts to int8 and back that the pair spells out change nothing."""
    from tvm import relax

    clamped = _quantized_float(quantize)
    params = _scalar_qparams(dequantize)
    if clamped is None or params is None or str(dequantize.attrs.out_dtype) != "float32":
        return dequantize
    scale, zero = params
    return relax.op.multiply(relax.op.subtract(clamped, relax.const(np.float32(zero), "float32")),
                             relax.const(scale, "float32"))


def _dequantize_as_elementwise(call):
    """Per-tensor ``dequantize`` to float32 as ``float(int32(q) - zp) * s`` (TVM's legalization)."""
    from tvm import relax

    params = _scalar_qparams(call)
    data_dtype = str(call.args[0].ty.dtype)
    if params is None or str(call.attrs.out_dtype) != "float32" or "int" not in data_dtype:
        return call
    scale, zero = params
    x = relax.op.subtract(relax.op.astype(call.args[0], "int32"), relax.const(np.int32(zero), "int32"))
    return relax.op.multiply(relax.op.astype(x, "float32"), relax.const(scale, "float32"))


def _drop_identity_broadcast(call):
    """``broadcast_to(x, shape)`` with ``shape`` already x's: ``x``."""
    shape = _static_shape(call.args[0])
    return call.args[0] if shape is not None and shape == _static_shape(call) else call


def _reduce_of_stack_as_elementwise(call, stack):
    """``max(stack(xs), axis=0)`` (ONNX Max/Min of several inputs) → ``maximum(x0, x1, ...)``."""
    from tvm import relax

    fields = stack.args[0]
    axis = call.attrs.axis
    if (not isinstance(fields, relax.Tuple) or call.attrs.keepdims or axis is None or len(axis) != 1
            or int(axis[0]) != int(stack.attrs.axis or 0) or int(axis[0]) != 0):
        return call
    shapes = [_static_shape(f) for f in fields.fields]
    if shapes[0] is None or any(s != shapes[0] for s in shapes):
        return call
    op = relax.op.maximum if call.op.name == "relax.max" else relax.op.minimum
    result = fields.fields[0]
    for field in fields.fields[1:]:
        result = op(result, field)
    return result


def _stack_as_concat(call):
    """``stack(xs, axis)`` as ``concat([expand_dims(x, axis) ...], axis)``.

    (apache-tvm 0.27's layout inference for ``stack`` fails on any input: "Invalid SLayout").
    """
    from tvm import relax

    fields = call.args[0]
    if not isinstance(fields, relax.Tuple):
        return call
    axis = int(call.attrs.axis) if call.attrs.axis is not None else 0
    return relax.op.concat([relax.op.expand_dims(f, axis) for f in fields.fields], axis=axis)


def _clip_as_min_max(call):
    from tvm import relax

    data, low, high = call.args
    dtype = str(call.ty.dtype)
    bounds = []
    for bound in (low, high):
        value = getattr(bound, "value", None)  # an IntImm/FloatImm, or a PrimValue holding one
        value = getattr(value, "value", value)
        if not isinstance(value, (int, float)):
            return call
        bounds.append(relax.const(float(value) if "float" in dtype else int(value), dtype))
    return relax.op.minimum(relax.op.maximum(data, bounds[0]), bounds[1])


def _call_tir_as_min_max(call, mod):
    """``call_tir(maximum|minimum, (x, scalar const))`` as emitted for ONNX Clip → the Relax op."""
    import tvm
    import tvm_ffi
    from tvm import relax, te, topi

    callee, args = call.args[0], call.args[1]
    if not isinstance(args, relax.Tuple) or len(args.fields) != 2:
        return call
    data, bound = args.fields
    if not _is_const(bound) or len(bound.ty.shape) != 0 or not hasattr(data.ty, "shape"):
        return call
    func = mod[callee] if callee in mod.functions else None
    if func is None or not isinstance(func, tvm.tirx.PrimFunc):
        return call
    for te_op, relax_op in ((topi.maximum, relax.op.maximum), (topi.minimum, relax.op.minimum)):
        a = te.placeholder(list(data.ty.shape), str(data.ty.dtype), name="a")
        b = te.placeholder((), str(bound.ty.dtype), name="b")
        expected = te.create_prim_func([a, b, te_op(a, b)])
        # The same body up to names means the same element-wise op.
        if tvm_ffi.structural_equal(expected.body, func.body, map_free_vars=True):
            return relax_op(data, bound)
    return call


def _full_rank_constants(call):
    """Constants broadcast against a tensor: one element → a scalar, else the tensor's rank.

    Both give the same result shape and values as the original broadcast. Commutative ops get
    the constant second, the operand whose layout ConvertLayout adapts to the tensor's.
    """
    from tvm import relax

    lhs, rhs = call.args[0], call.args[1]
    ranks = [_rank(lhs), _rank(rhs)]
    if None in ranks:
        return call
    target = max(ranks)
    new_args = []
    for arg, rank in zip((lhs, rhs), ranks):
        if _is_const(arg) and rank > 0:
            value = arg.value.numpy()
            if value.size == 1:
                arg = relax.const(value.reshape(()), value.dtype)
            elif rank < target:
                arg = relax.const(value.reshape((1,) * (target - rank) + value.shape), value.dtype)
        new_args.append(arg)
    if call.op.name.split(".")[-1] in _COMMUTATIVE and _is_const(new_args[0]) and not _is_const(new_args[1]):
        new_args.reverse()
    if all(a.same_as(b) for a, b in zip(new_args, (lhs, rhs))):
        return call
    return relax.Call(call.op, new_args, call.attrs)


def _is_const(expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.expr.Constant)


def _rank(expr) -> int | None:
    shape = getattr(expr.ty, "shape", None)
    return len(shape) if shape is not None else None


# ---- 2. ConvTranspose with kernel == stride → 1x1 conv + depth-to-space -------------------------
def _is_depth_to_space(call) -> bool:
    attrs = call.attrs
    weight = call.args[1]
    if not _is_const(weight) or _static_shape(weight) is None or attrs.kernel_layout != "IOHW":
        return False
    kernel = _static_shape(weight)[2:]
    return (attrs.data_layout == attrs.out_layout and int(attrs.groups) == 1
            and all(int(v) == 0 for v in attrs.padding) and all(int(v) == 0 for v in attrs.output_padding)
            and all(int(v) == 1 for v in attrs.dilation) and kernel == [int(s) for s in attrs.strides])


def _conv_transpose_as_conv(func, mod):
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    pattern = is_op("relax.nn.conv2d_transpose")(wildcard(), is_const())
    return rewrite_call(pattern, lambda expr, _: _depth_to_space(expr), func)


def _depth_to_space(call):
    """out[n, h·kh+i, w·kw+j, o] = Σ_c x[n, h, w, c]·W[c, o, i, j]: a 1×1 conv, then a shuffle.

    Only for NHWC transposed convolutions (ConvertLayout made the eligible ones NHWC).
    """
    from tvm import relax

    data, weight = call.args
    shape = _static_shape(data)
    if shape is None or call.attrs.data_layout != "NHWC" or not _is_depth_to_space(call):
        return call
    w = weight.value.numpy()
    cin, cout, kh, kw = w.shape
    n, h, wd, _ = shape
    # Output channels of the 1×1 conv ordered (i, j, o): the shuffle moves runs of `cout` channels.
    hwio = w.transpose(0, 2, 3, 1).reshape(1, 1, cin, kh * kw * cout)
    y = relax.op.nn.conv2d(data, relax.const(np.ascontiguousarray(hwio)), strides=1, padding=0,
                           data_layout="NHWC", kernel_layout="HWIO")
    y = relax.op.reshape(y, [n, h, wd, kh, kw, cout])
    y = relax.op.permute_dims(y, [0, 1, 3, 2, 4, 5])
    return relax.op.reshape(y, [n, h * kh, wd * kw, cout])


def _static_shape(expr) -> list[int] | None:
    import tvm

    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


# ---- 3. cancel transposes --------------------------------------------------------------------------
def _fold_transposes(func, mod):
    """``permute_dims(permute_dims(x, a), b)`` → one permute, or ``x`` when they cancel."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    inner = is_op("relax.permute_dims")(wildcard())
    outer = is_op("relax.permute_dims")(inner)

    def rewriter(expr, matches):
        first = matches[inner]
        a, b = _axes(first), _axes(expr)
        if a is None or b is None:
            return expr
        composed = [a[i] for i in b]
        source = first.args[0]
        if composed == list(range(len(composed))):
            return source
        return relax.op.permute_dims(source, composed)

    func = rewrite_call(outer, rewriter, func)

    def identity(expr, _):
        axes = _axes(expr)
        return expr.args[0] if axes == list(range(len(axes or []))) and axes else expr

    return rewrite_call(inner, identity, func)


def _axes(call) -> list[int] | None:
    axes = call.attrs.axes
    rank = _rank(call.args[0])
    if rank is None:
        return None
    if axes is None:
        return list(reversed(range(rank)))
    return [int(a) for a in axes]


# ---- 4. packed weights ----------------------------------------------------------------------------
def pack_conv_weights(mod):
    """NHWC convolutions with constant HWIO weights → ``conv2d_nhwc_packed`` on blocked weights.

    The weights become ``[O / B, KH, KW, I, B]`` (``B`` = :func:`.schedule.vector_block` of
    the output channels, the schedule's vector width): the B output channels that one vector
    FMA updates are contiguous, and consecutive input channels are consecutive vectors, so
    the innermost loop reads the weights sequentially instead of striding by O·4 bytes
    (a new cache line, and often a new page, per input channel). The blocks are computed
    here, once, as new constants. Depthwise and grouped convolutions keep TOPI's kernel
    (their HWIO weights are already contiguous along the channels they vectorize).
    Same products, same summation order: results are unchanged.
    """
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    conv2d = tvm_op("relax.nn.conv2d")

    @mutator
    class _Packer(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call, relax.Call) or not call.op.same_as(conv2d):
                return call
            packed = _packed_weight(call)
            if packed is None:
                return call
            attrs = call.attrs
            return self.builder_.call_te(
                conv2d_nhwc_packed, call.args[0], relax.const(packed),
                strides=[int(v) for v in attrs.strides], padding=[int(v) for v in attrs.padding],
                dilation=[int(v) for v in attrs.dilation], primfunc_name_hint="conv2d_nhwc_packed")

    packer = _Packer(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            packer.builder_.update_func(gvar, packer.visit_expr(func))
    return packer.builder_.get()


def tvm_op(name):
    import tvm

    return tvm.ir.Op.get(name)


def _packed_weight(call) -> np.ndarray | None:
    from .schedule import vector_block

    attrs = call.attrs
    data, weight = call.args
    if (attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO" or attrs.out_layout != "NHWC"
            or int(attrs.groups) != 1 or not _is_const(weight) or _static_shape(data) is None
            or str(data.ty.dtype) != "float32" or str(call.ty.dtype) != "float32"):
        return None
    w = weight.value.numpy()
    if w.dtype != np.float32:
        return None
    kh, kw, cin, cout = w.shape
    block = vector_block(cout)
    if block < 4:
        return None
    return np.ascontiguousarray(w.reshape(kh, kw, cin, cout // block, block).transpose(3, 0, 1, 2, 4))


def conv2d_nhwc_packed(data, packed, strides, padding, dilation):
    """TE: NHWC convolution with ``[O/B, KH, KW, I, B]`` weights (zero padding as its own stage)."""
    from tvm import te, topi

    batch, height, width, _ = (int(d) for d in data.shape)
    blocks, kh, kw, cin, block = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    if any(padding):
        data = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], name="pad_temp")
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    rc = te.reduce_axis((0, cin), name="rc")
    return te.compute(
        (batch, out_h, out_w, blocks * block),
        lambda n, y, x, o: te.sum(data[n, y * sh + rh * dh, x * sw + rw * dw, rc]
                                  * packed[o // block, rh, rw, rc, o % block], axis=[rh, rw, rc]),
        name="conv2d_nhwc_packed")

"""Vectorizable tanh and sigmoid for CPU targets (the approximations onnxruntime's MLAS uses).

TVM lowers ``tanh`` and ``sigmoid`` through ``exp``, which LLVM turns into one scalar ``expf``
call per element: a GELU over magika's 508×512 activations, or PP-OCR det's final sigmoid
over 320×320 pixels, then costs milliseconds. :func:`use_fast_math` replaces them with
TOPI's ``fast_tanh`` (the clamped rational approximation MLAS and Eigen use for tanh) and
``1 / (1 + fast_exp(-x))`` (a range-reduced polynomial exp), both plain arithmetic that
vectorizes. Not bit-exact: both stay within a few float32 ulps of the exact functions
(checked against onnxruntime in ``tests/backends/tvm/test_tvm_fast_math.py``).
Only float32 ops are rewritten.
"""

from __future__ import annotations


def use_fast_math(mod):
    """``mod`` with float32 ``tanh`` and ``sigmoid`` replaced by vectorizable approximations."""
    from tvm import relax, topi
    from tvm.relax.expr_functor import PyExprMutator, mutator

    tanh, sigmoid = (relax.op.tanh(relax.Var("x", relax.TensorType((1,), "float32"))).op,
                     relax.op.sigmoid(relax.Var("x", relax.TensorType((1,), "float32"))).op)

    def fast_sigmoid(x):
        from tvm import te

        e = topi.fast_exp(te.compute(x.shape, lambda *i: -x(*i), name="neg"))
        return te.compute(x.shape, lambda *i: 1.0 / (1.0 + e(*i)), name="sigmoid")

    @mutator
    class _FastMath(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call, relax.Call) or str(getattr(call.ty, "dtype", "")) != "float32":
                return call
            if call.op.same_as(tanh):
                return self.builder_.call_te(topi.fast_tanh, call.args[0], primfunc_name_hint="fast_tanh")
            if call.op.same_as(sigmoid):
                return self.builder_.call_te(fast_sigmoid, call.args[0], primfunc_name_hint="fast_sigmoid")
            return call

    rewriter = _FastMath(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()

"""The quantization scheme and float-model preparation that the Cortex-M C kernels need.

TFLite-Micro-style integers: int8 symmetric per-channel weights, int8 asymmetric
activations, int32 biases. Every op of :data:`CORTEX_M_OPS` runs as an integer kernel
(:mod:`presso.backends.mcu.lower`), so nothing stays in float: a microcontroller without a
float unit (or with a slow one) must not fall back to float math between kernels.
Elementwise float functions (Sigmoid, HardSwish, Tanh, Gelu, Erf, Exp, Sqrt, …) between a
DQ and a Q become exact 256-entry int8 lookup tables, so they are quantized as units.
"""

from __future__ import annotations

from ...passes.quant.scheme import PASS_THROUGH_OPS, QuantScheme, TensorScheme

# Ops with an integer kernel (compute ops and lookup tables); pass-through ops (Reshape,
# Transpose, MaxPool, Gather of a constant table…) keep their input's quantization.
CORTEX_M_OPS = (
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Concat", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Gelu", "Erf", "Exp", "Sqrt", "Neg", "Abs", "Elu", "Softmax", "LayerNormalization",
    "ReduceMean", "Gather", "GlobalMaxPool", "LRN",
)

# LUT functions: Q(f(DQ(x))) for every int8 x, computed at compile time.
CORTEX_M_SCHEME = QuantScheme(
    weights=TensorScheme("int8", symmetric=True, per_channel=True),
    activations=TensorScheme("int8", symmetric=False),
    bias_dtype="int32",
    ops=CORTEX_M_OPS,
    # Add/Mul beside normalisation statistics have integer kernels too: no float fallback
    float_math_guard=False,
    # an embedding Gather (onehot-to-gather) reads a constant table: quantize it as a compute op
    pass_through=tuple(op for op in PASS_THROUGH_OPS if op != "Gather"),
)

# Run on the float model before Q/DQ placement: fixed shapes (a static arena needs them),
# folded constants and batch norms, and the fused forms the kernels implement as one unit
# (LayerNormalization, Gelu, Softmax, HardSwish; a one-hot MatMul as an embedding Gather).
# HardSigmoid stays one op: it is a lookup table here.
CORTEX_M_PREPARE = (
    "static-shapes,constants-to-initializers,fold-constants,fold-batchnorm,remove-identity,"
    "upgrade-opset{version=17},onehot-to-gather,fuse-layernorm,fuse-gelu,fuse-softmax,remove-expand,"
    "max-to-clip,fuse-hardswish,div-to-mul,fold-constants,eliminate-dead-code"
)

# Run by fold-qdq on the integer form: a Relu/Clip that its Q already saturates disappears.
CORTEX_M_FINISH = "drop-saturated-activations"

"""`QuantScheme`: what gets quantized, to which integer type, and how."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import ml_dtypes
import numpy as np

from ...ir.errors import PipelineError

# (numpy storage dtype, qmin, qmax, ONNX opset that Q/DQ needs for it). 4-bit values are
# stored as ml_dtypes.int4/uint4, which onnx packs two to a byte.
INTEGER_TYPES: dict[str, tuple[np.dtype, int, int, int]] = {
    "int8": (np.dtype(np.int8), -128, 127, 13),
    "uint8": (np.dtype(np.uint8), 0, 255, 13),
    "int16": (np.dtype(np.int16), -32768, 32767, 21),
    "uint16": (np.dtype(np.uint16), 0, 65535, 21),
    "int4": (np.dtype(ml_dtypes.int4), -8, 7, 21),
    "uint4": (np.dtype(ml_dtypes.uint4), 0, 15, 21),
    "int32": (np.dtype(np.int32), -(2**31), 2**31 - 1, 13),
}


def integer_type_of(dtype: np.dtype) -> str:
    """The integer type name ("int8", "uint4", ...) of a numpy storage dtype."""
    for name, (storage, *_rest) in INTEGER_TYPES.items():
        if np.dtype(dtype) == storage:
            return name
    raise PipelineError(f"{np.dtype(dtype)} is not a quantized integer type",
                        hint=f"choose one of {', '.join(INTEGER_TYPES)}")

DEFAULT_QUANTIZED_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Resize", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Relu", "Clip",
)

# Ops that move values without computing new ones: their output keeps the input's scale and
# zero point (no requantization), and they are only quantized when their input already is.
PASS_THROUGH_OPS = (
    "MaxPool", "GlobalMaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
    "Slice", "Gather", "Split", "Identity", "DepthToSpace", "SpaceToDepth", "Expand", "Tile",
)

# Activations that a following Q can absorb (onnxruntime drops Relu/Clip before a Q whose
# zero point is the type's minimum): the producer's output is not quantized separately.
ABSORBED_ACTIVATIONS = ("Relu", "Clip")


@dataclass(frozen=True)
class TensorScheme:
    """How one class of tensors (weights or activations) is quantized."""

    dtype: str = "int8"
    symmetric: bool = True
    per_channel: bool = False
    axis: int | None = None  # None: the op's natural channel axis (e.g. 0 for Conv weights)
    reduce_range: bool = False  # one bit less (7-bit int8 weights: no u8·s8 overflow without VNNI)

    def __post_init__(self):
        if self.dtype not in INTEGER_TYPES:
            raise PipelineError(f"unknown integer type '{self.dtype}'",
                                hint=f"choose one of {', '.join(INTEGER_TYPES)}")

    @property
    def storage(self) -> np.dtype:
        return INTEGER_TYPES[self.dtype][0]

    @property
    def qrange(self) -> tuple[int, int]:
        _, lo, hi, _ = INTEGER_TYPES[self.dtype]
        return lo, hi

    @property
    def min_opset(self) -> int:
        return INTEGER_TYPES[self.dtype][3]


@dataclass(frozen=True)
class QuantScheme:
    """Weights and activations schemes, which ops are quantized, and what stays float.

    ``exclude`` holds node or tensor names, or regular expressions (``re.fullmatch``), that
    stay in float. ``concat_shared`` gives a Concat's inputs and output one scale (TFLite and
    most NPUs require it; onnxruntime's QLinearConcat requantizes, so it does not).
    ``pass_through`` names the ops that keep their input's quantization (see
    :data:`PASS_THROUGH_OPS`): when their input is quantized, their output shares its scale.
    ``absorb_activations``: a Relu/Clip right after a quantized op gets no Q/DQ of its own
    (onnxruntime's CPU kernels fuse it); NPUs that validate every op as a Q/DQ unit (QNN) need
    it off. ``float_math_guard``: Add/Mul beside normalisation statistics stay float (right for
    CPUs, where they buy no integer kernel; off for NPUs that run nothing in float).
    """

    weights: TensorScheme = field(default_factory=lambda: TensorScheme("int8", symmetric=True, per_channel=True))
    activations: TensorScheme = field(default_factory=lambda: TensorScheme("uint8", symmetric=False))
    bias_dtype: str = "int32"
    ops: tuple[str, ...] = DEFAULT_QUANTIZED_OPS
    exclude: tuple[str, ...] = ()
    concat_shared: bool = False
    pass_through: tuple[str, ...] = PASS_THROUGH_OPS
    absorb_activations: bool = True
    float_math_guard: bool = True

    @property
    def min_opset(self) -> int:
        needed = max(self.weights.min_opset, self.activations.min_opset)
        return max(needed, 13)

    def excludes(self, *names: str) -> bool:
        """True if any of ``names`` (node or tensor names) matches an exclusion."""
        for pattern in self.exclude:
            for name in names:
                if name == pattern or re.fullmatch(pattern, name):
                    return True
        return False

    def with_(self, **changes) -> QuantScheme:
        return replace(self, **changes)


# Named schemes, usable as ``insert-qdq{scheme=NAME}`` (passes cannot import backends, so the
# targets' schemes are mirrored here by name; a Target in the PassContext wins over these).
NAMED_SCHEMES: dict[str, QuantScheme] = {
    # onnxruntime on x86: uint8 asymmetric activations, int8 symmetric per-channel weights in 7
    # bits, since without AVX-VNNI its fused u8·s8 kernels saturate 16-bit sums (the fake-quant
    # model and the int8 kernels then disagree badly: cosine 0.35 on PP-OCR det at 8 bits)
    "u8s8": QuantScheme(weights=TensorScheme("int8", symmetric=True, per_channel=True, reduce_range=True)),
    # int8 activations and weights (onnxruntime on ARM, most accelerators)
    "s8s8": QuantScheme(activations=TensorScheme("int8", symmetric=False)),
    # TFLite-style: int8 symmetric per-channel weights, int8 asymmetric activations, int32
    # bias, Concat inputs sharing one scale
    "int8-symmetric": QuantScheme(activations=TensorScheme("int8", symmetric=False), concat_shared=True),
    # 16-bit activations with 8-bit weights (Qualcomm-style A16W8): accuracy first
    "a16w8": QuantScheme(activations=TensorScheme("uint16", symmetric=False)),
    # 8-bit activations with 4-bit per-channel weights
    "w4a8": QuantScheme(weights=TensorScheme("int4", symmetric=True, per_channel=True)),
}


def named_scheme(name: str) -> QuantScheme:
    if name not in NAMED_SCHEMES:
        raise PipelineError(f"unknown quantization scheme '{name}'",
                            hint=f"choose one of {', '.join(NAMED_SCHEMES)}")
    return NAMED_SCHEMES[name]

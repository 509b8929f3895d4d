"""`QuantScheme`: what gets quantized, to which integer type, and how."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from ...ir.errors import PipelineError

# (numpy storage dtype, qmin, qmax, ONNX opset that Q/DQ needs for it)
INTEGER_TYPES: dict[str, tuple[np.dtype, int, int, int]] = {
    "int8": (np.dtype(np.int8), -128, 127, 13),
    "uint8": (np.dtype(np.uint8), 0, 255, 13),
    "int16": (np.dtype(np.int16), -32768, 32767, 21),
    "uint16": (np.dtype(np.uint16), 0, 65535, 21),
    "int4": (np.dtype(np.int8), -8, 7, 21),
    "uint4": (np.dtype(np.uint8), 0, 15, 21),
    "int32": (np.dtype(np.int32), -(2**31), 2**31 - 1, 13),
}

DEFAULT_QUANTIZED_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Resize", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Relu", "Clip",
)


@dataclass(frozen=True)
class TensorScheme:
    """How one class of tensors (weights or activations) is quantized."""

    dtype: str = "int8"
    symmetric: bool = True
    per_channel: bool = False
    axis: int | None = None  # None: the op's natural channel axis (e.g. 0 for Conv weights)

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
    stay in float.
    """

    weights: TensorScheme = field(default_factory=lambda: TensorScheme("int8", symmetric=True, per_channel=True))
    activations: TensorScheme = field(default_factory=lambda: TensorScheme("uint8", symmetric=False))
    bias_dtype: str = "int32"
    ops: tuple[str, ...] = DEFAULT_QUANTIZED_OPS
    exclude: tuple[str, ...] = ()

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

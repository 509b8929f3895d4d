"""`Target`: a device profile — ISA, engine, default quantization scheme and legalization."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.errors import BackendError
from ..passes.quant.scheme import QuantScheme, TensorScheme


@dataclass(frozen=True)
class Target:
    """What a device needs from a compiled model.

    ``legalize`` is pipeline text that every backend runs before lowering (shape
    specialisation, folding, opset upgrades the engine needs). ``scheme`` is the default
    quantization scheme for the device.
    """

    name: str
    device: str  # cpu, cuda, npu, mcu
    isa: str | None = None
    features: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("onnxruntime",)
    scheme: QuantScheme = field(default_factory=QuantScheme)
    legalize: str = "constants-to-initializers,fold-constants,remove-identity,eliminate-dead-code"
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    tvm_target: dict[str, Any] | None = None
    description: str = ""
    # int8 forms of a quantized model that the onnxruntime backend times on the host and picks
    # from: "qdq-u8"/"qdq-s8"/"qoperator-u8"…, optionally "+divmul" (backends/onnxruntime/int8_form.py).
    int8_forms: tuple[str, ...] = ()


_TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    _TARGETS[target.name] = target
    return target


def get_target(name: str | Target) -> Target:
    if isinstance(name, Target):
        return name
    if name not in _TARGETS:
        raise BackendError(f"unknown target '{name}'", hint="valid targets: " + ", ".join(sorted(_TARGETS)))
    return _TARGETS[name]


def available_targets() -> dict[str, Target]:
    return dict(sorted(_TARGETS.items()))


# TFLite-style: int8 symmetric per-channel weights, int8 asymmetric activations, int32 bias.
INT8_SYMMETRIC = QuantScheme(
    weights=TensorScheme("int8", symmetric=True, per_channel=True),
    activations=TensorScheme("int8", symmetric=False),
)

# cpu-x86 defaults, measured with onnxruntime 1.32 on an AVX2 (no VNNI) EPYC, 1 thread, PP-OCRv4
# det at 320×320 (`presso bench`, interleaved): int8 activations run 1.5–1.8× slower than uint8
# (MLAS's u8s8 path); per-tensor weights are no faster than per-channel; keeping elementwise
# ops in float (Conv-only quantization) is slower than quantizing them (≈1.0× vs 0.86–0.9× float);
# QOperator and QDQ forms run the same fused kernels; a Div by a constant between Q/DQ stays in
# float, and rewriting it as an int8 Mul ("+divmul") took det from ≈0.92× to ≈0.84× float.
register_target(Target(
    name="cpu-x86", device="cpu", isa="x86_64", features=("avx2",), backends=("onnxruntime", "tvm"),
    # 7-bit weights: without AVX-VNNI, onnxruntime's u8·s8 kernels saturate 16-bit sums; with
    # them, magika agrees with float on 97.3% of 300 real files (96.0% without) and PP-OCR cls
    # on 70% vs 69% of rendered images, under ORT's fused int8 kernels.
    scheme=QuantScheme(weights=TensorScheme("int8", symmetric=True, per_channel=True, reduce_range=True),
                       activations=TensorScheme("uint8", symmetric=False)),
    int8_forms=("qdq-u8", "qdq-s8", "qoperator-u8", "qdq-u8+divmul"),
    tvm_target={"kind": "llvm", "mcpu": "core-avx2"},
    description="x86-64 CPU (onnxruntime CPU execution provider, or TVM llvm)",
))
register_target(Target(
    name="cpu-arm64", device="cpu", isa="aarch64", features=("neon",), backends=("onnxruntime", "tvm"),
    scheme=INT8_SYMMETRIC,
    int8_forms=("qdq-s8", "qdq-u8", "qdq-s8+divmul"),  # timed only when compiling on an aarch64 host
    tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    description="64-bit ARM CPU (onnxruntime, or TVM llvm cross-compiled for aarch64)",
))
register_target(Target(
    name="int8-symmetric", device="cpu", backends=("onnxruntime",), scheme=INT8_SYMMETRIC,
    description="TFLite-style int8 profile (symmetric per-channel int8 weights, int8 activations, "
                "int32 bias) that microcontroller and NPU targets build on",
))
register_target(Target(
    name="cuda", device="cuda", backends=("onnxruntime", "tvm"), scheme=INT8_SYMMETRIC,
    ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    tvm_target={"kind": "cuda"},
    description="NVIDIA GPU (onnxruntime CUDA execution provider, or TVM cuda)",
))

"""`Target`: a device profile — ISA, engine, default quantization scheme and legalization."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.errors import BackendError
from ..passes.quant.scheme import DEFAULT_QUANTIZED_OPS, PASS_THROUGH_OPS, QuantScheme, TensorScheme


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
    # Pipeline run on the float model before quantization (``presso.quantize``, ``presso opt
    # --target``): rewrites the engine needs to see before Q/DQ placement (e.g. the QNN HTP's).
    prepare: str = ""
    # Pipeline ``fold-qdq`` runs on the integer form for this target (engine-specific cleanups).
    finish: str = ""
    # Named scheme variants (``scheme="a16w8"``) that replace the default for this target.
    variants: tuple[tuple[str, QuantScheme], ...] = ()
    static_shapes: bool = False  # the engine runs no dynamic shapes: fix them before compiling
    install_hint: str | None = None  # what to install when the engine's package is missing

    def variant(self, name: str) -> QuantScheme | None:
        """The target's own version of a named scheme, if it has one."""
        return dict(self.variants).get(name)


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
# Qualcomm Hexagon NPU through onnxruntime-qnn's QNN execution provider (HTP backend; on x86
# the HTP is simulated, graph preparation is real). Every op runs as a quantized unit: uint8
# asymmetric activations, symmetric int8 per-channel weights, int32 biases, nothing left in
# float (QNN fails graph finalization on a Conv whose float output feeds a Relu): a Relu/Clip
# after a quantized op is absorbed by its Q, and `finish` (drop-saturated-activations) removes it.
_QNN_OPS = DEFAULT_QUANTIZED_OPS + (
    "Div", "Sub", "Softmax", "HardSwish", "Tanh", "Gelu", "LayerNormalization", "Sqrt", "ReduceMean",
    "ReduceSum", "ReduceMax", "ReduceMin", "Exp", "Max", "Min", "Pad", "GlobalMaxPool", "Pow", "Reciprocal",
    "Neg", "Abs", "Erf", "Elu", "PRelu", "Log", "InstanceNormalization", "Gather", "ArgMax",
)
QNN_HTP_SCHEME = QuantScheme(
    weights=TensorScheme("int8", symmetric=True, per_channel=True),
    activations=TensorScheme("uint8", symmetric=False),
    ops=_QNN_OPS, float_math_guard=False,
    # an embedding Gather (onehot-to-gather) reads a constant table: quantize it as a compute op
    pass_through=tuple(op for op in PASS_THROUGH_OPS if op != "Gather"),
)
register_target(Target(
    name="qnn-htp", device="npu", isa="hexagon", backends=("onnxruntime",), scheme=QNN_HTP_SCHEME,
    variants=(("a16w8", QNN_HTP_SCHEME.with_(activations=TensorScheme("uint16", symmetric=False))),),
    prepare=("static-shapes,constants-to-initializers,fold-constants,fold-batchnorm,fold-affine,remove-identity,"
             "upgrade-opset{version=17},"
             "onehot-to-gather,fuse-layernorm,fuse-gelu,fuse-softmax,remove-expand,max-to-clip,fuse-hardswish,"
             "expand-hardsigmoid,div-to-mul,fold-constants,eliminate-dead-code"),
    finish="drop-saturated-activations,share-table-qparams",
    legalize="constants-to-initializers,remove-identity,drop-saturated-activations,share-table-qparams,"
             "eliminate-dead-code",
    ort_providers=("QNNExecutionProvider",),
    static_shapes=True,
    install_hint='pip install "presso[npu]" (or pip install onnxruntime-qnn==2.7.0)',
    description="Qualcomm Hexagon NPU (onnxruntime-qnn's QNN execution provider, HTP backend, CPU "
                "fallback off; the artifact is an EPContext model with the compiled context binary)",
))
register_target(Target(
    name="cuda", device="cuda", backends=("onnxruntime", "tvm"), scheme=INT8_SYMMETRIC,
    ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    tvm_target={"kind": "cuda"},
    description="NVIDIA GPU (onnxruntime CUDA execution provider, or TVM cuda)",
))
# Arm Cortex-M microcontrollers: the model becomes a self-contained C library (integer kernels,
# one static arena, const weights) built with arm-none-eabi-gcc and run on an emulated MPS2/MPS3
# board in qemu-system-arm (presso/backends/mcu; the boards and memory maps are in boards.py).
from .mcu.scheme import CORTEX_M_FINISH, CORTEX_M_PREPARE, CORTEX_M_SCHEME  # noqa: E402

for _name, _isa, _features, _cpu, _board in (
    ("cortex-m4", "armv7e-m", ("fpv4-sp", "dsp"), "Cortex-M4: FPv4 single-precision FPU, DSP", "mps2-an386"),
    ("cortex-m7", "armv7e-m", ("fpv5-dp", "dsp"), "Cortex-M7: FPv5 double-precision FPU, DSP", "mps2-an500"),
    ("cortex-m55", "armv8.1-m.main", ("fpv5-dp", "dsp", "helium"),
     "Cortex-M55: FPv5 double-precision FPU, DSP, Helium (MVE)", "mps3-an547"),
):
    register_target(Target(
        name=_name, device="mcu", isa=_isa, features=_features, backends=("tvm",), scheme=CORTEX_M_SCHEME,
        prepare=CORTEX_M_PREPARE, finish=CORTEX_M_FINISH, static_shapes=True,
        tvm_target={"kind": "c", "mcpu": _name},
        install_hint="apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm",
        description=f"Arm {_cpu}; int8 C library with one static arena, emulated on QEMU -M {_board}",
    ))

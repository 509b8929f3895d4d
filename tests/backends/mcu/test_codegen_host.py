"""Generated C, built with the host gcc (and arm-none-eabi-gcc when present) and run against
onnxruntime on the same Q/DQ model.

Three checks per model: the C equals the integer emulator (:mod:`presso.backends.mcu.emulate`)
bit for bit; each op, fed onnxruntime's own inputs, is within one quantization step of
onnxruntime's output; and for shallow models the end-to-end outputs are within one step too
(in a deep network one-step differences compound: two onnxruntime execution modes of PP-OCR
cls differ by several steps on some images).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mcu_host import GCC, build, run
from mcu_models import (calibration, conv_net, embed_net, index_calibration, lrn_net, misc_net, mlp, ort_int8,
                        per_op_steps, quantize, random_conv_chain)

from presso.backends.mcu.codegen import generate_c_library
from presso.backends.mcu.emulate import run_program
from presso.backends.mcu.lower import lower
from presso.backends.mcu.tvm_kernels import tvm_available
from presso.ir import BackendError

pytestmark = pytest.mark.skipif(GCC is None, reason="no host gcc to build the generated C")
ARM_GCC = shutil.which("arm-none-eabi-gcc")


def _check(qmodel, lib, exe, feeds) -> tuple[list[int], dict[str, int]]:
    """End-to-end max steps per output vs onnxruntime, and per-op max steps; asserts that the
    C program equals the integer emulator on every sample."""
    program = lower(qmodel)
    ins, refs = zip(*[ort_int8(qmodel, program, feed) for feed in feeds], strict=True)
    got = run(exe, lib, list(ins))
    for sample_in, sample_out in zip(ins, got, strict=True):
        emulated = run_program(program, sample_in)
        for name, value in zip(program.outputs, sample_out, strict=True):
            np.testing.assert_array_equal(value, emulated[name].reshape(value.shape))
    steps = [max(int(np.abs(g[k].astype(int) - r[k].astype(int)).max()) for g, r in zip(got, refs, strict=True))
             for k in range(len(lib.outputs))]
    per_op: dict[str, int] = {}
    for feed in feeds[:3]:
        for kind, value in per_op_steps(qmodel, program, feed).items():
            per_op[kind] = max(per_op.get(kind, 0), value)
    return steps, per_op


@pytest.mark.parametrize("build_model", [conv_net, mlp, misc_net, lrn_net])
def test_synthetic_models_match_onnxruntime(build_model, tmp_path):
    f = build_model()
    q = quantize(f, calibration(f))
    lib = generate_c_library(q, kernels="c")
    exe = build(lib, tmp_path)
    steps, per_op = _check(q, lib, exe, calibration(f, 12, seed=1))
    assert max(steps) <= 1 and max(per_op.values()) <= 1, (steps, per_op)
    assert lib.arena_lower_bound <= lib.arena_bytes <= 1.05 * lib.arena_lower_bound
    assert set(lib.kernels.values()) == {"c"}
    header = lib.sources["model.h"]
    assert "PRESSO_ARENA_SIZE" in header
    if len(lib.inputs) == 1:
        assert "int presso_model_run(const int8_t *input, int8_t *output);" in header
        assert f"#define PRESSO_INPUT_SIZE {lib.inputs[0].size}" in header
        assert "#define PRESSO_OUTPUT_ZERO_POINT" in header and "#define PRESSO_INPUT_SCALE" in header
    else:
        assert "const int8_t *input0, const int8_t *input1, int8_t *output0, int8_t *output1" in header
        assert "PRESSO_OUTPUT1_ZERO_POINT" in header and "PRESSO_INPUT0_SIZE" in header
    source = lib.sources["model.c"]
    assert "float" not in source and "double" not in source and "malloc" not in source and "stdio" not in source


def test_index_input_embedding_and_layernorm(tmp_path):
    f = embed_net()
    q = quantize(f, index_calibration())
    lib = generate_c_library(q, kernels="c")
    assert lib.inputs[0].dtype == "int32" and lib.inputs[0].nbytes == 48
    assert "int presso_model_run(const int32_t *input, int8_t *output);" in lib.sources["model.h"]
    assert {"Gather", "LayerNormalization"} <= set(lib.kernels)
    exe = build(lib, tmp_path)
    steps, per_op = _check(q, lib, exe, index_calibration(12, seed=1))
    assert max(steps) <= 1 and max(per_op.values()) <= 1, (steps, per_op)


def test_digits_cnn_matches_onnxruntime(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[3] / "benchmarks"))
    from training import cnn, digits

    (x, _), (x_test, _) = digits()
    f = cnn()
    q = quantize(f, [{"x": x[i:i + 1]} for i in range(48)])
    lib = generate_c_library(q, kernels="c")
    exe = build(lib, tmp_path)
    steps, per_op = _check(q, lib, exe, [{"x": x_test[i:i + 1]} for i in range(8)])
    assert max(steps) <= 1 and max(per_op.values()) <= 1, (steps, per_op)
    assert lib.arena_bytes <= 1.05 * lib.arena_lower_bound


@pytest.mark.skipif(not tvm_available(), reason="Apache TVM is not installed")
def test_tvm_kernels_compute_the_same_integers(tmp_path):
    f = conv_net()
    q = quantize(f, calibration(f))
    with_c = generate_c_library(q, kernels="c")
    with_tvm = generate_c_library(q, kernels="tvm")
    assert with_tvm.kernels["Conv"] == "tvm" and with_tvm.kernels["Gemm/MatMul"] == "tvm", with_tvm.notes
    assert "presso_tvm_conv" in with_tvm.sources["model.c"] and "TVM" not in with_tvm.sources["model.h"]
    # the default: TVM for the unpadded (1×1) convs and the Gemm, C for the padded convs
    mixed = generate_c_library(q)
    assert mixed.kernels["Conv"] == "tvm+c" and mixed.kernels["Gemm/MatMul"] == "tvm", mixed.kernels
    program = lower(q)
    ins = [ort_int8(q, program, feed)[0] for feed in calibration(f, 6, seed=2)]
    a = run(build(with_c, tmp_path / "c"), with_c, ins)
    for lib, folder in ((with_tvm, "tvm"), (mixed, "auto")):
        b = run(build(lib, tmp_path / folder), lib, ins)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x[0], y[0])


@pytest.mark.parametrize("seed", [2, 4])
def test_random_convolutions_are_exact(seed, tmp_path):
    """Random kernel sizes, strides, asymmetric pads, dilations and groups: the C (Presso's
    kernels and TVM's) equals the emulator, and every op equals onnxruntime's within a step
    (30 seeds checked while writing this; two stay in the suite)."""
    f = random_conv_chain(seed)
    q = quantize(f, calibration(f, 12))
    program = lower(q)
    feeds = calibration(f, 3, seed=5)
    ins = [ort_int8(q, program, feed)[0] for feed in feeds]
    for kernels in ("c", "tvm") if tvm_available() else ("c",):
        lib = generate_c_library(q, kernels=kernels)
        got = run(build(lib, tmp_path / kernels), lib, ins)
        for sample_in, sample_out in zip(ins, got, strict=True):
            want = run_program(program, sample_in)[program.outputs[0]]
            np.testing.assert_array_equal(sample_out[0], want.reshape(sample_out[0].shape))
    assert max(per_op_steps(q, program, feeds[0]).values()) <= 1


@pytest.mark.skipif(ARM_GCC is None, reason="arm-none-eabi-gcc is not installed")
@pytest.mark.parametrize("kernels", ["c", "tvm"])
def test_cross_compiles_warning_free_without_float(kernels, tmp_path):
    if kernels == "tvm" and not tvm_available():
        pytest.skip("Apache TVM is not installed")
    f = conv_net()
    lib = generate_c_library(quantize(f, calibration(f)), kernels=kernels)
    for name, text in lib.sources.items():
        (tmp_path / name).write_text(text)
    obj = tmp_path / "model.o"
    proc = subprocess.run([ARM_GCC, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-mcpu=cortex-m4", "-mthumb",
                           "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-c", str(tmp_path / "model.c"), "-o", str(obj)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    disasm = subprocess.run([shutil.which("arm-none-eabi-objdump") or "arm-none-eabi-objdump", "-d", str(obj)],
                            capture_output=True, text=True, check=True).stdout
    float_ops = [line for line in disasm.splitlines() if "\tv" in line and any(
        op in line for op in ("vmul", "vadd", "vcvt", "vdiv", "vfma"))]
    assert not float_ops, float_ops[:5]


def test_float_model_gives_one_clear_error():
    with pytest.raises(BackendError, match="quantize"):
        generate_c_library(conv_net())


def test_ppocr_cls_matches_onnxruntime_per_op(tmp_path):
    from presso.ir import load
    from presso.tools import zoo

    x, _ = zoo.ppocr_cls_inputs(40)
    f = load(zoo.ppocr_cls_model())
    name = f.inputs[0].name
    q = quantize(f, [{name: x[i:i + 1]} for i in range(32)])
    lib = generate_c_library(q, kernels="c")
    exe = build(lib, tmp_path)
    steps, per_op = _check(q, lib, exe, [{name: x[i:i + 1]} for i in range(32, 34)])
    assert max(per_op.values()) <= 1, per_op
    assert lib.arena_bytes <= 1.05 * lib.arena_lower_bound


@pytest.mark.slow
@pytest.mark.parametrize("which", ["magika", "shufflenet", "squeezenet"])
def test_real_models_match_onnxruntime_per_op(which, tmp_path):
    import presso
    from presso.ir import load
    from presso.tools import zoo

    if which == "magika":
        x, _ = zoo.magika_dataset(24)
        f = load(zoo.magika_model())
    else:
        f = load(zoo.light_model(which))
        x = np.random.default_rng(0).standard_normal((10, 3, 224, 224)).astype(np.float32)
    name = f.inputs[0].name
    q = presso.quantize(f, [{name: x[i:i + 1]} for i in range(len(x) - 2)], target="cortex-m4", progress=False)
    lib = generate_c_library(q, kernels="c")
    exe = build(lib, tmp_path)
    steps, per_op = _check(q, lib, exe, [{name: x[i:i + 1]} for i in range(len(x) - 2, len(x))])
    assert max(per_op.values()) <= 1, per_op
    assert lib.arena_bytes <= 1.05 * lib.arena_lower_bound

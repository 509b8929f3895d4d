"""Cortex-M artifacts end to end: quantize for the target, compile (generated C), build, run in
QEMU on all three boards, compare with onnxruntime on the same Q/DQ model; the folder, the
command line (compile, inspect, bench) and every bad input of the issue."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import presso
from presso.backends import compile, load_artifact
from presso.backends.mcu import toolchain
from presso.ir import evaluate
from presso.ir.errors import BackendError, UnsupportedOpError
from presso.tools.main import main

sys.path.insert(0, str(Path(__file__).parent))
from board_models import calibration, small_cnn, wide_conv  # noqa: E402

AVAILABLE, WHY = toolchain.available()
needs_toolchain = pytest.mark.skipif(not AVAILABLE, reason=f"Cortex-M toolchain: {WHY}")
pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install 'presso[tvm]')")


@pytest.fixture(scope="module")
def quantized():
    return presso.quantize(presso.load(small_cnn()), calibration(16), target="cortex-m4", progress=False)


@pytest.fixture(scope="module")
def samples():
    return np.concatenate([f["x"] for f in calibration(6, seed=9)])


def steps(artifact, got: dict, reference: dict) -> int:
    spec = artifact.manifest["outputs"][0]
    return int(np.rint(np.abs(got[spec["name"]] - reference[spec["name"]]).max() / spec["scale"]))


def test_quantize_for_a_cortex_m_target_uses_its_scheme(quantized):
    """int8 symmetric per-channel weights, int8 activations, int32 biases."""
    import onnx_graphsurgeon as gs

    constant = [n for n in quantized.nodes("DequantizeLinear") if isinstance(n.inputs[0], gs.Constant)]
    by_dtype = {}
    for node in constant:
        by_dtype.setdefault(node.inputs[0].values.dtype.name, []).append(node)
    assert set(by_dtype) == {"int8", "int32"}
    conv_weights = [n for n in by_dtype["int8"] if n.inputs[0].values.ndim == 4]
    assert len(conv_weights) == 2
    for node in conv_weights:
        channels = node.inputs[0].values.shape[0]
        assert node.inputs[1].values.shape == (channels,)  # per output channel
        assert len(node.inputs) < 3 or not node.inputs[2].values.any()  # symmetric
    assert len(by_dtype["int32"]) == 3  # the biases of conv1, conv2, fc
    activations = [n for n in quantized.nodes("QuantizeLinear") if not isinstance(n.inputs[0], gs.Constant)]
    assert activations and all(n.inputs[2].values.dtype == np.int8 for n in activations)


@needs_toolchain
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7", "cortex-m55"])
def test_compiled_model_runs_on_the_board_like_onnxruntime(quantized, samples, target, tmp_path):
    artifact = compile(quantized, target=target, backend="tvm")
    manifest = artifact.manifest
    assert manifest["device"] == "mcu" and manifest["board"]["machine"] == {
        "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500", "cortex-m55": "mps3-an547"}[target]
    assert manifest["verification"]["max_diff_steps"] <= 1
    memory = manifest["memory"]
    assert memory["arena_bytes"] <= 1.05 * memory["arena_lower_bound"]
    assert memory["flash_bytes"] >= memory["weight_bytes"] > 0 and memory["peak_stack_bytes"] > 0
    assert manifest["instructions_per_inference"] > 1000

    got = artifact.run({"x": samples})  # six samples in one QEMU start
    reference = {"p": np.concatenate([evaluate(quantized, {"x": samples[i:i + 1]})["p"] for i in range(len(samples))])}
    assert got["p"].shape == (6, 5) and got["p"].dtype == np.float32
    assert steps(artifact, got, reference) <= 1

    folder = artifact.save(tmp_path / "artifact")
    for name in ("model.c", "model.h", "Makefile", "harness/main.c", "harness/startup.c", "model.elf",
                 "manifest.json", f"{manifest['board']['machine']}.ld"):
        assert (folder / name).is_file(), name
    assert not (folder / "build").exists()
    again = load_artifact(folder).run({"x": samples})
    np.testing.assert_array_equal(again["p"], got["p"])


@needs_toolchain
def test_command_line_compile_inspect_and_bench(quantized, tmp_path, capsys):
    model = tmp_path / "q.onnx"
    presso.save(quantized, model)
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.concatenate([f["x"] for f in calibration(4, seed=5)]))
    out = tmp_path / "build"
    assert main(["compile", str(model), "--backend", "tvm", "--target", "cortex-m4", "-o", str(out),
                 "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "mps2-an386" in printed and "instructions per inference" in printed and "liveness lower bound" in printed
    assert "on 1 real sample" in printed
    assert main(["inspect", str(model), "--target", "cortex-m7"]) == 0
    printed = capsys.readouterr().out
    assert "every node has an integer kernel" in printed and "the model fits the cortex-m7 board" in printed
    assert main(["bench", str(model), str(out), "--data", str(data), "--runs", "1", "--warmup", "0",
                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "instructions per inference" in printed and "flash" in printed and "peak stack" in printed
    assert "quantization step(s) of the outputs" in printed


def test_list_targets_shows_the_boards(capsys):
    assert main(["compile", "--list-targets"]) == 0
    printed = capsys.readouterr().out
    for target, board, feature in (("cortex-m4", "mps2-an386", "DSP"), ("cortex-m7", "mps2-an500", "double"),
                                   ("cortex-m55", "mps3-an547", "Helium")):
        line = next(line for line in printed.splitlines() if line.startswith(target + " "))
        assert board in line and feature in line and "tvm" in line


# ---- bad input: one clear error, nothing written -----------------------------------------------
def _refused(tmp_path, capsys, model_path, target="cortex-m4", *extra) -> str:
    out = tmp_path / "never"
    assert main(["compile", str(model_path), "--backend", "tvm", "--target", target, "-o", str(out), *extra]) == 1
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


@needs_toolchain
def test_float_model_is_refused(tmp_path, capsys):
    path = tmp_path / "float.onnx"
    onnx.save(small_cnn(), path)
    err = _refused(tmp_path, capsys, path)
    assert "this one is float" in err and 'presso.quantize(model, data, target="cortex-m4")' in err
    assert main(["inspect", str(path), "--target", "cortex-m4"]) == 0
    printed = capsys.readouterr().out
    assert "float model: quantize it first" in printed and "the model fits the cortex-m4 board (estimate" in printed


@needs_toolchain
def test_unsupported_op_is_named(tmp_path, capsys):
    proto = small_cnn()
    graph = proto.graph
    graph.node[-1].output[0] = "p0"  # Softmax → Cos: an op without an integer kernel
    graph.node.append(helper.make_node("Cos", ["p0"], ["p"], name="cosine"))
    model = presso.quantize(presso.load(proto), calibration(4), target="cortex-m4", progress=False)
    with pytest.raises(UnsupportedOpError, match="cosine"):
        compile(model, target="cortex-m4", backend="tvm")
    path = tmp_path / "cos.onnx"
    presso.save(model, path)
    assert "cosine (Cos)" in _refused(tmp_path, capsys, path)
    assert main(["inspect", str(path), "--target", "cortex-m4"]) == 0
    assert "cosine" in capsys.readouterr().out


@needs_toolchain
def test_model_too_big_for_the_board_is_refused(tmp_path, capsys):
    # 1×8×768×768 int8 activations: 4.5 MiB, more than the 4 MiB SRAM of every board
    rng = np.random.default_rng(0)
    sample = {"x": rng.standard_normal((1, 1, 768, 768)).astype(np.float32)}
    model = presso.quantize(presso.load(wide_conv(768)), [sample],
                            target="cortex-m4", progress=False, method="minmax", bias_correction=False)
    path = tmp_path / "wide.onnx"
    presso.save(model, path)
    err = _refused(tmp_path, capsys, path, "cortex-m55")
    assert "does not fit the cortex-m55 board" in err and "arena" in err
    assert main(["inspect", str(path), "--target", "cortex-m4"]) == 0
    assert "does NOT fit" in capsys.readouterr().out


def test_missing_toolchain_is_refused_before_any_work(quantized, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BackendError, match="apt-get install gcc-arm-none-eabi"):
        compile(quantized, target="cortex-m7", backend="tvm")
    path = tmp_path / "q.onnx"
    presso.save(quantized, path)
    assert "libnewlib-arm-none-eabi" in _refused(tmp_path, capsys, path, "cortex-m7")

"""TVM backend beyond x86: aarch64 under qemu, CUDA builds, no tuning for a foreign target.

Tuning itself: test_tvm_tune.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tvm_graphs import assert_close, conv_model, reference

from presso.backends import compile, load_artifact
from presso.ir.errors import BackendError

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install 'presso[tvm]')")

from presso.backends.tvm import qemu  # noqa: E402  (needs tvm)


def _x():
    return np.random.default_rng(3).standard_normal((1, 3, 10, 13)).astype(np.float32)


def test_arm64_runs_under_qemu_and_matches(tmp_path):
    ok, why = qemu.available()
    if not ok:
        pytest.skip(why)
    model = conv_model()
    artifact = compile(model, "cpu-arm64", "tvm", output=tmp_path / "arm")
    assert artifact.manifest["runs_on"] == "qemu-aarch64"
    with open(tmp_path / "arm" / "model.so", "rb") as handle:
        header = handle.read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    got = load_artifact(tmp_path / "arm").run({"x": _x()})["y"]
    assert_close(got, reference(model, {"x": _x()})[0])


def test_arm64_without_cross_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BackendError, match="g\\+\\+-aarch64-linux-gnu"):
        compile(conv_model(), "cpu-arm64", "tvm", output=tmp_path / "arm")


def test_cuda_build_and_run(tmp_path):
    """Builds with dlight GPU schedules (needs nvcc); runs and compares only with a GPU."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: TVM cannot export a CUDA library")
    model = conv_model()
    artifact = compile(model, "cuda", "tvm", output=tmp_path / "gpu")
    assert (tmp_path / "gpu" / "model.so").is_file() and artifact.manifest["runs_on"] == "cuda"
    if not tvm.cuda(0).exist:
        pytest.skip("no NVIDIA GPU here (benchmarks/tvm_cuda.sh runs the real models on one)")
    assert_close(artifact.run({"x": _x()})["y"], reference(model, {"x": _x()})[0])


def test_cannot_tune_a_foreign_target(tmp_path):
    with pytest.raises(BackendError, match="cannot tune"):
        compile(conv_model(), "cpu-arm64", "tvm", output=tmp_path / "arm", tune_trials=4)

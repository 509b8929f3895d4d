"""The qnn-htp target: QNN execution provider sessions, node verdicts, EPContext artifacts.

These tests run onnxruntime-qnn's real graph preparation and its simulated HTP (slow: few
samples). Without the package (the `npu` extra) they skip with the install command, except
the ones that check the error a missing package gives.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from _graphs import init, make_proto, vi
from onnx import helper

import presso
from presso.backends import available_targets, get_target
from presso.backends.onnxruntime import qnn
from presso.ir import BackendError, load
from presso.tools import zoo

needs_qnn = pytest.mark.skipif(not qnn.qnn_available(), reason=f"onnxruntime-qnn is missing: {qnn.INSTALL_HINT}")


def _rejected_model():
    """A quantized model with a Hardmax, an op the QNN EP has no HTP kernel for."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd0"], name="dq_in"),
             helper.make_node("Add", ["xd0", "xd0"], ["a"], name="add"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"], name="q_add"),
             helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["xd"], name="dq_add"),
             helper.make_node("Hardmax", ["xd"], ["h"], name="the_hardmax"),
             helper.make_node("QuantizeLinear", ["h", "s2", "z"], ["hq"], name="q_out"),
             helper.make_node("DequantizeLinear", ["hq", "s2", "z"], ["y"], name="dq_out")]
    inits = [init("s", np.float32(0.05)), init("s2", np.float32(1 / 255)), init("z", np.uint8(128))]
    return load(make_proto(nodes, [vi("x", [1, 8])], [vi("y", [1, 8])], inits, opset=17))


@pytest.fixture(scope="module")
def cls_data():
    x, _ = zoo.ppocr_cls_inputs(6, seed=3)
    return x


@pytest.fixture(scope="module")
def cls_htp(cls_data):
    return presso.quantize(zoo.ppocr_cls_model(), {"x": cls_data[:4]}, target="qnn-htp", method="minmax",
                           progress=False)


def test_target_is_listed_with_its_scheme_and_a16w8():
    target = available_targets()["qnn-htp"]
    assert target.device == "npu" and target.ort_providers == ("QNNExecutionProvider",)
    assert target.scheme.activations.dtype == "uint8" and target.scheme.weights.per_channel
    assert target.variant("a16w8").activations.dtype == "uint16"


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # import fails as if not installed
    monkeypatch.setattr(qnn, "_registered", {})
    with pytest.raises(BackendError, match=r'pip install "presso\[npu\]"'):
        presso.compile(_rejected_model(), target="qnn-htp", backend="onnxruntime")
    assert not list(tmp_path.iterdir())


@needs_qnn
def test_quantized_cls_runs_entirely_on_the_htp(cls_htp):
    support = qnn.qnn_support(cls_htp.to_proto())
    assert support.ok and support.fraction == 1.0 and support.total > 100
    assert not cls_htp.nodes("Relu", "Clip", "HardSigmoid")  # absorbed by Q / rewritten


@needs_qnn
def test_compile_writes_an_epcontext_artifact_that_runs_again(cls_htp, cls_data, tmp_path):
    artifact = presso.compile(cls_htp, target="qnn-htp", backend="onnxruntime")
    folder = artifact.save(tmp_path / "cls-htp")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["qnn"]["fraction_on_npu"] == 1.0 and manifest["qnn"]["context_binary_bytes"] > 0
    import onnx

    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node]
    assert ops == ["EPContext"]
    loaded = presso.load_artifact(folder)
    feed = {"x": cls_data[4:5]}
    htp = loaded.run(feed)["save_infer_model/scale_0.tmp_1"]
    cpu = presso.evaluate(cls_htp, feed)["save_infer_model/scale_0.tmp_1"]
    assert htp.shape == cpu.shape == (1, 2)
    assert np.abs(htp - cpu).max() < 0.15  # the HTP requantizes differently, within a few steps


def _fully_on_htp(model) -> None:
    support = qnn.qnn_support(model.to_proto())
    assert support.ok and support.fraction == 1.0, support.describe() or support.error


@needs_qnn
def test_magika_runs_fully_on_the_htp():
    x, _ = zoo.magika_dataset(4)
    _fully_on_htp(presso.quantize(zoo.magika_model(), {"bytes": x}, target="qnn-htp", method="minmax",
                                  bias_correction=False, progress=False))


@needs_qnn
@pytest.mark.slow
def test_a16w8_and_det_run_fully_on_the_htp():
    x, _ = zoo.magika_dataset(4)
    _fully_on_htp(presso.quantize(zoo.magika_model(), {"bytes": x}, target="qnn-htp", scheme="a16w8",
                                  method="minmax", bias_correction=False, progress=False))
    det = zoo.ppocr_det_inputs(1)
    for scheme in (None, "a16w8"):
        _fully_on_htp(presso.quantize(zoo.ppocr_det_model(), {"x": det}, target="qnn-htp", scheme=scheme,
                                      method="minmax", bias_correction=False, progress=False))


@needs_qnn
def test_rejected_nodes_fail_the_compile_with_qnn_reasons_and_nothing_is_written(tmp_path):
    model = _rejected_model()
    report = qnn.npu_report(model)
    assert [u["name"] for u in report["unsupported"]] == ["the_hardmax"]
    assert "not supported by QNN EP" in report["unsupported"][0]["reason"] and report["fraction_on_npu"] < 1.0
    with pytest.raises(BackendError, match="the_hardmax.*would fall back|would fall back.*the_hardmax"):
        presso.compile(model, target="qnn-htp", backend="onnxruntime")
    artifact = presso.compile(model, target="qnn-htp", backend="onnxruntime", allow_fallback=True)
    assert artifact.manifest["qnn"]["fraction_on_npu"] < 1.0
    folder = artifact.save(tmp_path / "fallback")
    out = presso.load_artifact(folder).run({"x": np.linspace(-3, 3, 8, dtype=np.float32)[None]})
    assert out["y"].shape == (1, 8)


@needs_qnn
def test_a_float_model_is_refused_with_the_quantize_command():
    with pytest.raises(BackendError, match="quantize it first"):
        presso.compile(load(zoo.ppocr_cls_model()), target="qnn-htp", backend="onnxruntime", shapes={"x": [1, 3, 48, 192]})


@needs_qnn
def test_cli_inspect_lists_rejected_nodes_and_compile_fails_cleanly(tmp_path, capsys):
    from presso.tools.main import main

    path = tmp_path / "rejected.onnx"
    presso.save(_rejected_model(), path)
    assert main(["inspect", str(path), "--target", "qnn-htp"]) == 0
    out = capsys.readouterr().out
    assert "not on the NPU: 'the_hardmax' (Hardmax)" in out and "run on the NPU" in out
    assert main(["compile", str(path), "--target", "qnn-htp", "-o", str(tmp_path / "build")]) != 0
    assert "the_hardmax" in capsys.readouterr().err
    assert not (tmp_path / "build" / "manifest.json").exists() and not (tmp_path / "build" / "model.onnx").exists()
    assert main(["compile", str(path), "--target", "qnn-htp", "--allow-fallback", "-o", str(tmp_path / "fb")]) == 0
    assert get_target("qnn-htp").name in (tmp_path / "fb" / "manifest.json").read_text()

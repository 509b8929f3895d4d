"""`presso report`, `presso opt --report`, `presso compile --report` and `presso.report`:
what the report measures (checked against onnxruntime), what it writes, and the errors.
The browser check that the charts render is tests/tools/test_report_browser.py."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import presso
from presso.ir.errors import PressoError
from presso.tools.main import main

pytest.importorskip("plotly", reason="the report needs the `report` extra (plotly)")


def _embedded(html_path) -> dict:
    text = html_path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="presso-report-data">(.*?)</script>', text, re.S)
    assert match, "the report embeds its numbers"
    return json.loads(match.group(1))


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    return path


@pytest.fixture
def quantized(tiny_model_path, calib, tmp_path):
    out = tmp_path / "int8.onnx"
    assert main(["opt", str(tiny_model_path), "-p", "insert-qdq,calibrate{method=minmax},fold-qdq",
                 "--data", str(calib), "-o", str(out), "--no-progress"]) == 0
    return out


def _sqnr(ref: np.ndarray, cand: np.ndarray) -> float:
    ref, cand = ref.astype(np.float64), cand.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - cand) ** 2)))


def _tensor(model_path, name, x, fold_bn=False) -> np.ndarray:
    """``name``'s value for input ``x``, run by onnxruntime directly (the tensor made a graph output)."""
    proto = onnx.load(str(model_path))
    if fold_bn:  # the float model's conv output, as the quantized model computes it: conv then BN
        name = "n"
    proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {"x": x})[0]


def test_report_measures_layers_against_onnxruntime_and_writes_one_offline_file(tiny_model_path, quantized, calib,
                                                                                tmp_path, capsys):
    out = tmp_path / "report.html"
    before_bytes, after_bytes = tiny_model_path.read_bytes(), quantized.read_bytes()
    assert main(["report", str(tiny_model_path), str(quantized), "--data", str(calib), "-o", str(out),
                 "--samples", "8", "--runs", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "1 a8w8" in printed
    assert tiny_model_path.read_bytes() == before_bytes and quantized.read_bytes() == after_bytes

    text = out.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)  # nothing to fetch: it opens offline
    assert text.count("Plotly.newPlot(") == len(re.findall(r'class="presso-chart"', text)) >= 4
    numbers = _embedded(out)
    (conv,) = [layer for layer in numbers["layers"] if layer["op"] == "Conv"]
    assert (conv["precision"], conv["activations"], conv["weights"]) == ("a8w8", "uint8", "int8")
    # The conv's SQNR over the 8 samples, recomputed here: the quantized conv output against the
    # float model's conv+BN output (the quantized model folded BN into the conv).
    data = np.load(calib)["x"]
    ref = np.concatenate([_tensor(tiny_model_path, "c", data[i:i + 1], fold_bn=True) for i in range(8)])
    cand = np.concatenate([_tensor(quantized, "c", data[i:i + 1]) for i in range(8)])
    assert conv["sqnr_db"] == pytest.approx(_sqnr(ref, cand), abs=0.05)
    assert 20 < conv["sqnr_db"] < 60  # int8 rounding: measurable, not exact
    assert conv["sqnr_weights_only_db"] > conv["sqnr_db"]  # rounding the activations too only adds error
    models = {m["name"]: m for m in numbers["bench"]["models"]}
    assert models["before"]["size_bytes"] > 0 and set(models["after"]["latency"]) == {"threads=1"}


def test_report_json_and_python_api_agree_on_the_layers(tiny_model_path, quantized, calib, tmp_path, capsys):
    assert main(["report", str(tiny_model_path), str(quantized), "--data", str(calib), "-o", str(tmp_path / "a.html"),
                 "--runs", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    numbers = presso.report(str(tiny_model_path), str(quantized), str(calib), tmp_path / "b.html", runs=2)
    assert [(r["name"], r["precision"]) for r in printed["layers"]] == [(r["name"], r["precision"])
                                                                       for r in numbers["layers"]]
    assert printed["layers"][0]["sqnr_db"] == pytest.approx(numbers["layers"][0]["sqnr_db"])
    assert (tmp_path / "b.html").stat().st_size > 1_000_000  # plotly.js inlined


def test_opt_report_has_the_pipeline_table_with_times(tiny_model_path, calib, tmp_path, capsys):
    out, report = tmp_path / "int8.onnx", tmp_path / "opt.html"
    assert main(["opt", str(tiny_model_path), "-p", "insert-qdq,calibrate{method=minmax},fold-qdq",
                 "--data", str(calib), "-o", str(out), "--report", str(report), "--report-runs", "2",
                 "--no-progress"]) == 0
    assert f"wrote {report}" in capsys.readouterr().out
    numbers = _embedded(report)
    assert [r["pass"] for r in numbers["pipeline"]] == ["insert-qdq", "calibrate", "fold-qdq"]
    assert all(r["seconds"] >= 0 for r in numbers["pipeline"])
    assert numbers["pipeline"][1]["stats"]["method"] == "minmax"
    assert numbers["title"] == "tiny.onnx → int8.onnx"
    text = report.read_text(encoding="utf-8")
    assert "<h2>Pipeline</h2><table>" in text and "<code>calibrate</code>" in text


def test_compile_report_compares_the_input_with_the_artifact(quantized, calib, tmp_path):
    report = tmp_path / "compile.html"
    assert main(["compile", str(quantized), "--data", str(calib), "-o", str(tmp_path / "build"),
                 "--form-rounds", "2", "--report", str(report), "--report-runs", "2"]) == 0
    numbers = _embedded(report)
    after = {m["name"]: m for m in numbers["bench"]["models"]}["after"]
    assert after["agreement"]["cosine"] > 0.99
    assert after["size_bytes"] == (tmp_path / "build" / "model.onnx").stat().st_size  # what ships
    assert any(layer["precision"].startswith("a8") for layer in numbers["layers"])
    # an artifact folder is a valid AFTER for `presso report` too
    assert main(["report", str(quantized), str(tmp_path / "build"), "--data", str(calib),
                 "-o", str(tmp_path / "again.html"), "--runs", "2"]) == 0


def test_sensitivity_results_are_charted(tiny_model_path, quantized, calib, tmp_path):
    rows = [{"layer": "conv", "drop_quantized_alone": 0.02, "sqnr_quantized_alone": 31.5}]
    numbers = presso.report(str(tiny_model_path), str(quantized), str(calib), tmp_path / "s.html", runs=2,
                            sensitivity=rows)
    assert numbers["sensitivity"] == rows
    assert 'data-chart="sensitivity"' in (tmp_path / "s.html").read_text(encoding="utf-8")


def _other_input_model(path):
    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"], name="relu")], "other",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("case", ["no-data", "missing-data-file", "other-model", "missing-folder", "folder-path"])
def test_bad_input_is_one_clear_error_and_writes_nothing(case, tiny_model_path, quantized, calib, tmp_path, capsys):
    out = tmp_path / "r.html"
    argv = ["report", str(tiny_model_path), str(quantized), "--data", str(calib), "-o", str(out), "--runs", "1"]
    expected = {"no-data": "presso report needs --data", "missing-data-file": "data path does not exist",
                "other-model": "different inputs", "missing-folder": "does not exist",
                "folder-path": "names a folder"}[case]
    if case == "no-data":
        argv = argv[:3] + argv[5:]
    elif case == "missing-data-file":
        argv[4] = str(tmp_path / "nope.npz")
    elif case == "other-model":
        argv[2] = str(_other_input_model(tmp_path / "other.onnx"))
    elif case == "missing-folder":
        out = tmp_path / "no" / "r.html"
        argv[6] = str(out)
    elif case == "folder-path":
        out = tmp_path
        argv[6] = str(out)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("presso report: error:") and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
    assert not [p for p in tmp_path.rglob(".r.html.*")]  # no temporary file left behind


def test_opt_report_without_data_fails_before_the_pipeline_runs(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["opt", str(tiny_model_path), "-p", "fold-batchnorm", "-o", str(out),
                 "--report", str(tmp_path / "r.html")]) == 1
    assert "--report needs --data" in capsys.readouterr().err
    assert not out.exists()


def test_report_path_that_cannot_be_written_fails_before_measuring(tiny_model_path, quantized, calib, tmp_path,
                                                                   monkeypatch):
    def never(*args, **kwargs):  # pragma: no cover - the point is that it is not reached
        raise AssertionError("measured before checking the output path")

    monkeypatch.setattr(sys.modules["presso.report"], "collect", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PressoError, match="does not exist"):
        presso.report(str(tiny_model_path), str(quantized), str(calib), blocker / "r.html")


def test_precision_labels_of_other_schemes(tiny_model_path):
    from presso.report.precision import layer_precisions

    def by_name(model):
        return {p.name: p for p in layer_precisions(model).values()}

    rng = np.random.default_rng(0)
    model = presso.load(tiny_model_path)
    data = {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    a16 = presso.quantize(model, data, scheme="a16w8", method="minmax", progress=False)
    conv = by_name(a16)["conv"]
    assert (conv.label, conv.activations, conv.weights) == ("a16w8", "uint16", "int8")

    weights = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weights])
    dynamic = presso.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    presso.PassManager.parse("quantize-dynamic").run(dynamic, progress=False)
    (integer,) = [p for p in layer_precisions(dynamic).values() if p.op == "MatMulInteger"]
    assert (integer.label, integer.activations, integer.weights) == ("a8w8", "uint8 dynamic", "int8")
    assert by_name(presso.load(tiny_model_path))["conv"].label == "float"


def test_graph_layout_collapses_qdq_and_points_every_edge_forward(quantized):
    from presso.report.layout import layered_layout

    layout = layered_layout(presso.load(quantized))
    assert "QuantizeLinear" not in layout.ops and "DequantizeLinear" not in layout.ops
    assert layout.ops == ["input", "Conv", "Relu", "output"]
    assert layout.edges == [(0, 1), (1, 2), (2, 3)]
    assert all(layout.x[s] < layout.x[t] for s, t in layout.edges)


def test_sensitivity_flag_measures_and_charts_each_layer(tiny_model_path, quantized, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("PRESSO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "s.html"
    assert main(["report", str(tiny_model_path), str(quantized), "--data", str(calib), "-o", str(out),
                 "--runs", "2", "--sensitivity", "--metric", "cosine"]) == 0
    numbers = _embedded(out)
    (row,) = numbers["sensitivity"]
    assert row["layer"] == "conv" and 0 <= row["only_quantized_drop"] < 0.01 and row["only_quantized_sqnr"] > 20
    assert numbers["sensitivity_info"]["metric"] == "cosine"
    assert 'data-chart="sensitivity"' in out.read_text(encoding="utf-8")


def test_names_cannot_break_out_of_the_page(tiny_model_path, tmp_path):
    proto = onnx.load(str(tiny_model_path))
    name = 'conv</script><script>document.title="pwned"</script>'
    proto.graph.node[0].name = name
    model = presso.load(proto)
    data = {"x": np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    quantized = presso.quantize(model, data, method="minmax", progress=False)
    out = tmp_path / "r.html"
    presso.report(model, quantized, data, out, runs=1)
    text = out.read_text(encoding="utf-8")
    assert "</script><script>" not in text
    assert [layer["name"] for layer in _embedded(out)["layers"]] == [name]


def test_unnamed_nodes_get_their_own_rows(tiny_model_path, tmp_path):
    proto = onnx.load(str(tiny_model_path))
    for node in proto.graph.node:
        node.name = ""  # ONNX allows it; exporters do it
    model = presso.load(proto)
    data = {"x": np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    quantized = presso.quantize(model, data, method="minmax", progress=False)
    for node in quantized.graph.nodes:
        node.name = ""  # (onnxruntime refuses repeated names, but not empty ones)
    numbers = presso.report(model, quantized, data, tmp_path / "r.html", runs=1)
    names = numbers["graph"]["names"]
    assert len(set(names)) == len(names)
    (conv,) = numbers["layers"]
    assert conv["op"] == "Conv" and conv["precision"] == "a8w8" and conv["sqnr_db"] > 20


def test_mixed_precision_reasons_appear_per_layer(tiny_model_path, calib, tmp_path):
    model = presso.load(tiny_model_path)
    quantized = model.copy()
    pipeline = presso.PassManager.parse(
        "insert-qdq,calibrate{method=minmax},mixed-precision{max_drop=0,metric=cosine},fold-qdq"
    ).run(quantized, data=str(calib), progress=False)
    numbers = presso.report(model, quantized, str(calib), tmp_path / "r.html", pipeline=pipeline, runs=1)
    (conv,) = numbers["layers"]
    assert conv["precision"] == "float" and conv["reason"].startswith("float (cosine drop over 0.0")
    assert conv["sqnr_db"] is None and conv["exact"]  # back in float: the conv computes what the float one does


def test_a_same_named_tensor_that_means_something_else_is_not_compared(tiny_model_path, quantized, calib, tmp_path):
    """A pass that folds an op into a Conv keeps the Conv's output name for another value; the
    report must not compare the two. Here the float model reads the conv output with a Sigmoid
    (kept), where the compressed one reads it with the Relu."""
    proto = onnx.load(str(tiny_model_path))
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    sigmoid = helper.make_node("Sigmoid", ["c"], ["n"], name="bn")
    proto.graph.node.insert(list(proto.graph.node).index(bn), sigmoid)
    proto.graph.node.remove(bn)
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    numbers = presso.report(str(other), str(quantized), str(calib), tmp_path / "r.html", runs=1)
    (conv,) = [layer for layer in numbers["layers"] if layer["op"] == "Conv"]
    assert conv["sqnr_db"] is None and "computed differently" in conv["not_compared"]


def test_without_plotly_the_report_says_which_extra_to_install(tiny_model_path, quantized, calib, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)  # makes `import plotly.graph_objects` fail
    assert main(["report", str(tiny_model_path), str(quantized), "--data", str(calib),
                 "-o", str(tmp_path / "r.html")]) == 1
    assert "pip install 'presso[report]'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()

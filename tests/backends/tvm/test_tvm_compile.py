"""TVM backend on x86: tiny graphs and magika's model match onnxruntime; artifacts round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm_graphs import assert_close, conv_model, make_model, reference

import presso
from presso.backends import compile, load_artifact
from presso.ir.errors import BackendError

pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install 'presso[tvm]')")


def _run_both(model, feeds, tmp_path, **options):
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "out", **options)
    return artifact, artifact.run(feeds), reference(model, feeds)


@pytest.mark.parametrize("size,kernel,stride,group,cout", [
    ((10, 13), 3, 1, 1, 8),   # width not a multiple of the vector lanes (predicated tile)
    ((16, 16), 3, 2, 1, 12),  # stride 2, 12 channels (rows tile of 4)
    ((9, 24), 1, 1, 1, 7),    # pointwise conv, odd channel count
    ((12, 12), 3, 1, 8, 8),   # depthwise
])
def test_conv_net_matches_onnxruntime(tmp_path, size, kernel, stride, group, cout):
    model = conv_model(cin=8 if group > 1 else 3, cout=cout, size=size, kernel=kernel, stride=stride,
                       pad=kernel // 2, group=group)
    x = np.random.default_rng(1).standard_normal((1, 8 if group > 1 else 3, *size)).astype(np.float32)
    _, got, want = _run_both(model, {"x": x}, tmp_path)
    assert_close(got["y"], want[0])


def test_matmul_and_elementwise_match(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Sigmoid", ["m"], ["s"], name="sig"),
             helper.make_node("Mul", ["m", "s"], ["y"], name="swish"),
             helper.make_node("ReduceMean", ["y"], ["z"], name="mean", keepdims=1, axes=[1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 24])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 16]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, [5, 1])],
                       [numpy_helper.from_array(w, "w")], opset=13)
    x = rng.standard_normal((5, 24)).astype(np.float32)
    _, got, want = _run_both(model, {"x": x}, tmp_path)
    assert list(got) == ["y", "z"]
    assert_close(got["y"], want[0])
    assert_close(got["z"], want[1])


def test_computed_reshape_is_folded_before_import(tmp_path):
    """The magika/PP-OCR cls failure: Reshape's target computed from Shape → fixed by cleanup."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["batch", "zero1"], ["b1"], name="unsq"),
             helper.make_node("Concat", ["b1", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero1"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 12])], inits)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    _, got, want = _run_both(model, {"x": x}, tmp_path, shapes={"x": [2, 3, 4]})
    np.testing.assert_array_equal(got["y"], want[0])


def test_artifact_round_trip(tmp_path):
    model = conv_model()
    x = np.random.default_rng(2).standard_normal((1, 3, 10, 13)).astype(np.float32)
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a")
    first = artifact.run({"x": x})["y"]
    copy = artifact.save(tmp_path / "b")
    for folder in (tmp_path / "a", copy):
        loaded = load_artifact(folder)
        assert loaded.backend == "tvm" and loaded.manifest["target"] == "cpu-x86"
        assert loaded.manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 10, 13]}]
        np.testing.assert_array_equal(loaded.run({"x": x})["y"], first)
    assert (copy / "model.so").is_file()


def test_bad_feeds_are_clear_errors(tmp_path):
    artifact = compile(conv_model(), "cpu-x86", "tvm", output=tmp_path / "a")
    good = np.zeros((1, 3, 10, 13), np.float32)
    with pytest.raises(BackendError, match="missing \\['x'\\]"):
        artifact.run({"input": good})
    with pytest.raises(BackendError, match="dtype float64"):
        artifact.run({"x": good.astype(np.float64)})
    with pytest.raises(BackendError, match="compiled for \\[1, 3, 10, 13\\]"):
        artifact.run({"x": np.zeros((1, 3, 11, 13), np.float32)})


def test_symbolic_batch_compiles_without_shape(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "one"], ["y"], name="add")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
                       [numpy_helper.from_array(np.ones(16, np.float32), "one")])
    artifact = compile(model, "cpu-x86", "tvm", output=tmp_path / "a")
    assert artifact.manifest["inputs"][0]["shape"] == ["batch", 16]
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        np.testing.assert_allclose(artifact.run({"x": x})["y"], np.maximum(x, 0) + 1, rtol=1e-6)


def test_unsupported_op_names_the_node(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Celu", ["r"], ["y"], name="my_celu")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    with pytest.raises(BackendError, match="node 'my_celu' \\(Celu\\)"):
        compile(model, "cpu-x86", "tvm", output=tmp_path / "a")


def test_custom_domain_op_names_the_node(tmp_path):
    node = helper.make_node("FusedGemm", ["x", "x"], ["y"], name="ms_gemm", domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = presso.load(proto, check=False)
    with pytest.raises(BackendError, match="node 'ms_gemm'.*com.microsoft"):
        compile(model, "cpu-x86", "tvm", output=tmp_path / "a")


def test_converter_failure_names_the_node(tmp_path):
    """A Reshape whose target is a runtime input cannot be imported: the error names it."""
    nodes = [helper.make_node("Reshape", ["x", "target"], ["y"], name="runtime_reshape")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                               helper.make_tensor_value_info("target", TensorProto.INT64, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    with pytest.raises(BackendError, match="node 'runtime_reshape' \\(Reshape\\)"):
        compile(model, "cpu-x86", "tvm", output=tmp_path / "a")


def test_unknown_option_and_bad_shape(tmp_path):
    with pytest.raises(BackendError, match="unknown option"):
        compile(conv_model(), "cpu-x86", "tvm", output=tmp_path / "a", fast=True)
    with pytest.raises(BackendError, match="unknown input"):
        compile(conv_model(), "cpu-x86", "tvm", output=tmp_path / "a", shapes={"nope": [1]})


def test_magika_matches_onnxruntime(tmp_path):
    zoo = pytest.importorskip("presso.tools.zoo")
    try:
        path = zoo.magika_model()
        features, _ = zoo.magika_dataset(4)
    except presso.PressoError as exc:
        pytest.skip(str(exc))
    model = presso.load(path)
    name = model.input_names()[0]
    artifact = compile(model, "cpu-x86", "tvm", shapes={name: [1, features.shape[1]]}, output=tmp_path / "m")
    fixed = presso.load(path)
    presso.ir.fix_input_shapes(fixed, {name: [1, features.shape[1]]})
    for row in features:
        feeds = {name: row[None].astype(np.int32)}
        got = list(artifact.run(feeds).values())[0]
        want = reference(fixed, feeds)[0]
        assert_close(got, want, rtol=1e-3)
        assert got.argmax() == want.argmax()

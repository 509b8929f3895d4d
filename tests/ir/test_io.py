"""Loading validates and names the problem; saving is atomic and never loses the input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import assert_close, init, make_proto, rand, reference, vi
from onnx import helper

from presso.ir import Model, ModelLoadError, PressoError, UnsupportedOpError, evaluate, load, save
from presso.ir import io as ir_io


def _matmul_proto(k: int = 8, n: int = 4) -> onnx.ModelProto:
    w = rand((k, n), seed=1)
    return make_proto([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                      [vi("x", [1, k])], [vi("y", [1, n])], [init("w", w)])


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_proto(), str(path))
    return path


def test_load_file_and_proto_give_same_outputs(model_file):
    x = {"x": rand((1, 8))}
    expected = reference(onnx.load(str(model_file)), x)
    assert_close(expected, evaluate(load(model_file), x), rtol=0, atol=0)
    assert_close(expected, evaluate(load(onnx.load(str(model_file))), x), rtol=0, atol=0)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "empty"),
    (np.random.default_rng(0).bytes(4096), "not an ONNX model"),
    (b"name,value\nconv1,3\n# a text file, not a model\n", "not an ONNX model"),
])
def test_bad_files_raise_model_load_error(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path, model_file):
    data = model_file.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelLoadError, match="truncated|not an ONNX model|checker"):
        load(path)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load(tmp_path)


def test_unknown_op_names_the_node():
    proto = make_proto([helper.make_node("FancyConv", ["x"], ["y"], name="weird")],
                       [vi("x", [1, 4])], [vi("y", [1, 4])])
    with pytest.raises(UnsupportedOpError, match="FancyConv") as info:
        load(proto)
    assert "weird" in str(info.value)


def test_op_that_does_not_exist_yet_in_the_opset():
    # Gelu arrived in opset 20: at opset 17 it is unknown.
    proto = make_proto([helper.make_node("Gelu", ["x"], ["y"], name="g")],
                       [vi("x", [1, 4])], [vi("y", [1, 4])], opset=17)
    with pytest.raises(UnsupportedOpError, match="Gelu.*opset 17"):
        load(proto)


def test_too_new_opset():
    proto = make_proto([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    proto.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(ModelLoadError, match="newer than this onnx package"):
        load(proto)


def test_checker_failure_is_a_model_load_error():
    # Relu takes one input: only onnx.checker's schema check sees that.
    proto = make_proto([helper.make_node("Relu", ["x", "x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    with pytest.raises(ModelLoadError, match="onnx.checker"):
        load(proto)


# ---- external data ------------------------------------------------------------------------
def _save_external(proto: onnx.ModelProto, folder, location: str = "w.bin"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # save_model edits its argument
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def _point_external_data(path, location: str) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(path))


def test_external_data_inside_folder_loads(tmp_path):
    proto = _matmul_proto()
    path = _save_external(proto, tmp_path / "ok")
    x = {"x": rand((1, 8))}
    assert_close(reference(proto, x), evaluate(load(path), x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path, kind):
    path = _save_external(_matmul_proto(), tmp_path / "model")
    outside = tmp_path / "secret.bin"
    outside.write_bytes((tmp_path / "model" / "w.bin").read_bytes())
    if kind == "dotdot":
        _point_external_data(path, "../secret.bin")
    elif kind == "absolute":
        _point_external_data(path, str(outside))
    else:
        (tmp_path / "model" / "link.bin").symlink_to(outside)
        _point_external_data(path, "link.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder|escapes the model's folder") as info:
        load(path)
    assert "'w'" in str(info.value)  # names the tensor


def test_external_data_missing_or_truncated(tmp_path):
    path = _save_external(_matmul_proto(), tmp_path / "m")
    data = tmp_path / "m" / "w.bin"
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(ModelLoadError, match="truncated"):
        load(path)
    data.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load(path)


def test_in_memory_proto_with_external_references_is_refused(tmp_path):
    path = _save_external(_matmul_proto(), tmp_path / "m")
    with pytest.raises(ModelLoadError, match="external data"):
        load(onnx.load(str(path), load_external_data=False))


# ---- save ---------------------------------------------------------------------------------
def test_save_round_trip_keeps_outputs_and_writes_no_temp_files(tmp_path, model_file):
    model = load(model_file)
    (tmp_path / "out").mkdir()  # save never creates folders (test_bad_inputs.py::test_output_folder_missing)
    out = save(model, tmp_path / "out" / "copy.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.onnx"]
    x = {"x": rand((1, 8))}
    assert_close(evaluate(model, x), evaluate(load(out), x), rtol=0, atol=0)


def test_save_refuses_to_overwrite_the_source(model_file):
    before = model_file.read_bytes()
    model = load(model_file)
    with pytest.raises(PressoError, match="overwrite the model's own source"):
        save(model, model_file)
    assert model_file.read_bytes() == before
    save(model, model_file, overwrite_source=True)  # explicit opt-in works
    load(model_file)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch, model_file):
    target = tmp_path / "target.onnx"
    target.write_bytes(b"previous content")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ir_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save(load(model_file), target)
    assert target.read_bytes() == b"previous content"  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "target.onnx"]  # temp file removed


def test_save_with_external_data(tmp_path):
    w = rand((256, 64), seed=3)  # 64 KiB: above the 1 KiB external threshold
    proto = make_proto([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [2, 256])], [vi("y", [2, 64])],
                       [init("w", w)])
    path = save(load(proto), tmp_path / "big.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    raw = onnx.load(str(path), load_external_data=False)
    assert onnx.external_data_helper.uses_external_data(raw.graph.initializer[0])
    assert path.stat().st_size < w.nbytes  # the weight is not inline
    x = {"x": rand((2, 256))}
    assert_close(reference(proto, x), evaluate(load(path), x), rtol=0, atol=0)


def test_large_models_choose_external_data_by_size(tmp_path, monkeypatch):
    monkeypatch.setattr(ir_io, "EXTERNAL_DATA_THRESHOLD", 10_000)
    proto = make_proto([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 64])], [vi("y", [1, 64])],
                       [init("w", rand((64, 64)))])
    save(load(proto), tmp_path / "auto.onnx")
    assert (tmp_path / "auto.onnx.data").exists()


def test_annotations_round_trip(tmp_path, model_file):
    from presso.ir import PruneRecord, QuantSpec, SparsitySpec

    model = load(model_file)
    model.annotations.quant["w"] = QuantSpec("int8", symmetric=True, axis=1, scale=[0.1, 0.2], zero_point=[0, 0])
    model.annotations.sparsity["w"] = SparsitySpec("2:4", 0.5, axis=0)
    model.annotations.pruning.append(PruneRecord("mm", 8, 6, removed=[1, 5], criterion="l1"))
    model.metadata["author"] = "test"
    back = load(save(model, tmp_path / "annotated.onnx"))
    assert back.annotations == model.annotations
    assert back.metadata == {"author": "test"}


def test_malformed_annotations_are_a_load_error(model_file):
    proto = onnx.load(str(model_file))
    proto.metadata_props.add(key="presso.annotations", value="{not json")
    with pytest.raises(ModelLoadError, match="annotations"):
        load(proto)


def test_old_style_initializers_as_inputs_load_and_run():
    # IR version 3: every initializer must also be a graph input.
    w = rand((4, 3), seed=2)
    proto = make_proto([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 4]), vi("w", [4, 3])],
                       [vi("y", [1, 3])], [init("w", w)], opset=9, ir_version=3)
    onnx.checker.check_model(proto)
    model = load(proto)
    assert model.input_names() == ["x"]  # the initializer is a weight, not an input to feed
    x = {"x": rand((1, 4))}
    np.testing.assert_allclose(evaluate(model, x)["y"], x["x"] @ w, rtol=1e-6)
    onnx.checker.check_model(model.to_proto())


def test_model_from_proto_names_unnamed_nodes():
    proto = make_proto([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                        helper.make_node("Neg", ["b"], ["y"], name="n")], [vi("x", [2])], [vi("y", [2])])
    model = Model.from_proto(proto)
    names = [n.name for n in model.graph.nodes]
    assert names[2] == "n" and len(set(names)) == 3 and all(names)

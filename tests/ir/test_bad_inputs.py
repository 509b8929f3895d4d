"""The bad-input corpus for model files and output paths (issue 10, "never write a broken model").

Each case is one class of bad input. Every one must be rejected through the Python API with
a one-line :class:`PressoError` that says what, where and what to do, and through
``presso opt IN -p ... -o OUT`` with a non-zero exit code, exactly one line on stderr, the
input byte-identical and no output or temporary file left. Data and pipeline classes live in
``test_bad_data.py`` and ``tests/passes/test_bad_pipelines.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from _graphs import assert_close, init, make_proto, rand, reference, vi
from _rejects import assert_clean_error, assert_cli_rejects, snapshot
from onnx import helper

from presso.ir import Model, ModelLoadError, PressoError, UnsupportedOpError, evaluate, load, save
from presso.ir import io as ir_io


def _good_proto() -> onnx.ModelProto:
    """x[1,8] → MatMul(w[8,4]) → Relu → y: valid, so each case breaks exactly one thing."""
    return make_proto([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                       helper.make_node("Relu", ["h"], ["y"], name="relu")],
                      [vi("x", [1, 8])], [vi("y", [1, 4])], [init("w", rand((8, 4), seed=1))])


def _write(path: Path, content: bytes | onnx.ModelProto) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())
    return path


def _external(folder: Path, location: str = "w.bin") -> Path:
    """The good model saved with its weight in ``folder/w.bin``; returns the .onnx path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save_model(_good_proto(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def _relocate(path: Path, location: str) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(path))


# ---- builders: each returns the path of a bad model file under tmp ----------------------------
def _empty(tmp: Path) -> Path:
    return _write(tmp / "m.onnx", b"")


def _random_bytes(tmp: Path) -> Path:
    return _write(tmp / "m.onnx", np.random.default_rng(7).bytes(4096))


def _truncated(tmp: Path) -> Path:
    proto = make_proto([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", [1, 64])],
                       [vi("y", [1, 64])], [init("w", rand((64, 64)))])
    data = proto.SerializeToString()
    return _write(tmp / "m.onnx", data[: len(data) // 2])  # cut inside the weight's bytes


def _tflite(tmp: Path) -> Path:
    # A FlatBuffer: root table offset, then the file identifier "TFL3" at offset 4.
    return _write(tmp / "m.onnx", struct.pack("<I", 28) + b"TFL3" + bytes(120))


def _ort_format(tmp: Path) -> Path:
    return _write(tmp / "m.onnx", struct.pack("<I", 28) + b"ORTM" + bytes(120))


def _pytorch_zip(tmp: Path) -> Path:
    import torch

    path = tmp / "m.onnx"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)  # the real thing: a zip with archive/data.pkl
    return path


def _torchscript(tmp: Path) -> Path:
    import torch

    path = tmp / "m.onnx"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(path))  # a zip with data.pkl *and* code/
    return path


def _pickle(tmp: Path) -> Path:
    return _write(tmp / "m.onnx", pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))


def _zip_with_onnx(tmp: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("release/model.onnx", _good_proto().SerializeToString())
    return _write(tmp / "m.onnx", buffer.getvalue())


def _safetensors(tmp: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return _write(tmp / "m.onnx", struct.pack("<Q", len(header)) + header + bytes(8))


def _tensorflow_pb(tmp: Path) -> Path:
    # A SavedModel proto: field 1 (schema version, varint), field 2 (a MetaGraphDef, bytes).
    return _write(tmp / "saved_model.pb", b"\x08\x01\x12\x06\x0a\x04\x0a\x02tf")


def _missing_external(tmp: Path) -> Path:
    path = _external(tmp / "model")
    (tmp / "model" / "w.bin").unlink()
    return path


def _external_dotdot(tmp: Path) -> Path:
    path = _external(tmp / "model")
    (tmp / "w.bin").write_bytes((tmp / "model" / "w.bin").read_bytes())
    _relocate(path, "../w.bin")
    return path


def _external_absolute(tmp: Path) -> Path:
    path = _external(tmp / "model")
    _relocate(path, str(tmp / "model" / "w.bin"))  # even inside the folder: absolute is refused
    return path


def _external_symlink(tmp: Path) -> Path:
    path = _external(tmp / "model")
    outside = tmp / "elsewhere.bin"
    outside.write_bytes((tmp / "model" / "w.bin").read_bytes())
    (tmp / "model" / "link.bin").symlink_to(outside)
    _relocate(path, "link.bin")
    return path


def _external_short(tmp: Path) -> Path:
    path = _external(tmp / "model")
    data = tmp / "model" / "w.bin"
    data.write_bytes(data.read_bytes()[:40])  # 128 bytes declared
    return path


def _graph_case(build: Callable[[], onnx.ModelProto]) -> Callable[[Path], Path]:
    def builder(tmp: Path) -> Path:
        return _write(tmp / "m.onnx", build())  # bypasses onnx.save's checks: raw bytes
    return builder


def _cycle() -> onnx.ModelProto:
    return make_proto([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                       helper.make_node("Relu", ["a"], ["b"], name="second"),
                       helper.make_node("Identity", ["a"], ["y"], name="out")],
                      [vi("x", [1, 8])], [vi("y", [1, 8])])


def _two_producers() -> onnx.ModelProto:
    return make_proto([helper.make_node("Relu", ["x"], ["y"], name="relu"),
                       helper.make_node("Sigmoid", ["x"], ["y"], name="sigmoid")],
                      [vi("x", [1, 8])], [vi("y", [1, 8])])


def _initializer_and_output() -> onnx.ModelProto:
    proto = _good_proto()
    proto.graph.node[1].output[0] = "w"  # Relu now writes the initializer's name
    proto.graph.node.append(helper.make_node("Identity", ["h"], ["y"], name="id"))
    return proto


def _undefined_input() -> onnx.ModelProto:
    return make_proto([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
                      [vi("x", [1, 8])], [vi("y", [1, 8])])


def _unknown_op() -> onnx.ModelProto:
    return make_proto([helper.make_node("FancyConv", ["x"], ["y"], name="fancy")], [vi("x", [1, 8])],
                      [vi("y", [1, 8])])


def _unknown_domain() -> onnx.ModelProto:
    # No opset import names the domain. (A declared custom domain loads: see test_custom_domain_ops_load.)
    return make_proto([helper.make_node("Swish", ["x"], ["y"], name="swish", domain="org.example")],
                      [vi("x", [1, 8])], [vi("y", [1, 8])])


def _opset_too_new() -> onnx.ModelProto:
    proto = _good_proto()
    proto.opset_import[0].version = onnx.defs.onnx_opset_version() + 3
    return proto


def _negative_dim() -> onnx.ModelProto:
    proto = _good_proto()
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -8
    return proto


def _absurd_dim() -> onnx.ModelProto:
    proto = _good_proto()
    proto.graph.value_info.append(vi("h", [1, 2**50]))
    return proto


def _nan_weights() -> onnx.ModelProto:
    proto = _good_proto()
    w = rand((8, 4), seed=1)
    w[2, 3], w[5, 0], w[6, 1] = np.nan, np.inf, -np.inf
    proto.graph.initializer[0].CopyFrom(init("w", w))
    return proto


def _unsorted() -> onnx.ModelProto:
    proto = _good_proto()
    nodes = list(proto.graph.node)[::-1]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _short_initializer() -> onnx.ModelProto:
    proto = _good_proto()
    proto.graph.initializer[0].raw_data = proto.graph.initializer[0].raw_data[:-4]
    return proto


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Path]
    needles: tuple[str, ...]  # what the message must say (besides the file's path)
    kind: type[PressoError] = ModelLoadError


CASES = {
    "empty-file": Case(_empty, ("empty",)),
    "random-bytes": Case(_random_bytes, ("not an ONNX model", "does not parse")),
    "truncated-protobuf": Case(_truncated, ("not an ONNX model", "truncated")),
    "tflite-flatbuffer": Case(_tflite, ("TFLite", "tf2onnx")),
    "ort-format": Case(_ort_format, ("ONNX Runtime", ".ort", "converted from")),
    "pytorch-checkpoint": Case(_pytorch_zip, ("PyTorch checkpoint", "torch.onnx.export")),
    "torchscript": Case(_torchscript, ("TorchScript", "torch.jit.load")),
    "pickle": Case(_pickle, ("pickle", "torch.onnx.export")),
    "zip-archive": Case(_zip_with_onnx, ("zip archive", "release/model.onnx", "unzip")),
    "safetensors": Case(_safetensors, ("safetensors", "torch.onnx.export")),
    "tensorflow-pb": Case(_tensorflow_pb, ("TensorFlow", "tf2onnx")),
    "external-data-missing": Case(_missing_external, ("'w.bin'", "missing", "tensor 'w'")),
    "external-data-dotdot": Case(_external_dotdot, ("../w.bin", "escapes", "tensor 'w'")),
    "external-data-absolute": Case(_external_absolute, ("escapes", "relative path", "tensor 'w'")),
    "external-data-symlink": Case(_external_symlink, ("link.bin", "outside the model's folder", "tensor 'w'")),
    "external-data-short": Case(_external_short, ("shorter", "40 < 128", "tensor 'w'")),
    "cycle": Case(_graph_case(_cycle), ("cycle", "'first'", "'second'")),
    "two-producers": Case(_graph_case(_two_producers), ("'y'", "produced twice", "'relu'", "'sigmoid'")),
    "initializer-also-node-output": Case(_graph_case(_initializer_and_output), ("initializer 'w'", "'relu'")),
    "undefined-input": Case(_graph_case(_undefined_input), ("'ghost'", "node 'add'")),
    "unknown-op": Case(_graph_case(_unknown_op), ("FancyConv", "'fancy'"), UnsupportedOpError),
    "unknown-domain": Case(_graph_case(_unknown_domain), ("org.example", "'swish'", "no opset import")),
    "opset-too-new": Case(_graph_case(_opset_too_new), ("opset", "newer", "upgrade")),
    "negative-dim": Case(_graph_case(_negative_dim), ("input 'x'", "-8")),
    "absurd-dim": Case(_graph_case(_absurd_dim), ("'h'", str(2**50))),
    "nan-inf-weights": Case(_graph_case(_nan_weights), ("initializer 'w'", "3 non-finite", "1 NaN", "2 Inf",
                                                        "node 'mm'")),
    "unsorted-nodes": Case(_graph_case(_unsorted), ("topological order", "'relu'", "'mm'")),
    "short-initializer": Case(_graph_case(_short_initializer), ("initializer 'w'", "124 bytes", "128")),
}


@pytest.mark.parametrize("name", CASES)
def test_load_rejects(tmp_path, name):
    case = CASES[name]
    path = case.build(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(PressoError) as info:
        load(path)
    assert_clean_error(info.value, str(path), *case.needles, kind=case.kind)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", [n for n in CASES if n in (
    "empty-file", "truncated-protobuf", "tflite-flatbuffer", "pytorch-checkpoint", "external-data-dotdot",
    "external-data-short", "cycle", "two-producers", "undefined-input", "unknown-domain", "negative-dim",
    "nan-inf-weights")])
def test_cli_rejects(tmp_path, capfd, name):
    case = CASES[name]
    path = case.build(tmp_path)
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    assert_cli_rejects(capfd, ["opt", str(path), "-p", "fold-constants", "-o", str(out)], str(path),
                       *case.needles, watch=[tmp_path], must_not_exist=[out])


def test_real_process_prints_one_line(tmp_path):
    """The installed entry point, in its own process: no import-time warnings, no traceback."""
    path = _tflite(tmp_path)
    out = tmp_path / "o.onnx"
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "presso.tools.main", "opt", str(path), "-p", "fold-constants",
                           "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    assert done.stderr.startswith("presso opt: error: file is not an ONNX model: this is a TFLite model")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["cycle", "two-producers", "initializer-also-node-output", "undefined-input",
                                  "unknown-op", "negative-dim", "absurd-dim", "nan-inf-weights", "unsorted-nodes"])
def test_in_memory_protos_are_checked_too(tmp_path, name):
    """load(proto) runs the same checks, and with check=False too (it skips only onnx.checker)."""
    proto = onnx.load(str(CASES[name].build(tmp_path)))
    for check in (True, False):
        with pytest.raises(PressoError) as info:
            load(proto, check=check)
        assert_clean_error(info.value, "in-memory model", *CASES[name].needles, kind=CASES[name].kind)


def test_subgraph_problems_name_the_subgraph():
    then = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["t"], name="inner")], "then", [],
                             [vi("t", [1, 8])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="inner2")], "else", [],
                              [vi("e", [1, 8])])
    nodes = [helper.make_node("Constant", [], ["c"], name="c", value=helper.make_tensor("v", 9, [], [True])),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)]
    proto = make_proto(nodes, [vi("x", [1, 8])], [vi("y", [1, 8])])
    with pytest.raises(ModelLoadError) as info:
        load(proto)
    assert_clean_error(info.value, "'ghost'", "node 'inner'", "subgraph 'then_branch'", "node 'branch'")


def test_legitimate_models_still_load():
    """Inf sentinels outside weight slots, -1 dims from paddle2onnx and initializers that are
    also graph inputs (overridable weights) are all fine."""
    nodes = [helper.make_node("Max", ["x", "neg_inf"], ["m"], name="max"),
             helper.make_node("MatMul", ["m", "w"], ["y"], name="mm")]
    proto = make_proto(nodes, [vi("x", [-1, 8]), vi("w", [8, 4])], [vi("y", [-1, 4])],
                       [init("neg_inf", np.array(-np.inf, np.float32)), init("w", rand((8, 4)))])
    x = {"x": rand((2, 8))}
    assert_close(reference(proto, x), evaluate(load(proto), x), rtol=0, atol=0)


def test_custom_domain_ops_load_and_fail_cleanly_when_run():
    """A declared custom domain is the model's business: it loads (inspect, shape analysis) and
    running it is an engine error that names the op."""
    proto = _unknown_domain()
    proto.opset_import.append(helper.make_opsetid("org.example", 1))
    model = load(proto)
    assert [n.op for n in model.graph.nodes] == ["Swish"]
    with pytest.raises(PressoError, match="Swish"):
        evaluate(model, {"x": rand((1, 8))})


def test_subgraphs_may_read_outer_names():
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="inner")], "then", [], [vi("t", [1, 8])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="inner2")], "else", [], [vi("e", [1, 8])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)]
    proto = make_proto(nodes, [vi("x", [1, 8])], [vi("y", [1, 8])], [init("zero", np.array(0, np.float32))])
    for seed in (0, 1, 2):
        x = {"x": rand((1, 8), seed=seed)}
        assert_close(reference(proto, x), evaluate(load(proto), x), rtol=0, atol=0)


# ---- output paths ------------------------------------------------------------------------------
@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "in" / "m.onnx"
    path.parent.mkdir()
    onnx.save(_good_proto(), str(path))
    return path


def test_output_folder_missing(tmp_path, capfd, model_file):
    out = tmp_path / "no" / "such" / "o.onnx"
    with pytest.raises(PressoError) as info:
        save(load(model_file), out)
    assert_clean_error(info.value, "does not exist", "mkdir -p", str(out.parent))
    assert not (tmp_path / "no").exists()  # no folder created on the way
    assert_cli_rejects(capfd, ["opt", str(model_file), "-p", "fold-constants", "-o", str(out)], "does not exist",
                       watch=[tmp_path], must_not_exist=[tmp_path / "no"])


def _unwritable_folder() -> Path:
    """A folder that refuses new files even to root: sysfs accepts no created files."""
    folder = Path("/sys")
    try:
        with open(folder / "presso-write-probe", "wb"):
            pass
    except OSError:
        return folder
    os.unlink(folder / "presso-write-probe")
    pytest.skip("/sys accepts new files here; no folder refuses writes to root")


def test_output_folder_read_only(tmp_path, capfd, model_file):
    out = _unwritable_folder() / "presso-out.onnx"
    with pytest.raises(PressoError) as info:
        save(load(model_file), out)
    assert_clean_error(info.value, "cannot write", str(out.parent), "writable")
    assert_cli_rejects(capfd, ["opt", str(model_file), "-p", "fold-constants", "-o", str(out)], "cannot write",
                       watch=[model_file.parent], must_not_exist=[out])


def test_output_folder_is_a_file(tmp_path, capfd, model_file):
    out = model_file / "o.onnx"  # the model file used as a folder
    with pytest.raises(PressoError) as info:
        save(load(model_file), out)
    assert_clean_error(info.value, "is a file", str(model_file))
    assert_cli_rejects(capfd, ["opt", str(model_file), "-p", "fold-constants", "-o", str(out)], "is a file",
                       watch=[tmp_path])


def test_output_is_a_folder(tmp_path, capfd, model_file):
    with pytest.raises(PressoError) as info:
        save(load(model_file), tmp_path)
    assert_clean_error(info.value, "is a folder")
    assert_cli_rejects(capfd, ["opt", str(model_file), "-p", "fold-constants", "-o", str(tmp_path)],
                       "is a folder", watch=[tmp_path])


@pytest.mark.parametrize("alias", ["same", "relative", "symlink"])
def test_output_equal_to_input(tmp_path, capfd, model_file, monkeypatch, alias):
    if alias == "same":
        out = model_file
    elif alias == "relative":
        monkeypatch.chdir(model_file.parent)
        out = Path("..") / "in" / model_file.name
    else:
        out = tmp_path / "link.onnx"
        out.symlink_to(model_file)
    with pytest.raises(PressoError) as info:
        save(load(model_file), out)
    assert_clean_error(info.value, "overwrite", "source")
    # The command line refuses before any work: a pipeline that cannot even parse is not reached.
    assert_cli_rejects(capfd, ["opt", str(model_file), "-p", "no-such-pass", "-o", str(out)],
                       "overwrite", watch=[tmp_path])


# ---- interrupted writes -------------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from onnx import helper, numpy_helper, TensorProto
    import presso

    stage, path = sys.argv[1], sys.argv[2]
    w = np.random.default_rng(1).standard_normal((2048, 4096)).astype(np.float32)  # 32 MiB
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
                              [numpy_helper.from_array(w, "w")])
    model = presso.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    def stall(where):
        print(where, flush=True)
        time.sleep(600)  # the parent kills us here

    real_fdopen, real_replace = os.fdopen, os.replace

    class HalfWriter:  # writes half of what it is given, then stops: killed in the middle of write()
        def __init__(self, handle):
            self.handle = handle
        def write(self, data):
            self.handle.write(bytes(data)[: len(data) // 2])
            self.handle.flush()
            os.fsync(self.handle.fileno())
            stall("mid-write")
        def __getattr__(self, name):
            return getattr(self.handle, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    if stage == "mid-write":
        os.fdopen = lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
    os.replace = lambda src, dst: stall("before-rename")  # fully written, not yet in place
    presso.save(model, path)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("stage", ["mid-write", "before-rename"])
def test_killed_during_save_leaves_the_old_file_intact(tmp_path, stage):
    target = tmp_path / "model.onnx"
    onnx.save(_good_proto(), str(target))
    old = target.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, stage, str(target)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        reached = child.stdout.readline().strip()  # blocks until the child stalls (or exits)
        assert reached in ("mid-write", "before-rename"), f"the save never stalled: {reached!r}"
        leftovers = [p for p in tmp_path.iterdir() if p != target]
        assert leftovers, "the save wrote nothing beside the target"
        assert max(p.stat().st_size for p in leftovers if p.is_file()) > 1_000_000  # big write was underway
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert target.read_bytes() == old  # byte-identical
    x = {"x": rand((1, 8))}
    assert_close(reference(_good_proto(), x), evaluate(load(target), x), rtol=0, atol=0)
    hidden = [p.name for p in tmp_path.iterdir() if p != target]
    assert hidden and all(name.startswith(".") for name in hidden), hidden  # temp files stay out of sight


def test_failed_save_cleans_up_and_keeps_the_old_file(tmp_path, monkeypatch, model_file):
    target = tmp_path / "target.onnx"
    target.write_bytes(b"the previous model")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ir_io.os, "fsync", disk_full)
    with pytest.raises((OSError, PressoError), match="No space left"):
        save(Model.from_proto(_good_proto()), target)
    assert target.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "target.onnx"]  # no temporary file left

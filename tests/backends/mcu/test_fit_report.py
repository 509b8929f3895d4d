"""`presso inspect MODEL --target cortex-m4` on models with a dynamic input: no arena estimate
from the few tensors whose shapes are known, but the advice to fix the shapes; with --shape,
the estimate (float model) or the generated library's figures (int8 model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

import presso
from presso.backends import get_target
from presso.backends.mcu.report import fit_report
from presso.tools.main import main

sys.path.insert(0, str(Path(__file__).parent))
from board_models import calibration, small_cnn  # noqa: E402

# small_cnn: x[1,1,8,8] → Conv(8 channels, pad 1): its output alone is 8·8·8 int8 bytes
CONV1_INT8_BYTES = 8 * 8 * 8


def _dynamic_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    for tensor in (*proto.graph.input, *proto.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_param = "N"
    del proto.graph.value_info[:]  # shapes inferred for batch 1 would contradict the symbolic batch
    return proto


def _inspect_json(capsys, *args) -> dict:
    assert main(["inspect", *map(str, args), "--target", "cortex-m4", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["mcu"]


def test_float_model_with_a_dynamic_batch_asks_for_static_shapes(tmp_path, capsys):
    path = tmp_path / "dynamic.onnx"
    onnx.save(_dynamic_batch(small_cnn()), path)
    assert main(["inspect", str(path), "--target", "cortex-m4"]) == 0
    printed = capsys.readouterr().out
    assert "needs static input shapes, and input 'x' is N×1×8×8: pass --shape x=1,1,8,8" in printed
    assert "verdict: unknown until the input shapes are fixed" in printed and "the model fits" not in printed
    report = _inspect_json(capsys, path)
    assert "arena_bytes" not in report and report["fits"] is None
    assert report["weight_bytes"] > 0  # the weights do not depend on the shapes: still estimated

    fixed = _inspect_json(capsys, path, "--shape", "x=1,1,8,8")
    assert "needs_shapes" not in fixed and fixed["fits"] is True
    assert fixed["arena_bytes"] >= CONV1_INT8_BYTES  # the first conv's output at least is live at once
    assert fixed["weight_bytes"] == report["weight_bytes"]


def test_int8_model_with_a_dynamic_batch_is_not_reported_as_unsupported(tmp_path, capsys):
    quantized = presso.quantize(presso.load(small_cnn()), calibration(4), target="cortex-m4", method="minmax",
                                progress=False)
    static = fit_report(quantized, get_target("cortex-m4"))
    assert static["quantized"] and static["unsupported"] == [] and "arena_bytes" in static
    path = tmp_path / "dynamic.int8.onnx"
    onnx.save(_dynamic_batch(quantized.to_proto()), path)

    assert main(["inspect", str(path), "--target", "cortex-m4"]) == 0
    printed = capsys.readouterr().out
    assert "the arena and the op check need static input shapes" in printed and "--shape x=1,1,8,8" in printed
    assert "integer kernel" not in printed  # neither "every node has one" nor a made-up unsupported node
    report = _inspect_json(capsys, path)
    assert "arena_bytes" not in report and report["fits"] is None

    fixed = _inspect_json(capsys, path, "--shape", "x=1,1,8,8")
    assert "needs_shapes" not in fixed and fixed["unsupported"] == []
    # the same library as the model quantized with static shapes
    assert (fixed["arena_bytes"], fixed["weight_bytes"]) == (static["arena_bytes"], static["weight_bytes"])


@pytest.mark.parametrize("dims", [["N", 1, 8, 8], ["N", 1, "height", "width"]])
def test_fit_report_never_estimates_an_arena_without_static_shapes(dims):
    proto = small_cnn()
    for tensor, dim in zip(proto.graph.input[0].type.tensor_type.shape.dim, dims, strict=True):
        if isinstance(dim, str):
            tensor.dim_param = dim
    del proto.graph.value_info[:]
    report = fit_report(presso.load(proto), get_target("cortex-m7"))
    assert "arena_bytes" not in report and report["fits"] is None
    assert "--shape x=" in report["needs_shapes"]

"""`qat`: fake-quant training after insert-qdq + calibrate recovers PTQ's loss and folds."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

pytest.importorskip("torch")

from _train_models import accuracy, blob_task, kl_to, make_model, small_cnn  # noqa: E402

from presso.ir import evaluate  # noqa: E402
from presso.ir.errors import PassError  # noqa: E402
from presso.passes import PassManager, available_passes  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    model = small_cnn(seed=0)
    x, y = blob_task(128)
    PassManager.parse("finetune{epochs=6,lr=0.05,batch=16}").run(model, data={"x": x}, labels=y, progress=False)
    return model, x, y


def test_qat_recovers_int4_ptq_and_folds(trained):
    float_model, x, y = trained
    model = float_model.copy()
    # One pipeline: the reference (teacher) is the float model as it entered.
    text = "insert-qdq{weights=int4,per_channel=false},calibrate"
    ptq = model.copy()
    PassManager.parse(text).run(ptq, data={"x": x}, progress=False)
    report = PassManager.parse(text + ",qat{epochs=4,lr=0.002}").run(model, data={"x": x}, progress=False)
    stats = report.records[-1].result.stats
    assert stats["quantizers"] > 0 and stats["learn_scales"] and stats["biases_requantized"] == 3
    assert stats["kl_after"] < stats["kl_before"]
    # measured independently with onnxruntime against the float model
    assert accuracy(float_model, x, y) > 0.9  # a trained float model, so the comparison means something
    assert kl_to(float_model, model, x) < 0.5 * kl_to(float_model, ptq, x)
    assert accuracy(model, x, y) >= accuracy(ptq, x, y)
    # trained scales are written into the graph and the annotations alike
    q = next(n for n in model.nodes("QuantizeLinear") if n.inputs[0].name == "w2")
    assert model.annotations.quant["w2"].scale == pytest.approx(np.asarray(q.inputs[1].values).ravel().tolist())
    if "fold-qdq" not in available_passes():
        pytest.skip("fold-qdq is not available yet")
    expected = evaluate(model, {"x": x})["probs"]
    PassManager.parse("fold-qdq").run(model, data={"x": x}, progress=False)
    folded = evaluate(model, {"x": x})["probs"]
    assert np.abs(folded - expected).max() < 0.05
    assert not any(q.inputs[0].name == "w2" for q in model.nodes("QuantizeLinear"))  # weights now stored as integers
    assert any(isinstance(dq.inputs[0], gs.Constant) and np.dtype(dq.inputs[0].dtype).kind in "iu"
               for dq in model.nodes("DequantizeLinear"))


def test_qat_on_a_hand_built_qdq_graph_learns_tied_scales():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="q_w"),
             helper.make_node("DequantizeLinear", ["wq", "ws2", "wz"], ["wd"], name="dq_w"),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                       {"w": w, "ws": np.array(0.9, np.float32), "ws2": np.array(0.9, np.float32),
                        "wz": np.array(0, np.int8)}, opset=13)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    target = x @ w  # the float model's outputs
    before = np.mean((evaluate(model, {"x": x})["y"] - target) ** 2)
    report = PassManager.parse("qat{epochs=15,lr=0.01,batch=16}").run(
        model, data={"x": x}, labels=target, progress=False)
    ws, ws2 = (np.asarray(model.tensor(n).values).item() for n in ("ws", "ws2"))
    assert ws != pytest.approx(0.9) and ws == ws2  # learned, and the DQ's copy tied to it
    after = np.mean((evaluate(model, {"x": x})["y"] - target) ** 2)
    assert report.records[0].result.stats["labels"] is True
    assert after < 0.5 * before


def test_fixed_scales_stay_when_not_learned(trained):
    float_model, x, _ = trained
    model = float_model.copy()
    PassManager.parse("insert-qdq,calibrate,qat{epochs=1,learn_scales=false}").run(model, data={"x": x}, progress=False)
    reference = float_model.copy()
    PassManager.parse("insert-qdq,calibrate").run(reference, data={"x": x}, progress=False)
    for q in model.nodes("QuantizeLinear"):
        if q.inputs[0].name in ("x", "r1"):
            name = q.inputs[1].name
            np.testing.assert_array_equal(np.asarray(q.inputs[1].values), np.asarray(reference.tensor(name).values))


def test_qat_without_qdq_is_an_error():
    x, _ = blob_task(8)
    with pytest.raises(PassError, match="insert-qdq"):
        PassManager.parse("qat").run(small_cnn(), data={"x": x}, progress=False)

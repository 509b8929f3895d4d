"""`finetune`: supervised training through the executor, masks and shapes kept, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from _train_models import accuracy, blob_task, small_cnn  # noqa: E402

from presso.ir import SparsitySpec  # noqa: E402
from presso.ir.errors import CalibrationError, PassError  # noqa: E402
from presso.passes import PassManager  # noqa: E402


def test_finetune_learns_the_task_and_logs_each_epoch():
    model = small_cnn(seed=0)
    x, y = blob_task(128)
    before = accuracy(model, x, y)
    report = PassManager.parse("finetune{epochs=6,lr=0.05,batch=16}").run(
        model, data={"x": x}, labels=y, progress=False)
    result = report.records[0].result
    assert result.changed
    assert len(result.stats["loss_per_epoch"]) == 6 and len(result.log) == 6
    assert result.stats["loss_last"] < 0.5 * result.stats["loss_first"]
    after = accuracy(model, x, y)
    assert after > max(before + 0.3, 0.85)
    x_test, y_test = blob_task(128, seed=7)  # unseen samples of the same task
    assert accuracy(model, x_test, y_test) > 0.8


def test_labels_inside_the_npz_and_sgd(tmp_path):
    model = small_cnn(seed=0)
    x, y = blob_task(64)
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    report = PassManager.parse("finetune{epochs=3,lr=0.05,optimizer=sgd,loss=cross_entropy}").run(
        model, data=tmp_path / "train.npz", progress=False)
    stats = report.records[0].result.stats
    assert stats["samples"] == 64 and stats["loss"] == "cross_entropy"
    assert stats["loss_last"] < stats["loss_first"]


def test_sparsity_masks_and_shapes_are_kept():
    model = small_cnn(seed=0)
    w2 = model.tensor("w2")
    values = np.asarray(w2.values).copy()
    values[np.abs(values) < np.median(np.abs(values))] = 0.0  # 50% unstructured sparsity
    w2.values = values
    model.annotations.sparsity["w2"] = SparsitySpec("unstructured", 0.5)
    shapes = {n: tuple(t.shape) for n, t in model.initializers().items()}
    x, y = blob_task(64)
    report = PassManager.parse("finetune{epochs=3,lr=0.05}").run(model, data={"x": x}, labels=y, progress=False)
    trained = np.asarray(model.tensor("w2").values)
    assert np.all(trained[values == 0] == 0)  # zeros stay zero
    assert not np.allclose(trained[values != 0], values[values != 0])  # the rest trained
    assert report.records[0].result.stats["sparsity_kept"]["w2"] == pytest.approx(np.mean(values == 0))
    assert {n: tuple(t.shape) for n, t in model.initializers().items()} == shapes  # channels stay as they are


def test_frozen_tensors_do_not_change():
    model = small_cnn(seed=0)
    fc = np.asarray(model.tensor("fc").values).copy()
    x, y = blob_task(32)
    PassManager.parse("finetune{epochs=1,lr=0.05,freeze=[fc]}").run(model, data={"x": x}, labels=y, progress=False)
    np.testing.assert_array_equal(np.asarray(model.tensor("fc").values), fc)


def test_errors_are_clear():
    x, y = blob_task(16)
    manager = PassManager.parse("finetune{epochs=1}")
    with pytest.raises(CalibrationError, match="needs labels"):
        manager.run(small_cnn(), data={"x": x}, progress=False)
    with pytest.raises(CalibrationError, match="labels for"):
        manager.run(small_cnn(), data={"x": x}, labels=y[:5], progress=False)
    with pytest.raises(CalibrationError, match=r"\[0, 3\]"):
        manager.run(small_cnn(), data={"x": x}, labels=y + 10, progress=False)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="NaN"):
        manager.run(small_cnn(), data={"x": bad}, labels=y, progress=False)
    with pytest.raises(PassError, match="needs data"):
        manager.run(small_cnn(), progress=False)
    with pytest.raises(PassError, match="lr > 0"):
        PassManager.parse("finetune{lr=-1}").run(small_cnn(), data={"x": x}, labels=y, progress=False)


def test_a_graph_built_for_batch_one_trains_with_batch_one():
    # Reshape to [1, -1] bakes the batch into the graph, as many exporters do
    from onnx import TensorProto, helper

    from _train_models import make_model

    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["flat"]),
                        helper.make_node("Gemm", ["flat", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                       {"shape": np.array([1, -1], np.int64), "w": rng.standard_normal((4, 3)).astype(np.float32)})
    x = rng.standard_normal((12, 2, 2)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    report = PassManager.parse("finetune{epochs=2,batch=4}").run(model, data={"x": x}, labels=y, progress=False)
    assert any("batches of 1" in line for line in report.records[0].result.log)
    assert report.records[0].result.stats["loss_last"] < report.records[0].result.stats["loss_first"]

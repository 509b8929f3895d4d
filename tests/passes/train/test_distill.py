"""`distill`: the KL to the teacher measurably drops; features with a learned projection."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from _train_models import blob_task, kl_to, small_cnn  # noqa: E402

from presso.ir import save  # noqa: E402
from presso.ir.errors import PassError  # noqa: E402
from presso.passes import PassManager  # noqa: E402


def test_distillation_lowers_the_kl_to_a_teacher_file(tmp_path):
    teacher = small_cnn(seed=0, channels=8)
    save(teacher, tmp_path / "teacher.onnx")
    student = small_cnn(seed=5, channels=4)  # a different, smaller network
    x, _ = blob_task(96)
    kl_before = kl_to(teacher, student, x)
    report = PassManager.parse(
        f"distill{{teacher={tmp_path / 'teacher.onnx'},temperature=2,epochs=6,lr=0.02}}").run(
        student, data={"x": x}, progress=False)
    stats = report.records[0].result.stats
    kl_after = kl_to(teacher, student, x)  # measured independently, by onnxruntime
    assert kl_after < 0.5 * kl_before
    assert stats["kl_after"] < stats["kl_before"] and stats["labels"] is False
    assert stats["objective"] == "kl"


def test_features_with_projection_and_labels_from_the_original():
    # The student keeps the teacher's graph but loses channels in its first layer, as after
    # channel pruning; feature r1 (8 → 4 channels) needs the learned 1×1 projection.
    teacher = small_cnn(seed=0, channels=8)
    student = small_cnn(seed=0, channels=8)
    for name, axis in (("w1", 0), ("b1", 0), ("gamma", 0), ("beta", 0), ("mean", 0), ("var", 0), ("w2", 1)):
        tensor = student.tensor(name)
        tensor.values = np.take(np.asarray(tensor.values), range(4), axis=axis).copy()
    x, y = blob_task(64)
    from presso.passes import PassContext

    ctx = PassContext(data={"x": x}, labels=y, reference=teacher, progress=False)
    report = PassManager.parse("distill{features=[r1:r1],beta=0.5,alpha=0.5,epochs=4,lr=0.01}").run(student, ctx=ctx)
    stats = report.records[0].result.stats
    assert stats["features"] == 1 and stats["labels"] is True
    assert stats["loss_last"] < stats["loss_first"]
    assert stats["kl_after"] < stats["kl_before"]
    assert tuple(student.tensor("w1").shape) == (4, 1, 3, 3)  # the projection is not part of the model


def test_bad_options_are_errors():
    x, _ = blob_task(8)
    with pytest.raises(PassError, match="has no tensor 'nope'"):
        PassManager.parse("distill{features=[nope:r1],epochs=1}").run(small_cnn(), data={"x": x}, progress=False)
    with pytest.raises(PassError, match="alpha"):
        PassManager.parse("distill{alpha=2}").run(small_cnn(), data={"x": x}, progress=False)

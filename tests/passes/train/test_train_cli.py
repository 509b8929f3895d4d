"""`presso opt` runs the training passes with labels inside the --data .npz."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from _train_models import accuracy, blob_task, small_cnn  # noqa: E402

from presso.ir import load, save  # noqa: E402
from presso.tools.main import main  # noqa: E402


def test_opt_finetune_with_labels_in_the_npz(tmp_path, capsys):
    save(small_cnn(seed=0), tmp_path / "in.onnx")
    x, y = blob_task(64)
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    code = main(["opt", str(tmp_path / "in.onnx"), "-p", "finetune{epochs=4,lr=0.05,batch=16}",
                 "--data", str(tmp_path / "train.npz"), "-o", str(tmp_path / "out.onnx"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert accuracy(load(tmp_path / "out.onnx"), x, y) > accuracy(load(tmp_path / "in.onnx"), x, y)


def test_opt_reports_missing_labels_without_a_traceback(tmp_path, capsys):
    save(small_cnn(seed=0), tmp_path / "in.onnx")
    x, _ = blob_task(8)
    np.savez(tmp_path / "train.npz", x=x)
    code = main(["opt", str(tmp_path / "in.onnx"), "-p", "finetune{epochs=1}", "--data", str(tmp_path / "train.npz"),
                 "-o", str(tmp_path / "out.onnx"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "needs labels" in err and "Traceback" not in err

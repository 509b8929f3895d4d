"""Without torch, `import presso` works, the training passes are listed, and running one says why not."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["torch"] = None  # as if torch were not installed
import numpy as np
import presso
from presso.passes import PassManager, available_passes
from presso.ir.errors import PassError
assert {"finetune", "distill", "qat"} <= set(available_passes())
sys.path.insert(0, sys.argv[1])
from _train_models import blob_task, small_cnn
x, y = blob_task(8)
try:
    PassManager.parse("finetune{epochs=1}").run(small_cnn(), data={"x": x}, labels=y, progress=False)
except PassError as exc:
    assert "presso[train]" in str(exc), exc
    print("ok")
"""


def test_training_passes_explain_that_torch_is_missing():
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", SCRIPT, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")

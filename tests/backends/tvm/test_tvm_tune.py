"""MetaSchedule tuning: the database in the artifact folder, its reuse, and clean failures."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from tvm_graphs import assert_close, conv_model, reference

from presso.backends import compile
from presso.ir.errors import BackendError

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed (pip install 'presso[tvm]')")

from presso.backends.tvm import tune as tvm_tune  # noqa: E402  (needs tvm)


def _x():
    return np.random.default_rng(3).standard_normal((1, 3, 10, 13)).astype(np.float32)


def _workloads_with_records(folder) -> set[int]:
    with open(folder / "tuning" / tvm_tune.RECORD_FILE) as handle:
        return {json.loads(line)[0] for line in handle if line.strip()}


@pytest.mark.slow  # measures real kernels in a tuning process: about a minute on 2 cores
def test_tune_writes_a_database_that_later_compiles_reuse(tmp_path):
    model, x = conv_model(), _x()
    want = reference(model, {"x": x})[0]
    out = tmp_path / "t"

    first = compile(model, "cpu-x86", "tvm", output=out, tune_trials=6, progress=False)
    tuning = first.manifest["tuning"]
    tasks = tuning["tasks"]
    assert tasks >= 3 and tuning["tasks_reused"] == 0 and tuning["trials"] == 6
    # Every kernel has its default schedule recorded; the candidates went to the costly ones.
    assert len(_workloads_with_records(out)) == tasks and tuning["records"] >= tasks
    assert_close(first.run({"x": x})["y"], want)

    # Without --tune the database is applied as it is.
    plain = compile(model, "cpu-x86", "tvm", output=out, progress=False)
    assert_close(plain.run({"x": x})["y"], want)

    # Tuning again measures nothing: every kernel is in the database.
    records = (out / "tuning" / tvm_tune.RECORD_FILE).read_bytes()
    again = compile(model, "cpu-x86", "tvm", output=out, tune_trials=6, progress=False)
    assert again.manifest["tuning"]["tasks_reused"] == tasks and again.manifest["tuning"]["trials"] == 0
    assert (out / "tuning" / tvm_tune.RECORD_FILE).read_bytes() == records
    assert_close(again.run({"x": x})["y"], want)


def test_trials_go_to_the_kernels_that_take_the_time():
    assert tvm_tune.allocate(10, [5.0, 3.0, 2.0]) == [5, 3, 2]
    assert tvm_tune.allocate(256, [50e-3, 10e-3, 1e-5, 2e-6]) == [213, 43, 0, 0]
    assert sum(tvm_tune.allocate(7, [1.0, float("nan"), 3.0])) == 7  # unknown cost: the mean
    assert tvm_tune.allocate(3, [0.0, 0.0, 0.0]) == [1, 1, 1]
    assert tvm_tune.allocate(0, [1.0, 2.0]) == [0, 0]


def test_tvm_serializes_its_ir():
    """The FFI library matches TVM: with a mismatched apache-tvm-ffi every save_json segfaults."""
    tvm_tune.check_ffi()


def test_negative_trials_are_rejected(tmp_path):
    with pytest.raises(BackendError, match="trials=-1"):
        compile(conv_model(), "cpu-x86", "tvm", output=tmp_path / "t", tune_trials=-1)


def test_a_crashing_tuner_is_a_backend_error(tmp_path, monkeypatch):
    real_run = subprocess.run

    def run(args, **kwargs):
        if args[1:3] == ["-m", tvm_tune.__name__]:  # the tuning child dies as a segfault would
            return subprocess.CompletedProcess(args, -11)
        return real_run(args, **kwargs)

    monkeypatch.setattr(tvm_tune.subprocess, "run", run)
    with pytest.raises(BackendError, match="SIGSEGV") as info:
        compile(conv_model(), "cpu-x86", "tvm", output=tmp_path / "t", tune_trials=4, progress=False)
    assert "without --tune" in str(info.value)


def test_the_default_schedule_of_a_conv_kernel_is_found():
    """Tuning records each kernel's untuned schedule first; that needs the build's default rules."""
    from presso.backends.target import get_target
    from presso.backends.tvm import build, lower
    from tvm.s_tir import meta_schedule as ms

    target = build.tvm_target(get_target("cpu-x86"))
    mod = lower.to_relax(lower.prepare(conv_model(), get_target("cpu-x86"), None))
    with target, tvm.transform.PassContext(opt_level=3):
        fused = build.fuse(mod, target)
    tasks = {t.task_name: t for t in ms.relax_integration.extract_tasks(fused, target)}
    conv = next(t for name, t in tasks.items() if "conv2d" in name)
    sch = tvm_tune._default_schedule(conv.dispatched[0]["main"], target)
    assert sch is not None and len(sch.trace.insts) > 0

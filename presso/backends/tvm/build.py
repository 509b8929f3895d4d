"""Build a Relax ``IRModule`` for a target: legalize, fuse, schedule, compile, export.

Scheduling is where TVM's speed comes from (an unscheduled CPU kernel is a serial loop nest):

- cuda: dlight's GPU rules (matmul, GEMV, reductions, fallback thread binding).
- llvm (x86, aarch64): tuned schedules from a MetaSchedule database when there is one
  (``--tune trials=N`` writes it into the artifact folder), then dlight's CPU rules for
  GEMV/reductions and :mod:`.schedule` (parallel + vectorized loops) for every kernel
  still unscheduled.

Preserves semantics.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ...ir.errors import BackendError
from ..target import Target


def tvm_target(target: Target, *, cores: int | None = None):
    """The ``tvm.target.Target`` for a Presso target (dict form, as TVM 0.27 wants)."""
    import tvm

    if not target.tvm_target:
        raise BackendError(f"target '{target.name}' has no TVM target", hint="use --backend onnxruntime")
    spec = dict(target.tvm_target)
    if spec.get("kind") == "llvm" and is_native(target):
        spec.setdefault("num-cores", cores or os.cpu_count() or 1)
    if spec.get("kind") == "cuda":
        spec.setdefault("arch", os.environ.get("PRESSO_CUDA_ARCH", "sm_90"))
        spec.setdefault("host", {"kind": "llvm"})
    try:
        return tvm.target.Target(spec)
    except Exception as exc:
        raise BackendError(f"TVM rejects the target {spec}: {exc}", where=f"target '{target.name}'") from exc


def is_native(target: Target) -> bool:
    """Whether code built for ``target`` runs on this machine's CPU."""
    import platform

    if target.device != "cpu":
        return False
    host = platform.machine().lower()
    host = {"amd64": "x86_64", "arm64": "aarch64"}.get(host, host)
    return (target.isa or host) == host


def fuse(mod, target):
    """Legalize Relax ops into TIR and fuse them (the step whose kernels get tuned).

    On CPU targets convolutions first move to NHWC (:func:`.layout.to_nhwc`), the layout the
    untuned schedules and the packed, compile-time-folded weights are made for, and tanh and
    sigmoid become vectorizable approximations (:func:`.approx.use_fast_math`).
    """
    import tvm
    from tvm import relax

    if target.kind.name == "llvm":
        from .approx import use_fast_math
        from .layout import to_nhwc

        mod = use_fast_math(to_nhwc(mod))
        if "avx2" in str(target.attrs.get("mcpu", "")) or "+avx2" in list(target.attrs.get("mattr", [])):
            from .int8 import use_avx2_kernels  # int8 convs/matmuls on the vpmaddubsw kernel

            mod = use_avx2_kernels(mod)
    with target:
        return tvm.transform.Sequential([
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)


def schedule(mod, target, *, database: Path | None = None):
    """Give every kernel of a fused module a schedule for ``target``."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    from .schedule import CPUFallback

    with target:
        if target.kind.name == "cuda":
            return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                           dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
        passes, records = [], contextlib.nullcontext()
        if database is not None and (database / "database_tuning_record.json").is_file():
            from .tune import open_database

            # The pass applies the current database; given a folder instead it would log a
            # "Creating JSONDatabase" warning on every build.
            records = open_database(database)
            passes.append(relax.transform.MetaScheduleApplyDatabase())
        passes.append(dl.ApplyDefaultSchedule(CPUFallback(), dl.cpu.Reduction()))
        with records:
            return tvm.transform.Sequential(passes)(mod)


def lower_to_vm(mod, target):
    """The rest of the default Relax pipeline after scheduling (memory planning, VM lowering)."""
    import tvm
    from tvm import relax

    passes = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ]
    if target.kind.name == "cuda":
        passes.append(relax.transform.RewriteCUDAGraph())
    passes += [
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
    with target:
        return tvm.transform.Sequential(passes)(mod)


def build(mod, target, *, database: Path | None = None) -> Any:
    """Fuse, schedule and compile ``mod``; returns a ``relax.VMExecutable``."""
    import tvm
    from tvm import relax

    try:
        with tvm.transform.PassContext(opt_level=3):
            fused = fuse(mod, target)
            scheduled = schedule(fused, target, database=database)
            lowered = lower_to_vm(scheduled, target)
            return relax.build(lowered, target=target, relax_pipeline=None)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise BackendError(f"TVM failed to build the model for {target.kind.name}: {first_line}",
                           hint="compile with --backend onnxruntime, or report the model") from exc


def export(executable, path: Path, target: Target) -> Path:
    """Write the executable as a shared library, cross-compiling when the target is foreign."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if target.device == "cpu" and not is_native(target):
        compiler = cross_compiler(target)
        from tvm.support import cc

        executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))
    else:
        executable.export_library(str(path))
    return path


def cross_compiler(target: Target) -> str:
    """The cross C++ compiler for a foreign CPU target, or a BackendError that says what to install."""
    import shutil

    triple = {"aarch64": "aarch64-linux-gnu"}.get(target.isa or "")
    if triple is None:
        raise BackendError(f"cannot cross-compile for ISA '{target.isa}'", where=f"target '{target.name}'")
    for name in (f"{triple}-g++", f"{triple}-gcc"):
        if shutil.which(name):
            return name
    raise BackendError(f"exporting a library for {target.name} needs the cross compiler {triple}-g++",
                       where=f"target '{target.name}'",
                       hint="install it: apt-get install -y g++-aarch64-linux-gnu")

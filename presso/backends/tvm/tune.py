"""MetaSchedule tuning of a fused Relax module, with a database that later compiles reuse.

``tune(mod, target, database_dir, trials)`` extracts the kernels (tasks) of the module, skips
those the database already has a valid schedule for, and for the rest:

1. measures each kernel's untuned default schedule (the rules :func:`build.schedule` applies
   when there is no record) and records it, so that tuning never makes a kernel slower than
   not tuning;
2. measures ``trials`` MetaSchedule candidates, split over the kernels in proportion to the
   time they take untuned (:func:`allocate`): the big convolutions get most of them, a
   kernel with a negligible share keeps its default schedule.

The best schedule per kernel goes into ``database_dir`` (MetaSchedule's JSON database:
``database_workload.json`` and ``database_tuning_record.json``), which
:func:`build.schedule` applies. A later compile with the same database skips the kernels it
has records for (all of them, after one tuning run: delete the folder to tune again with
another budget) and tunes any new ones. A progress bar on stderr counts the measured
candidates.

The search runs in a fresh Python process (``python -m presso.backends.tvm.tune SPEC``), so
a crash inside TVM becomes a ``BackendError`` instead of killing the caller, and the child
starts with no TVM thread pool or OpenMP state inherited through ``fork``. Candidates are
compiled inside that process and timed in one MetaSchedule runner worker.

Needs: the target runs on this machine (tuning measures real runs) and a TVM whose FFI
library matches it (apache-tvm 0.27.0.post1 with apache-tvm-ffi 0.1.14: with 0.1.15 every
``tvm.ir.save_json`` of an IR node segfaults, which is what made tuning crash; see
:func:`check_ffi`). Preserves semantics (it only picks loop schedules).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ...ir.errors import BackendError

TRIALS_PER_ITER = 16
REPEATS = 5  # timed repeats per candidate (of at least 10 ms each); the fastest counts
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


@dataclass
class TuneReport:
    trials: int  # MetaSchedule candidates measured in this compile
    tasks: int
    tasks_reused: int  # kernels whose schedule came from the database without measuring
    seconds: float
    records: int  # tuning records in the database after this compile

    def as_dict(self) -> dict:
        return {"trials": self.trials, "tasks": self.tasks, "tasks_reused": self.tasks_reused,
                "seconds": round(self.seconds, 1), "records": self.records}


def open_database(database_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    database_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(database_dir / WORKLOAD_FILE),
                                    path_tuning_record=str(database_dir / RECORD_FILE),
                                    module_equality="structural")


def check_ffi() -> None:
    """Raise a ``BackendError`` when TVM's FFI library cannot serialize IR (tuning would crash).

    apache-tvm 0.27.0.post1 wheels are built against apache-tvm-ffi 0.1.14 but only ask for
    ``>=0.1.14.post0``; with 0.1.15 ``ToJSONGraph`` segfaults on every TVM IR node, and
    MetaSchedule serializes modules (its database, its mutators). The check runs in a child
    process because the failure is a segfault.
    """
    probe = "import tvm; tvm.ir.save_json(tvm.tirx.Var('x', 'int32'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        import tvm_ffi

        raise BackendError(
            f"TVM cannot serialize its IR in this environment (apache-tvm {_tvm_version()} with "
            f"apache-tvm-ffi {tvm_ffi.__version__}: exit status {result.returncode}), so MetaSchedule "
            "tuning would crash",
            hint="install the FFI that this TVM was built with: pip install 'apache-tvm-ffi>=0.1.14,<0.1.15' "
                 "(or compile without --tune)")


def tune(fused_mod, target, database_dir: Path, trials: int, *, progress: bool = True,
         seed: int = 0) -> TuneReport:
    """Tune the kernels of ``fused_mod`` (the output of ``build.fuse``) for ``target``."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    if trials < 0:
        raise BackendError(f"--tune trials={trials} must be ≥ 0", hint="use trials=N with N ≥ 1, or 0 to skip")
    start = time.perf_counter()
    if not tvm_ffi.__version__.startswith("0.1.14"):  # the FFI this TVM was built with needs no probe
        check_ffi()
    database = open_database(database_dir)
    extracted = ms.relax_integration.extract_tasks(fused_mod, target)
    todo = [t for t in extracted if not _scheduled(t) and not _has_record(database, t, target)]
    reused = len(extracted) - len(todo)
    if trials == 0 or not todo:
        return TuneReport(0, len(extracted), reused, time.perf_counter() - start, _records(database_dir))
    spec = {
        "target": tvm.ir.save_json(target),
        "tasks": [{"name": t.task_name, "weight": float(t.weight), "mod": tvm.ir.save_json(t.dispatched[0])}
                  for t in todo],
        "database": str(database_dir),
        "trials": trials,
        "seed": seed,
        "progress": progress,
    }
    with tempfile.TemporaryDirectory(prefix="presso-tune-") as scratch:
        spec_path = Path(scratch) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        # stderr is inherited: the child draws the progress bar there.
        status = subprocess.run([sys.executable, "-m", __name__, str(spec_path)], stdout=subprocess.DEVNULL).returncode
        outcome = _read_json(Path(scratch) / "result.json")
    if status != 0:
        why = outcome.get("error") or _describe_status(status)
        raise BackendError(f"MetaSchedule tuning failed in apache-tvm {_tvm_version()}: {why}",
                           where=str(database_dir),
                           hint="compile without --tune (the untuned schedules are used); records "
                                "measured before the failure stay in the database")
    return TuneReport(int(outcome.get("measured", 0)), len(extracted), reused, time.perf_counter() - start,
                      _records(database_dir))


def _scheduled(task) -> bool:
    """Whether the kernel came with its own schedule (then there is nothing to tune)."""
    mod = task.dispatched[0]
    return any(bool(attrs and attrs.get("tirx.is_scheduled", False)) for attrs in (mod.attrs, mod["main"].attrs))


def _has_record(database, task, target) -> bool:
    """Whether the database holds a valid (measured, successful) schedule for the task."""
    mod = task.dispatched[0]
    return database.has_workload(mod) and database.query_tuning_record(mod, target, "main") is not None


def _records(database_dir: Path) -> int:
    path = database_dir / RECORD_FILE
    if not path.is_file():
        return 0
    with open(path) as handle:
        return sum(1 for line in handle if line.strip())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _describe_status(status: int) -> str:
    if status < 0:
        import signal

        try:
            return f"the tuning process was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"the tuning process was killed by signal {-status}"
    return f"the tuning process exited with status {status}"


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


# ----------------------------------------------------------------------------- the child process

def _child_main(spec_path: str) -> int:
    scratch = Path(spec_path).parent
    result: dict = {}
    try:
        spec = json.loads(Path(spec_path).read_text())
        result["measured"] = _run_tuning(spec)
        code = 0
    except Exception as exc:  # reported to the parent, which raises the BackendError
        result["error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"
        code = 1
    (scratch / "result.json").write_text(json.dumps(result))
    return code


def _run_tuning(spec: dict) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import tvm
    from tvm.s_tir import meta_schedule as ms

    def make_runner():
        return ms.runner.LocalRunner(
            timeout_sec=60, f_run_evaluator=fastest_run,
            evaluator_config=ms.runner.EvaluatorConfig(number=1, repeat=REPEATS, min_repeat_ms=10,
                                                       enable_cpu_cache_flush=False))

    # The runner's worker process starts (imports TVM) while this one parses the intrinsics.
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(make_runner)
        _import_tensor_intrinsics()
        runner = pending.result()
    target = tvm.ir.load_json(spec["target"])
    database_dir = Path(spec["database"])
    database = open_database(database_dir)
    builder = _in_process_builder()
    mods = [tvm.ir.load_json(task["mod"]) for task in spec["tasks"]]
    weights = [task["weight"] for task in spec["tasks"]]
    seconds = []
    defaults = _ProgressBar(len(mods), enabled=spec["progress"], desc="default schedules", unit="kernel")
    try:
        for mod in mods:
            seconds.append(_record_default_schedule(mod, target, database, builder, runner))
            defaults.update(1)
    finally:
        defaults.close()
    budgets = allocate(spec["trials"], [w * s for w, s in zip(weights, seconds)])
    bar = _ProgressBar(sum(budgets), enabled=spec["progress"])
    try:
        for index, (task, mod, budget) in enumerate(zip(spec["tasks"], mods, budgets)):
            if budget == 0:
                continue
            context = ms.TuneContext(
                mod=mod, target=target,
                # The default llvm space: multi-level tiling, parallel/vectorize/unroll, compute
                # location; postprocessors; all mutators.
                space_generator="post-order-apply", search_strategy=_strategy(),
                task_name=task["name"], rand_state=spec["seed"] + index, num_threads=os.cpu_count() or 1)
            # One task at a time, each with its own budget (MetaSchedule's task scheduler only
            # caps all tasks alike).
            ms.tune.tune_tasks(
                tasks=[context], task_weights=[task["weight"]], work_dir=str(database_dir),
                max_trials_global=budget, max_trials_per_task=budget,
                num_trials_per_iter=min(TRIALS_PER_ITER, budget),
                cost_model=_cost_model(),
                database=database,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), bar.callback()],
                builder=builder,
                runner=runner,
            )
    finally:
        bar.close()
    return bar.count


def allocate(trials: int, costs: list[float]) -> list[int]:
    """Split ``trials`` over tasks in proportion to their cost (weight × untuned time).

    Largest remainders round; a task that takes a negligible share of the time gets no
    trials and keeps its default schedule. Tasks of unknown cost (NaN) count as the mean.
    """
    import math

    known = [c for c in costs if not math.isnan(c)]
    fill = sum(known) / len(known) if known else 1.0
    costs = [fill if math.isnan(c) else max(c, 0.0) for c in costs]
    total = sum(costs)
    if not costs or trials <= 0:
        return [0] * len(costs)
    shares = [trials * c / total for c in costs] if total > 0 else [trials / len(costs)] * len(costs)
    budgets = [math.floor(x) for x in shares]
    by_remainder = sorted(range(len(costs)), key=lambda i: shares[i] - budgets[i], reverse=True)
    for i in by_remainder[:trials - sum(budgets)]:
        budgets[i] += 1
    return budgets


def fastest_run(rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """MetaSchedule's run evaluator, reporting the fastest of the timed repeats.

    On a shared machine a parallel kernel's mean time is dominated by how often another
    process preempts one of its threads (each barrier then waits a time slice); the fastest
    repeat measures the schedule. Runs in the runner's worker process, so it is a public,
    importable function.
    """
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    return [min(run_evaluator_common(rt_mod, device, evaluator_config, repeated_args))]


def _default_rules():
    """The dlight rules :func:`build.schedule` applies to llvm kernels without a record (same order)."""
    from tvm.s_tir import dlight as dl

    from .schedule import CPUFallback

    return [CPUFallback(), dl.cpu.Reduction()]


def _default_schedule(func, target):
    """The untuned schedule of ``func``: the first default rule that applies, or None."""
    with target:
        for rule in _default_rules():
            try:
                sch = rule.apply(func, target, False)
            except Exception:  # a rule that cannot handle the kernel: the next one may
                sch = None
            if isinstance(sch, list):
                sch = sch[0] if sch else None
            if sch is not None:
                return sch
    return None


def _record_default_schedule(mod, target, database, builder, runner) -> float:
    """Measure the task's untuned schedule, store it as a tuning record; its time (NaN if none).

    The database then keeps whichever is faster, the default or a tuned candidate, so a
    short tuning run cannot replace a good default schedule by a worse random one. A kernel
    no default rule schedules is recorded as it is (its serial loops: what the build would
    give it too).
    """
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    func = mod["main"]
    sch = _default_schedule(func, target) or s_tir.Schedule(mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if built.error_msg is not None:
        return float("nan")
    try:
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])
        result = future.result()
    finally:
        shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
    if result.error_msg is not None or not result.run_secs:
        return float("nan")
    workload = database.commit_workload(mod)
    database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, args_info))
    return min(float(x) for x in result.run_secs)


def _strategy() -> str:
    # Replay-trace samples fresh random schedules from the design space. The evolutionary
    # search with the XGBoost cost model (xgboost-cpu 3.2) was tried on this 2-core machine:
    # it spent 10-17 s per measured trial in search and model training (replay-trace: about
    # 1 s), so within the trial budgets that fit here it measures far fewer schedules.
    return "replay-trace"


def _cost_model() -> str:
    return "random"  # replay-trace does not rank candidates: a learned model would go unused


def _in_process_builder():
    """A MetaSchedule builder that compiles candidates in this process.

    MetaSchedule's LocalBuilder starts a fresh worker process for every batch, and each worker
    imports ``tvm.s_tir.tensor_intrin`` (minutes of TVMScript parsing on a loaded 2-core
    machine) inside the build timeout, so every candidate timed out. This process has
    imported it once already.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class _InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    results.append(BuilderResult(default_export(default_build(item.mod, item.target, None)), None))
                except Exception as exc:  # a candidate that fails to compile is a failed trial
                    results.append(BuilderResult(None, f"in-process build failed: {exc}"))
            return results

    return _InProcessBuilder()


def _import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule needs its registrations) quickly.

    Each of its ~500 ``@T.prim_func`` calls ``inspect.stack()``, which looks up the source
    of every frame on the stack by scanning all of ``sys.modules`` (about 2,000 modules once
    torch is loaded): minutes of CPU. TVMScript only reads the source line of the third
    frame (``is_defined_in_class``) and the frame objects of the rest, so during this
    import ``inspect.stack`` computes source context for the first three frames only.
    """
    import inspect

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def stack(context: int = 1):
        frame = sys._getframe(1)
        frames = []
        while frame is not None:
            if len(frames) < 3:
                frames.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
            else:
                code = frame.f_code
                frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                                None, None, positions=None))
            frame = frame.f_back
        return frames

    original = inspect.stack
    inspect.stack = stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original


class _ProgressBar:
    """Counts measured candidates; tqdm when installed, else one line on stderr."""

    def __init__(self, total: int, *, enabled: bool, desc: str = "tuning", unit: str = "trial"):
        self.total = total
        self.count = 0
        self.desc, self.unit = desc, unit
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
            except ImportError:
                self._bar = None
        self.enabled = enabled

    def update(self, n: int) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            print(f"\r{self.desc} {self.count}/{self.total} {self.unit}s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)

    def callback(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        bar = self

        @derived_object
        class _Progress(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                bar.update(len(runner_results))

        return _Progress()


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))

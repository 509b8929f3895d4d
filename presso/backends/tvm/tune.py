"""MetaSchedule tuning of a fused Relax module, with a database that later compiles reuse.

``tune(mod, target, database_dir, trials)`` extracts the kernels (tasks) of the module, skips
those the database already has schedules for, measures ``trials`` candidate schedules spread
over the rest (at least a few per task) on this machine, and stores the best ones in
``database_dir`` (MetaSchedule's JSON database: ``database_workload.json`` and
``database_tuning_record.json``). :func:`build.schedule` applies that database.
A progress bar on stderr counts the measured candidates. Needs: the target runs on this
machine (tuning measures real runs). Preserves semantics (it only picks loop schedules).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...ir.errors import BackendError

MIN_TRIALS_PER_TASK = 8


@dataclass
class TuneReport:
    trials: int
    tasks: int
    tasks_reused: int
    seconds: float
    records: int

    def as_dict(self) -> dict:
        return {"trials": self.trials, "tasks": self.tasks, "tasks_reused": self.tasks_reused,
                "seconds": round(self.seconds, 1), "records": self.records}


def open_database(database_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    database_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(database_dir), module_equality="structural")


def tune(fused_mod, target, database_dir: Path, trials: int, *, progress: bool = True,
         seed: int = 0) -> TuneReport:
    """Tune the kernels of ``fused_mod`` (the output of ``build.fuse``) for ``target``."""
    from tvm.s_tir import meta_schedule as ms

    if trials < 0:
        raise BackendError(f"--tune trials={trials} must be ≥ 0")
    start = time.perf_counter()
    database = open_database(database_dir)
    extracted = ms.relax_integration.extract_tasks(fused_mod, target)
    todo = [t for t in extracted
            if not t.mod.attrs.get("tirx.is_scheduled", False) and not database.has_workload(t.dispatched[0])]
    reused = len(extracted) - len(todo)
    if trials == 0 or not todo:
        return TuneReport(0, len(extracted), reused, time.perf_counter() - start, len(database))
    per_task = max(MIN_TRIALS_PER_TASK, trials // len(todo))
    total = max(trials, per_task)
    # MetaSchedule can crash the whole process (apache-tvm 0.27.0.post1 segfaults inside some
    # search steps), so it runs in a forked child that writes the database; a crash becomes a
    # BackendError here instead of killing the caller.
    status = _in_child(lambda: _run_tuning(todo, target, database_dir, total, per_task, progress, seed))
    if status != 0:
        raise BackendError(f"MetaSchedule tuning crashed (exit status {status}) in apache-tvm "
                           f"{_tvm_version()}", where=str(database_dir),
                           hint="compile without --tune: the untuned schedules are used")
    database = open_database(database_dir)
    return TuneReport(total, len(extracted), reused, time.perf_counter() - start, len(database))


def _run_tuning(todo, target, database_dir: Path, total: int, per_task: int, progress: bool, seed: int) -> None:
    from tvm.s_tir import meta_schedule as ms

    database = open_database(database_dir)
    contexts, weights = _contexts(todo, target, seed)
    bar = _ProgressBar(min(total, per_task * len(todo)), enabled=progress)
    try:
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(database_dir / "logs"),
            max_trials_global=total, max_trials_per_task=per_task,
            num_trials_per_iter=min(16, per_task),
            # The random model needs no xgboost; with few trials per task it does as well.
            cost_model="random",
            database=database,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), bar.callback()],
            builder=ms.builder.LocalBuilder(max_workers=1),
            runner=ms.runner.LocalRunner(
                evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=10)),
        )
    finally:
        bar.close()


def _in_child(work) -> int:
    """Run ``work()`` in a forked child; its exit status (0 = success, -N = killed by signal N)."""
    import os

    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def _contexts(tasks, target, seed: int):
    """TuneContexts with an explicit search space.

    apache-tvm 0.27.0.post1 segfaults (in ToJSONGraph) when a TuneContext is built with the
    default llvm mutators: MutateComputeLocation and MutateParallel crash, so the space uses
    the default rules and postprocessors with the tile-size and unroll mutators only.
    """
    from tvm.s_tir import meta_schedule as ms

    contexts, weights = [], []
    for index, task in enumerate(tasks):
        space = ms.space_generator.PostOrderApply(
            sch_rules=ms.schedule_rule.ScheduleRule.create("llvm"),
            postprocs=ms.postproc.Postproc.create("llvm"),
            mutator_probs={ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateUnroll(): 0.1})
        contexts.append(ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=space,
                                       search_strategy="evolutionary", task_name=task.task_name,
                                       rand_state=seed + index, num_threads=1))
        weights.append(task.weight)
    return contexts, weights


class _ProgressBar:
    """Counts measured candidates; tqdm when installed, else one line on stderr."""

    def __init__(self, total: int, *, enabled: bool):
        self.total = total
        self.count = 0
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc="tuning", unit="trial", file=sys.stderr)
            except ImportError:
                self._bar = None
        self.enabled = enabled

    def update(self, n: int) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            print(f"\rtuning {self.count}/{self.total} trials", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)

    def callback(self):
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
        from tvm.ir.utils import derived_object

        bar = self

        @derived_object
        class _Progress(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                bar.update(len(runner_results))

        return _Progress()

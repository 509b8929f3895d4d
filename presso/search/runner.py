"""``presso.search``: find the compression recipes that trade task accuracy, latency and size
best for one model on one target, with Ray Tune and Optuna's multi-objective sampler.

Ray Tune runs one trial per candidate (one CPU each, on any node of the cluster); Optuna's
TPE sampler (seeded) proposes them, batch by batch (``ConcurrencyLimiter(batch=True)``: a
batch is proposed once the previous one has finished, so the proposals do not depend on how
many nodes run them). A trial builds its candidate in a child process (:mod:`.candidate`):
pipeline, compile, outputs on EVAL, so a crash, a time-out or an invalid model becomes the
candidate's recorded error. The task metric is scored in the trial against the float
model's outputs; latency is measured by a Ray task that needs the node's one
``presso_timer`` and the machine's cores to itself (:mod:`.timing`). The driver records every
finished candidate in DIR/results.json at once (:mod:`.store`); ``resume`` gives Optuna the
recorded candidates and runs only the rest of the budget.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import DataSource, Model, load, save
from ..ir.errors import PressoError
from ..ir.io import atomic_write_bytes
from ..passes.quant.metrics import METRICS, Metric, get_metric, model_outputs
from .pareto import OBJECTIVES, beats, pareto_front
from .report import front_table, write_html, write_png
from .space import DEFAULTS, FLOAT_MODEL, PRESSO_QUANTIZE_DEFAULT, SearchSpace, filter_applicable, needs_static_shapes
from .store import SearchStore, candidate_key
from .timing import TIMER_RESOURCE

log = logging.getLogger(__name__)
RECORD_KEY = "presso_record"  # the candidate's record (JSON text) in a trial's result
MARKER = ".presso-search"  # holds the run's token: a trial that can read it writes artifacts into DIR


class SearchError(PressoError):
    """The search could not start or run (Ray, the cluster, the inputs)."""


@dataclass
class SearchResult:
    """What :func:`search` found; everything is also in ``folder``/results.json."""

    folder: Path
    metric: str
    reference_score: float
    candidates: list[dict[str, Any]]
    front: list[dict[str, Any]]
    default_key: str
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def default(self) -> dict[str, Any] | None:
        """presso.quantize's default recipe as measured in this search (None if it failed)."""
        return next((c for c in self.candidates if c["key"] == self.default_key and c["status"] == "ok"), None)

    def beating_default(self) -> list[dict[str, Any]]:
        """Front members more accurate than presso.quantize's default at no larger size and
        no higher latency."""
        default = self.default
        return [c for c in self.front if default is not None and beats(c, default)]

    def table(self) -> str:
        lines = [front_table(self.front, self.metric, self.reference_score)]
        ok = sum(c["status"] == "ok" for c in self.candidates)
        lines.append(f"{len(self.candidates)} candidate(s): {ok} measured, {len(self.candidates) - ok} failed; "
                     f"results in {self.folder / 'results.json'}")
        default = self.default
        if default is not None:
            on_front = any(c["key"] == default["key"] for c in self.front)
            better = self.beating_default()
            lines.append(f"presso.quantize's default ({default['key']}) is {'on' if on_front else 'not on'} the front; "
                         f"{len(better)} front recipe(s) beat it on {self.metric} at no larger size and latency")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def search(model: Model | str | os.PathLike, data: Any, eval_data: Any, *, output: str | os.PathLike,
           target: str = "cpu-x86", metric: Any = "top1", budget: int = 20, space: SearchSpace | str | dict | None = None,
           ray_address: str | None = None, resume: bool = False, seed: int = 0, concurrency: int = 2,
           timeout: float = 900.0, runs: int = 30, warmup: int = 5, eval_samples: int | None = None,
           num_cpus: int | None = None, progress: bool = True) -> SearchResult:
    """Search compression recipes for ``model`` on ``target``; returns the Pareto front.

    ``data`` calibrates and trains (distillation), ``eval_data`` scores each candidate's
    outputs with ``metric`` (``top1``, ``iou``, ``cosine``, ``nn``, ``mse``, ``sqnr`` or a callable,
    see :func:`presso.passes.quant.metrics.get_metric`) against the float model's. ``budget``
    candidates are proposed (presso.quantize's default recipe and the float model first), at
    most ``concurrency`` at a time; a proposal that repeats a recipe already measured counts
    against the budget but is not measured again. ``space`` restricts or extends the default
    :class:`SearchSpace` (a SearchSpace, a mapping, or a YAML file). ``ray_address`` joins a
    running Ray cluster whose nodes each offer the resource ``presso_timer: 1``; without it a
    local Ray runs in this process. ``resume`` continues the search recorded in ``output``.
    A candidate that runs longer than ``timeout`` seconds is stopped and recorded as failed.
    """
    started = time.perf_counter()
    if budget < 1:
        raise SearchError(f"the budget must be at least 1 candidate, not {budget}")
    if concurrency < 1:
        raise SearchError(f"concurrency must be at least 1, not {concurrency}")
    if ray_address:
        _check_reachable(ray_address)  # before anything is written to the output folder
    metric = get_metric(metric)
    model = load(model) if isinstance(model, (str, os.PathLike)) else model
    folder = Path(output).resolve()
    space = SearchSpace.resolve(space, model, target)
    inputs = _Inputs.prepare(model, data, eval_data, eval_samples)
    search_info = {"model": model.source_path or model.graph.name,
                   "model_sha1": inputs.model_sha1, "calib_sha1": inputs.calib_sha1, "eval_sha1": inputs.eval_sha1,
                   "target": str(target), "metric": metric.name, "budget": budget, "seed": seed,
                   "space": space.choices, "objectives": list(OBJECTIVES),
                   # how a candidate's recipe is replayed (its pipeline text goes in for PIPELINE)
                   "replay": f"presso opt {model.source_path or 'MODEL.onnx'} -p PIPELINE --data "
                             f"{data if isinstance(data, (str, os.PathLike)) else 'CALIB'} --target {target} -o OUT.onnx"}
    store = SearchStore(folder, search_info, resume=resume)
    reference = model_outputs(model, inputs.eval_path, batch=1)
    reference_score = metric.reference_score(reference)
    store.set(reference={"score": reference_score, "metric": metric.name, "samples": len(reference)})
    token = uuid.uuid4().hex
    atomic_write_bytes(folder / MARKER, token.encode())
    spec = {"target": str(target), "seed": seed, "timeout": timeout, "runs": runs, "warmup": warmup,
            "static_shapes": needs_static_shapes(model), "metric": metric.name if metric.name in METRICS else None,
            "folder": str(folder), "token": token,
            "search_id": inputs.model_sha1[:8] + inputs.calib_sha1[:8] + inputs.eval_sha1[:8]}
    default_key = spec["default_key"] = _key_of(PRESSO_QUANTIZE_DEFAULT, spec)
    remaining = budget - store.proposals
    notes: list[str] = []
    if remaining > 0:
        _run_tune(store, space, metric, reference, reference_score, inputs, spec, budget=budget, remaining=remaining,
                  ray_address=ray_address, seed=seed, concurrency=concurrency, num_cpus=num_cpus, progress=progress)
    else:
        notes.append(f"the folder already holds {store.proposals} proposal(s) for a budget of {budget}: "
                     "nothing left to run")
    return _finish(store, metric, reference_score, inputs, spec, default_key, started, notes)


# ---- inputs ---------------------------------------------------------------------------------------
@dataclass
class _Inputs:
    """The model and data as bytes, shipped to every node once (Ray's object store)."""

    model_bytes: bytes
    calib_bytes: bytes
    eval_bytes: bytes
    feed_bytes: bytes  # the first evaluation sample: the latency input
    local: Path  # the same files on this machine

    @property
    def model_sha1(self) -> str:
        return _sha1(self.model_bytes)

    @property
    def calib_sha1(self) -> str:
        return _sha1(self.calib_bytes)

    @property
    def eval_sha1(self) -> str:
        return _sha1(self.eval_bytes)

    @property
    def eval_path(self) -> Path:
        return self.local / "eval.npz"

    @classmethod
    def prepare(cls, model: Model, data: Any, eval_data: Any, eval_samples: int | None) -> _Inputs:
        if data is None or eval_data is None:
            raise SearchError("search needs calibration data and evaluation data",
                              hint="give --data CALIB.npz and --eval EVAL.npz (inputs only; labels are not needed)")
        local = Path(tempfile.mkdtemp(prefix="presso-search-inputs-"))
        save(model, local / "model.onnx")
        calib = _npz(data, model, None)
        evaluation = _npz(eval_data, model, eval_samples)
        with np.load(io.BytesIO(evaluation)) as arrays:
            feed = _npz_from({name: arrays[name][:1] for name in arrays.files})
        inputs = cls((local / "model.onnx").read_bytes(), calib, evaluation, feed, local)
        inputs.write(local)
        return inputs

    def write(self, folder: Path) -> dict[str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, payload in (("model.onnx", self.model_bytes), ("calib.npz", self.calib_bytes),
                              ("eval.npz", self.eval_bytes), ("feed.npz", self.feed_bytes)):
            path = folder / name
            if not path.exists() or path.stat().st_size != len(payload):
                atomic_write_bytes(path, payload)
            paths[name.split(".")[0]] = str(path)
        return paths


def _npz(data: Any, model: Model, limit: int | None) -> bytes:
    """Every sample of ``data`` (inputs of ``model`` only) as one .npz, samples along axis 0."""
    columns: dict[str, list[np.ndarray]] = {}
    for feed in DataSource.open(data, model).feeds(batch=1, limit=limit):
        for name, value in feed.items():
            columns.setdefault(name, []).append(np.asarray(value))
    if not columns:
        raise SearchError("the data holds no samples", where=str(data), hint="give at least one sample per input")
    return _npz_from({name: np.concatenate(values) for name, values in columns.items()})


def _npz_from(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _sha1(payload: bytes) -> str:
    import hashlib

    return hashlib.sha1(payload).hexdigest()


# ---- Ray Tune -------------------------------------------------------------------------------------
def _run_tune(store: SearchStore, space: SearchSpace, metric: Metric, reference: list, reference_score: float,
              inputs: _Inputs, spec: dict[str, Any], *, budget: int, remaining: int, ray_address: str | None, seed: int,
              concurrency: int, num_cpus: int | None, progress: bool) -> None:
    try:
        import optuna
        import ray
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:
        raise SearchError(f"presso search needs Ray Tune and Optuna: {exc}",
                          hint="pip install 'presso[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started_ray = _start_ray(ray, ray_address, num_cpus, len(inputs.calib_bytes) + len(inputs.eval_bytes)
                             + len(inputs.model_bytes))
    try:
        storage = optuna.storages.InMemoryStorage()
        directions = ["minimize"] * len(OBJECTIVES)
        study = optuna.create_study(storage=storage, study_name="presso-search", directions=directions)
        _warm_start(study, store, space)
        finished = store.finished()
        first = [filter_applicable(p, space) for p in (PRESSO_QUANTIZE_DEFAULT, FLOAT_MODEL)]
        first = [p for p in first if _key_of(p, spec) not in finished]
        first = [p for i, p in enumerate(first) if p not in first[:i]]
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, budget // 3)))
        searcher = OptunaSearch(space=space.suggest, metric=list(OBJECTIVES), mode=["min"] * len(OBJECTIVES),
                                sampler=sampler, storage=storage, study_name="presso-search",
                                points_to_evaluate=first or None)
        searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency, batch=True)
        payload = {"inputs": {"model": inputs.model_bytes, "calib": inputs.calib_bytes, "eval": inputs.eval_bytes,
                              "feed": inputs.feed_bytes},
                   "reference": reference, "reference_score": reference_score, "metric": metric, "spec": spec,
                   "finished": {k: v for k, v in finished.items()}}
        trainable = tune.with_resources(tune.with_parameters(_trial, payload=payload), {"cpu": 1})
        recorder = _Recorder(store, budget, progress, spec)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining),
            run_config=tune.RunConfig(name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
                                      storage_path=str(store.folder / "ray"), verbose=0, callbacks=[recorder.callback],
                                      failure_config=tune.FailureConfig(max_failures=2)),
        )
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()


def _start_ray(ray: Any, address: str | None, num_cpus: int | None, payload_bytes: int) -> bool:
    """Join ``address`` or start a small local Ray; True when this call started it."""
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            _check_reachable(address)
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SearchError(f"cannot join the Ray cluster: {' '.join(str(exc).split())[:300]}", where=address,
                                  hint=f"start its head with `ray start --head --resources '{{\"{TIMER_RESOURCE}\": 1}}'` "
                                       "and give its address, or leave out --ray-address for a local Ray") from None
        else:
            cpus = num_cpus or min(2, os.cpu_count() or 1)
            store_bytes = max(80 * 2**20, 4 * payload_bytes)
            ray.init(num_cpus=cpus, resources={TIMER_RESOURCE: 1}, object_store_memory=store_bytes, **options)
        started = True
    if ray.cluster_resources().get(TIMER_RESOURCE, 0) < 1:
        if started:
            ray.shutdown()
        raise SearchError(f"no node of the Ray cluster offers the resource '{TIMER_RESOURCE}' that latency "
                          "measurements need", where=address or "the running Ray instance",
                          hint=f"start every node with --resources '{{\"{TIMER_RESOURCE}\": 1}}'")
    return started


def _check_reachable(address: str) -> None:
    """Fail at once when nothing listens at a ``HOST:PORT`` address (Ray itself retries for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", ray://..., or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SearchError(f"no Ray cluster answers at {address}: {exc.strerror or exc}", where=address,
                          hint=f"start its head with `ray start --head --port {port} --resources "
                               f"'{{\"{TIMER_RESOURCE}\": 1}}'`, or leave out --ray-address for a local Ray") from None


def _pipeline(candidate: dict[str, Any], spec: dict[str, Any]) -> str:
    return SearchSpace.pipeline(candidate, static_shapes=spec["static_shapes"], metric=spec["metric"])


def _key_of(candidate: dict[str, Any], spec: dict[str, Any]) -> str:
    return candidate_key(_pipeline(candidate, spec), candidate.get("backend", DEFAULTS["backend"]))


def _warm_start(study: Any, store: SearchStore, space: SearchSpace) -> None:
    """Tell Optuna the candidates a previous run of this search finished."""
    import optuna

    distributions = space.distributions()
    for record in store.candidates:
        params = {k: v for k, v in record.get("params", {}).items() if k in distributions}
        if any(v not in distributions[k].choices for k, v in params.items()):
            continue  # the space changed since: Optuna cannot place this candidate
        ok = record.get("status") == "ok"
        trial = optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params},
            values=[record[k] for k in OBJECTIVES] if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL)
        study.add_trial(trial)


class _Recorder:
    """Tune callback on the driver: records each finished candidate in results.json at once,
    and counts the proposals (a proposal that repeats a recorded recipe costs no work)."""

    def __init__(self, store: SearchStore, budget: int, progress: bool, spec: dict[str, Any]):
        from ray import tune

        self.store, self.budget, self.progress, self.spec = store, budget, progress, spec
        recorder = self

        class Callback(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                recorder.record(result)

            def on_trial_error(self, iteration, trials, trial, **info):
                recorder.record_failure(trial)

        self.callback = Callback()

    def record(self, result: dict[str, Any]) -> None:
        record = json.loads(result[RECORD_KEY]) if result.get(RECORD_KEY) else None
        if not self.store.record(record) or record is None:
            return  # a recipe recorded before: nothing new
        if self.progress:
            done = self.store.proposals
            what = (f"{record['drop']:+.4f} drop, {record['latency_ms']:.3f} ms, {record['size_bytes'] / 1024:.1f} KB"
                    if record["status"] == "ok" else f"failed: {record['error'][:160]}")
            print(f"presso search: [{done}/{self.budget}] {record['label']}: {what}", file=sys.stderr, flush=True)

    def record_failure(self, trial: Any) -> None:
        """A trial whose worker kept dying (Tune retried it): the candidate failed."""
        config = {k: v for k, v in trial.config.items() if k in DEFAULTS}
        pipeline = _pipeline(config, self.spec)
        key = candidate_key(pipeline, config.get("backend", DEFAULTS["backend"]))
        error = " ".join(str(getattr(trial, "error_msg", None) or "the trial's worker process died").split())
        record = _failed_record(config, pipeline, key, f"trial failed in Ray: {error[:300]}")
        self.record({RECORD_KEY: json.dumps(record)})


# ---- one trial ------------------------------------------------------------------------------------
def _trial(config: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """Build, score and time one candidate; returns its record (Tune's final result)."""
    import ray

    spec = payload["spec"]
    candidate = {k: v for k, v in config.items() if k in DEFAULTS}
    pipeline = _pipeline(candidate, spec)
    backend = candidate.get("backend", DEFAULTS["backend"])
    key = candidate_key(pipeline, backend)
    node_id = ray.get_runtime_context().get_node_id()
    known = payload["finished"].get(key) or _recorded_in_folder(spec, key)
    if known is not None:  # the same recipe again: its measurements stand
        return {**{k: known.get(k, float("nan")) for k in OBJECTIVES}, RECORD_KEY: ""}
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"presso-candidate-{key}-"))
    try:
        record = _measure(candidate, pipeline, backend, key, payload, work, node_id)
    except Exception as exc:  # noqa: BLE001 - any failure is the candidate's, recorded, and the search goes on
        record = _failed_record(candidate, pipeline, key, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record.update(node_id=node_id, seconds=round(time.perf_counter() - started, 2),
                  default=key == spec["default_key"])
    objectives = {k: (record[k] if record["status"] == "ok" else float("nan")) for k in OBJECTIVES}
    return {**objectives, RECORD_KEY: json.dumps(record)}


def _record(candidate: dict[str, Any], pipeline: str, key: str) -> dict[str, Any]:
    return {"key": key, "label": SearchSpace.describe(candidate), "params": candidate, "pipeline": pipeline,
            "backend": candidate.get("backend", DEFAULTS["backend"])}


def _failed_record(candidate: dict[str, Any], pipeline: str, key: str, error: str) -> dict[str, Any]:
    return {**_record(candidate, pipeline, key), "status": "error", "error": error}


def _measure(candidate: dict[str, Any], pipeline: str, backend: str, key: str, payload: dict[str, Any], work: Path,
             node_id: str) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .candidate import read_outputs

    spec = payload["spec"]
    files = _node_files(payload)
    job = {"model": files["model"], "calib": files["calib"], "eval": files["eval"], "pipeline": pipeline,
           "backend": backend, "target": spec["target"], "seed": spec["seed"], "out": str(work)}
    (work / "job.json").write_text(json.dumps(job))
    record = _record(candidate, pipeline, key)
    error = _run_child(["build", str(work / "job.json")], spec["timeout"], work)
    if error:
        return {**record, "status": "error", "error": error}
    built = json.loads((work / "result.json").read_text())
    outputs = read_outputs(work / "outputs.npz")
    metric: Metric = payload["metric"]
    score = metric(payload["reference"], outputs)
    timing = ray.get(_timing_task().options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(built["artifact"], files["feed"], spec["runs"], spec["warmup"], spec["timeout"]), timeout=spec["timeout"] * 3)
    if "error" in timing:
        return {**record, "status": "error", "error": timing["error"]}
    folder = Path(spec["folder"])
    if _folder_visible(spec):
        destination = folder / "candidates" / key
        if destination.exists():
            shutil.rmtree(destination)
        shutil.copytree(built["artifact"], destination)
    return {**record, "status": "ok", "score": float(score), "drop": float(metric.drop(payload["reference_score"], score)),
            "size_bytes": built["size_bytes"], **timing, "eval_samples": built["samples"], "passes": built["passes"]}


def _run_child(arguments: list[str], timeout: float, work: Path) -> str | None:
    """Run ``python -m presso.search.candidate ARGUMENTS``; the error text, or None on success."""
    from .candidate import SINGLE_THREAD_ENV

    command = [sys.executable, "-m", "presso.search.candidate", *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **SINGLE_THREAD_ENV})
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s"
    if done.returncode == 0:
        return None
    message = (work / "error.txt").read_text() if (work / "error.txt").exists() else ""
    if not message:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    if done.returncode < 0:
        message = f"the candidate's process was killed by signal {-done.returncode}" + (f": {message}" if message else "")
    return message or f"the candidate's process exited with status {done.returncode}"


_TIMING_TASK = None


def _timing_task():
    """The Ray task that times an artifact: one per node at a time (``presso_timer``), alone
    on the machine's cores (:class:`.timing.MachineLock`)."""
    global _TIMING_TASK
    if _TIMING_TASK is None:
        import ray

        @ray.remote(num_cpus=0, resources={TIMER_RESOURCE: 1}, max_retries=2)
        def time_candidate(artifact: str, feed: str, runs: int, warmup: int, timeout: float) -> dict[str, Any]:
            from .candidate import SINGLE_THREAD_ENV
            from .timing import MachineLock

            with MachineLock().exclusive():
                command = [sys.executable, "-m", "presso.search.candidate", "time", artifact, feed, str(runs), str(warmup)]
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                          env={**os.environ, **SINGLE_THREAD_ENV})
                except subprocess.TimeoutExpired:
                    return {"error": f"timing timed out after {timeout:g} s"}
            if done.returncode != 0:
                lines = [line for line in done.stderr.splitlines() if line.strip()]
                return {"error": "timing failed: " + (lines[0] if lines else f"exit status {done.returncode}")}
            return json.loads(done.stdout.strip().splitlines()[-1])

        _TIMING_TASK = time_candidate
    return _TIMING_TASK


def _node_files(payload: dict[str, Any]) -> dict[str, str]:
    """The search's model and data as files on this node (written once per node)."""
    inputs = payload["inputs"]
    folder = _node_folder(payload["spec"])
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, suffix in (("model", ".onnx"), ("calib", ".npz"), ("eval", ".npz"), ("feed", ".npz")):
        path = folder / (name + suffix)
        if not path.exists() or path.stat().st_size != len(inputs[name]):
            atomic_write_bytes(path, inputs[name])
        paths[name] = str(path)
    return paths


def _node_folder(spec: dict[str, Any]) -> Path:
    return Path(tempfile.gettempdir()) / f"presso-search-inputs-{os.getuid()}" / spec["search_id"]


def _folder_visible(spec: dict[str, Any]) -> bool:
    """True when this node sees the search folder (same machine or a shared file system)."""
    try:
        return (Path(spec["folder"]) / MARKER).read_text() == spec["token"]
    except OSError:
        return False


def _recorded_in_folder(spec: dict[str, Any], key: str) -> dict[str, Any] | None:
    if not _folder_visible(spec):
        return None
    try:
        data = json.loads((Path(spec["folder"]) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return next((c for c in data.get("candidates", []) if c.get("key") == key), None)


# ---- the end: front, artifacts, report --------------------------------------------------------
def _finish(store: SearchStore, metric: Metric, reference_score: float, inputs: _Inputs, spec: dict[str, Any],
            default_key: str, started: float, notes: list[str]) -> SearchResult:
    candidates = store.candidates
    front = pareto_front([c for c in candidates if c.get("status") == "ok"])
    front_keys = {c["key"] for c in front}
    _keep_front_artifacts(store.folder, front, inputs, spec, notes)
    store.set(front=sorted(front_keys))
    result = SearchResult(store.folder, metric.name, reference_score, candidates, front, default_key,
                          wall_seconds=round(time.perf_counter() - started, 1), notes=notes)
    atomic_write_bytes(store.folder / "front.txt", (result.table() + "\n").encode())
    if not write_png(store.folder / "front.png", candidates, front_keys, metric.name):
        notes.append("no front.png: matplotlib is not installed")
    if not write_html(store.folder / "front.html", candidates, front_keys, metric.name):
        notes.append("no front.html: plotly is not installed")
    shutil.rmtree(inputs.local, ignore_errors=True)
    shutil.rmtree(_node_folder(spec), ignore_errors=True)  # this machine's copy; other nodes keep theirs in /tmp
    return result


def _keep_front_artifacts(folder: Path, front: list[dict[str, Any]], inputs: _Inputs, spec: dict[str, Any],
                          notes: list[str]) -> None:
    """DIR/front/KEY for every front member (moved from DIR/candidates, or rebuilt by replaying
    its pipeline when its trial ran where DIR is not visible); nothing else is kept."""
    front_dir, scratch = folder / "front", folder / "candidates"
    front_dir.mkdir(exist_ok=True)
    keys = {c["key"] for c in front}
    for old in front_dir.iterdir():
        if old.name not in keys:
            shutil.rmtree(old, ignore_errors=True)
    files = inputs.write(inputs.local)
    for c in front:
        destination = front_dir / c["key"]
        if destination.exists():
            continue
        if (scratch / c["key"]).exists():
            shutil.move(str(scratch / c["key"]), str(destination))
            continue
        work = Path(tempfile.mkdtemp(prefix="presso-replay-"))
        try:
            job = {"model": files["model"], "calib": files["calib"], "eval": files["eval"], "pipeline": c["pipeline"],
                   "backend": c["backend"], "target": spec["target"], "seed": spec["seed"], "out": str(work)}
            (work / "job.json").write_text(json.dumps(job))
            error = _run_child(["build", str(work / "job.json")], spec["timeout"], work)
            if error:
                notes.append(f"could not rebuild the artifact of {c['key']}: {error}")
            else:
                shutil.move(json.loads((work / "result.json").read_text())["artifact"], str(destination))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)

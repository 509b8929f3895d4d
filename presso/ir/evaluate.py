"""Reference execution with onnxruntime, returning any tensor by name.

This is the reference for verification and the engine of calibration. Sessions are cached on
the model per set of requested outputs and dropped when the graph changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .errors import CalibrationError, PressoError
from .model import Model

# onnxruntime writes its own log lines (C++) straight to stderr; `ort_logs` routes them here,
# so that they obey the level the user chose (`presso -v/-q`, or logging's configuration).
ORT_LOGGER = logging.getLogger("presso.onnxruntime")
_ORT_LINE = re.compile(r"\[([VIWEF]):onnxruntime:[^,\]]*,\s*([^\]]*)\]\s*(.*)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # onnxruntime colours its lines on a terminal
_ORT_LEVELS = {"V": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR,
               "F": logging.CRITICAL}


def ort_severity() -> int:
    """onnxruntime's log severity (0 verbose … 4 fatal) for the level of ``presso.onnxruntime``."""
    level = ORT_LOGGER.getEffectiveLevel()
    for severity, limit in enumerate((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)):
        if level <= limit:
            return severity
    return 4


@contextlib.contextmanager
def ort_logs() -> Iterator[None]:
    """Route what onnxruntime writes to stderr inside the block to the ``presso.onnxruntime``
    logger, one record per line at the line's own level ([W:onnxruntime…] is a warning).

    Captures file descriptor 2 (C++ writes bypass ``sys.stderr``), so use it around session
    creation and folding, not around code that draws progress bars.
    """
    ort.set_default_logger_severity(ort_severity())  # sessions without their own severity
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr (e.g. a closed or replaced stream)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
        _emit(text)


def _emit(text: str) -> None:
    for line in _ANSI.sub("", text).splitlines():
        if not line.strip():
            continue
        match = _ORT_LINE.search(line)
        if match:
            level, where, message = match.groups()
            ORT_LOGGER.log(_ORT_LEVELS[level], "%s (%s)", message.strip(), where.strip())
        else:
            ORT_LOGGER.warning("%s", line.rstrip())


_OPT_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def create_session(
    proto_or_path: onnx.ModelProto | str | os.PathLike,
    *,
    providers: Sequence[str] | None = None,
    optimization: str = "basic",
    threads: int | None = None,
    optimized_model_path: str | None = None,
    initializers: Mapping[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session; large protos go through a temporary external-data file.

    ``initializers`` supplies the data of initializers that the proto holds only as stubs
    (``Model.to_proto_without_large_data``); onnxruntime uses the arrays without copying them.
    """
    options = ort.SessionOptions()
    keep_alive = []
    if initializers:
        keep_alive = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in initializers.values()]
        options.add_external_initializers(list(initializers), keep_alive)
    options.graph_optimization_level = _OPT_LEVELS[optimization]
    options.log_severity_level = ort_severity()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    providers = list(providers or ["CPUExecutionProvider"])
    try:
        with ort_logs():
            session = _new_session(proto_or_path, options, providers)
        session._presso_initializers = keep_alive  # the session reads these arrays in place
        return session
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph…)
        raise PressoError(
            f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}",
            hint="run `presso inspect` on it, or check that the op/opset is supported by onnxruntime",
        ) from exc


def _new_session(proto_or_path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    if not isinstance(proto_or_path, onnx.ModelProto):
        return ort.InferenceSession(str(proto_or_path), options, providers=providers)
    if proto_or_path.ByteSize() > 2**31 - 1 - 2**20:
        with tempfile.TemporaryDirectory(prefix="presso-eval-") as folder:
            path = Path(folder) / "model.onnx"
            onnx.save_model(proto_or_path, str(path), save_as_external_data=True, location="model.onnx.data")
            return ort.InferenceSession(str(path), options, providers=providers)
    return ort.InferenceSession(proto_or_path.SerializeToString(), options, providers=providers)


def _session(model: Model, outputs: tuple[str, ...], providers: tuple[str, ...], optimization: str,
             threads: int | None = None):
    key = f"ort_session:{outputs}:{providers}:{optimization}:{threads}"

    def build() -> ort.InferenceSession:
        # Large weights go to onnxruntime as arrays, not through a serialized proto.
        proto, arrays = model.to_proto_without_large_data()
        existing = {o.name for o in proto.graph.output}
        for name in outputs:
            if name not in existing:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
        return create_session(proto, providers=providers, optimization=optimization, initializers=arrays,
                              threads=threads)

    return model.analysis(key, build)


def _run(session: ort.InferenceSession, names: list[str], feeds: Mapping[str, np.ndarray]) -> list:
    """``session.run``; its log lines (warnings about declared shapes and the like) only with
    ``-v`` (info or debug), routed like the others; warnings there are Presso's business."""
    severity = ort_severity()
    if severity >= 2:
        options = ort.RunOptions()
        options.log_severity_level = 3
        return session.run(names, feeds, options)
    with ort_logs():
        return session.run(names, feeds)


def check_feeds(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate names, dtypes and ranks of ``feeds`` against the model's inputs."""
    expected = {t.name: t for t in model.graph.inputs}
    missing = sorted(set(expected) - set(feeds) - set(model.overridable))
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        raise CalibrationError(
            f"input names do not match the model: missing {missing}, unexpected {extra}",
            hint=f"the model's inputs are {sorted(expected)}",
        )
    checked = {}
    for name, tensor in expected.items():
        if name not in feeds:
            continue  # an overridable default: the model's own value
        value = np.asarray(feeds[name])
        if tensor.dtype is not None and value.dtype != np.dtype(tensor.dtype):
            if np.can_cast(value.dtype, tensor.dtype, casting="same_kind") and value.dtype.kind == np.dtype(tensor.dtype).kind:
                value = value.astype(tensor.dtype)
            else:
                raise CalibrationError(
                    f"input '{name}' has dtype {value.dtype}, the model expects {np.dtype(tensor.dtype)}",
                    where=f"input '{name}'",
                    hint="convert the data to the model's input dtype",
                )
        if tensor.shape is not None:
            if value.ndim != len(tensor.shape):
                raise CalibrationError(
                    f"input '{name}' has shape {list(value.shape)}, the model expects rank "
                    f"{len(tensor.shape)} ({list(tensor.shape)})",
                    where=f"input '{name}'",
                    hint="data files hold one array per input with a leading sample axis; "
                         "check that the batch axis is present",
                )
            for axis, (have, want) in enumerate(zip(value.shape, tensor.shape)):
                if isinstance(want, int) and want > 0 and have != want:
                    raise CalibrationError(
                        f"input '{name}' has size {have} on axis {axis}, the model expects {want} "
                        f"(shape {list(tensor.shape)})",
                        where=f"input '{name}'",
                    )
        checked[name] = value
    return checked


def evaluate(
    model: Model,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    *,
    providers: Sequence[str] | None = None,
    optimization: str = "basic",
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``feeds`` and return the requested tensors (graph outputs by default).

    ``outputs`` may name any tensor: intermediate activations are added as extra graph
    outputs of a cached session; constant tensors are returned from their stored values.
    ``threads`` sets onnxruntime's intra-op threads (default: its own choice).
    """
    feeds = check_feeds(model, feeds)
    wanted = list(outputs) if outputs is not None else model.output_names()
    tensors = model.graph.tensors()
    unknown = [n for n in wanted if n not in tensors]
    if unknown:
        raise PressoError(f"cannot evaluate unknown tensor(s) {unknown[:5]}",
                          hint="use `presso inspect --layers` to list tensor names")
    constants = {n: tensors[n].values for n in wanted if isinstance(tensors[n], gs.Constant)}
    # Graph inputs are returned as fed: onnxruntime rejects an input listed as an output.
    known = {**constants, **{n: feeds[n] for n in wanted if n in feeds}}
    computed = tuple(dict.fromkeys(n for n in wanted if n not in known))
    result = dict(known)
    if computed:
        session = _session(model, computed, tuple(providers or ("CPUExecutionProvider",)), optimization, threads)
        try:
            values = _run(session, list(computed), feeds)
        except Exception as exc:
            raise PressoError(
                f"onnxruntime failed to run the model: {str(exc).strip().splitlines()[0]}",
                hint="check the input shapes and values",
            ) from exc
        result.update(zip(computed, values))
    return {n: result[n] for n in wanted}

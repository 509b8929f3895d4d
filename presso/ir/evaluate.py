"""Reference execution with onnxruntime, returning any tensor by name.

This is the reference for verification and the engine of calibration. Sessions are cached on
the model per set of requested outputs and dropped when the graph changes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .errors import CalibrationError, PressoError
from .model import Model

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
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    providers = list(providers or ["CPUExecutionProvider"])
    try:
        if isinstance(proto_or_path, onnx.ModelProto):
            if proto_or_path.ByteSize() > 2**31 - 1 - 2**20:
                with tempfile.TemporaryDirectory(prefix="presso-eval-") as folder:
                    path = Path(folder) / "model.onnx"
                    onnx.save_model(proto_or_path, str(path), save_as_external_data=True,
                                    location="model.onnx.data")
                    session = ort.InferenceSession(str(path), options, providers=providers)
            else:
                session = ort.InferenceSession(proto_or_path.SerializeToString(), options, providers=providers)
        else:
            session = ort.InferenceSession(str(proto_or_path), options, providers=providers)
        session._presso_initializers = keep_alive  # the session reads these arrays in place
        return session
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph…)
        raise PressoError(
            f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}",
            hint="run `presso inspect` on it, or check that the op/opset is supported by onnxruntime",
        ) from exc


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


def check_feeds(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate names, dtypes and ranks of ``feeds`` against the model's inputs."""
    expected = {t.name: t for t in model.graph.inputs}
    missing = sorted(set(expected) - set(feeds))
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        raise CalibrationError(
            f"input names do not match the model: missing {missing}, unexpected {extra}",
            hint=f"the model's inputs are {sorted(expected)}",
        )
    checked = {}
    for name, tensor in expected.items():
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
            values = session.run(list(computed), feeds)
        except Exception as exc:
            raise PressoError(
                f"onnxruntime failed to run the model: {str(exc).strip().splitlines()[0]}",
                hint="check the input shapes and values",
            ) from exc
        result.update(zip(computed, values))
    return {n: result[n] for n in wanted}

"""Loading and saving models, with validation on the way in and atomic writes on the way out."""

from __future__ import annotations

import os
from collections.abc import Callable
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

from .errors import ModelLoadError, PressoError
from .external import external_array, external_tensors, write_external_data
from .formats import identify_foreign_format
from .model import Model
from .subgraphs import proto_graphs
from .proto_checks import check_proto
from .validate import validate_written_model

# A single protobuf cannot exceed 2 GiB; beyond this the weights go to an external file.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 1800 * 2**20


def load(source: str | os.PathLike | onnx.ModelProto, *, check: bool = True) -> Model:
    """Load and validate a model from a file path or an in-memory ``onnx.ModelProto``.

    Raises :class:`ModelLoadError` naming the problem: missing or unreadable file, empty or
    oversized file, bytes that are not an ONNX protobuf (saying what they are when they are a
    TFLite, PyTorch, ORT-format… file), external data that is missing, short or outside the
    model's folder, and the structural problems of :mod:`presso.ir.proto_checks` (cycles,
    duplicate or undefined tensors, bad dims, NaN weights, unknown ops; these run even with
    ``check=False``, which skips only ``onnx.checker``). Never modifies the file.
    """
    if isinstance(source, onnx.ModelProto):
        proto, path = source, None
        external = [t.name for t in _all_tensors(proto) if uses_external_data(t)]
        if external:
            raise ModelLoadError(
                f"in-memory model refers to external data for {len(external)} tensor(s), e.g. '{external[0]}'",
                where="in-memory model",
                hint="load it from its file path so that the data beside it can be read and checked",
            )
        mapped: dict[str, np.ndarray] = {}
    else:
        path = Path(source)
        proto = _read_proto(path)
        mapped = _map_external_data(proto, path)
    _check_structure(proto, path, mapped)
    if check:
        _check_with_onnx(proto, path)
    try:
        return Model.from_proto(proto, source_path=str(path) if path else None, external=mapped)
    except PressoError:
        raise
    except Exception as exc:  # graphsurgeon's import fails with bare KeyErrors/AttributeErrors
        raise ModelLoadError(
            f"the graph cannot be imported: {type(exc).__name__}: {_one_line(str(exc))}",
            where=str(path) if path else "in-memory model",
            hint="the model passed the structural checks but is malformed; re-export it, and "
                 "report it to Presso if it runs in onnxruntime",
        ) from exc


def _one_line(text: str, limit: int = 300) -> str:
    """An exception text as one line: the CLI prints every error on exactly one line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_proto(path: Path) -> onnx.ModelProto:
    where = str(path)
    if not path.exists():
        raise ModelLoadError("model file does not exist", where=where, hint="check the path")
    if not path.is_file():
        raise ModelLoadError("model path is not a regular file", where=where,
                             hint="give the path of the .onnx file itself")
    if not os.access(path, os.R_OK):
        raise ModelLoadError("model file is not readable", where=where, hint="check its permissions")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError("model file is empty", where=where,
                             hint="an interrupted download or copy leaves empty files; fetch or export it again")
    if size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"model file is {size / 2**30:.1f} GiB, over the 2 GiB protobuf limit",
            where=where,
            hint="store the weights as ONNX external data next to the model",
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError here
        _raise_if_foreign(path)
        raise ModelLoadError(
            f"file is not an ONNX model: the protobuf does not parse ({type(exc).__name__}: {_one_line(str(exc))})",
            where=where,
            hint="the file may be truncated or not an .onnx file; re-export or re-download it",
        ) from exc
    if not proto.HasField("graph") or proto.ir_version <= 0:
        _raise_if_foreign(path)
        tensorflow = path.suffix == ".pb"
        raise ModelLoadError(
            "file is not an ONNX model: it parses as protobuf but has no graph or IR version"
            + (" (a .pb file is usually a TensorFlow SavedModel or frozen graph)" if tensorflow else ""),
            where=where,
            hint="convert it with tf2onnx (python -m tf2onnx.convert --saved-model DIR or --graphdef FILE)"
            if tensorflow else "the file may be truncated or not an .onnx file; re-export or re-download it",
        )
    _check_external_data(proto, path)
    return proto


def _map_external_data(proto: onnx.ModelProto, path: Path) -> dict[str, np.ndarray]:
    """Map the external data of the main graph's tensors (weights stay on disk until read);
    read the rare external tensors of subgraphs into the proto."""
    mapped = {t.name: external_array(t, path.parent) for t in external_tensors(proto)}
    if any(uses_external_data(t) for t in _all_tensors(proto, subgraphs=True) if t.name not in mapped):
        try:
            for tensor in _all_tensors(proto, subgraphs=True):
                if uses_external_data(tensor) and tensor.name not in mapped:
                    load_external_data_for_tensor(tensor, str(path.parent))
                    tensor.data_location = onnx.TensorProto.DEFAULT
                    del tensor.external_data[:]
        except Exception as exc:
            raise ModelLoadError(f"external data could not be read: {_one_line(str(exc))}", where=str(path),
                                 hint="check that the data files beside the model are complete") from exc
    return mapped


def _raise_if_foreign(path: Path) -> None:
    """Name the format of a file that did not parse as ONNX when it is a known other one.

    Checked only after parsing fails, so a valid ONNX file is never misjudged by its bytes.
    """
    foreign = identify_foreign_format(path)
    if foreign is not None:
        raise ModelLoadError(f"file is not an ONNX model: this is {foreign.what}", where=str(path),
                             hint=foreign.hint)


def _all_tensors(proto: onnx.ModelProto, *, subgraphs: bool = False):
    """Initializers and Constant values of the main graph (and of every body with ``subgraphs``)."""
    for graph in proto_graphs(proto.graph) if subgraphs else [proto.graph]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    folder = path.parent.resolve()
    for tensor in _all_tensors(proto, subgraphs=True):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        where = f"tensor '{tensor.name}' in {path}"
        location = info.location
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise ModelLoadError(
                f"external data location '{location}' escapes the model's folder",
                where=where,
                hint="external data must be a relative path inside the model's folder",
            )
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ModelLoadError(
                f"external data '{location}' resolves to {target}, outside the model's folder "
                "(a symbolic link out of it)",
                where=where,
                hint="copy the data file into the model's folder",
            )
        if not target.is_file():
            raise ModelLoadError(f"external data file '{location}' is missing", where=where,
                                 hint="copy the data file next to the model (it must keep its name)")
        needed = info.length or _tensor_bytes(tensor) or 0
        end = (info.offset or 0) + needed
        if end > target.stat().st_size:
            raise ModelLoadError(
                f"external data file '{location}' is shorter than the tensor needs "
                f"({target.stat().st_size} < {end} bytes): truncated",
                where=where,
                hint="the data file is incomplete; copy or download it again",
            )


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's data takes, from its dims and dtype; None for strings and sub-byte types."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) or itemsize == 0:
        return None
    count = 1
    for dim in tensor.dims:
        count *= max(int(dim), 0)
    return count * itemsize


def _check_structure(proto: onnx.ModelProto, path: Path | None, mapped: dict[str, np.ndarray]) -> None:
    """Versions, names, order, dims, weights and ops (see :mod:`presso.ir.proto_checks`)."""
    check_proto(proto, str(path) if path else "in-memory model", external=mapped)


def _check_with_onnx(proto: onnx.ModelProto, path: Path | None) -> None:
    where = str(path) if path else "in-memory model"
    try:
        external = any(uses_external_data(t) for t in proto.graph.initializer)
        if path is not None and (external or proto.ByteSize() > PROTOBUF_LIMIT):
            onnx.checker.check_model(str(path))  # finds the external data beside the file
        elif proto.ByteSize() <= PROTOBUF_LIMIT:
            onnx.checker.check_model(proto)
    except Exception as exc:  # ValidationError, and C++ errors surfacing as other types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelLoadError(
            f"model fails onnx.checker: {_one_line(first_line)}",
            where=where,
            hint="the exporter wrote an invalid model; fix or re-export it",
        ) from exc


def check_output_path(path: str | os.PathLike, *, source: str | os.PathLike | None = None,
                      overwrite_source: bool = False) -> Path:
    """Raise :class:`PressoError` when a model cannot or must not be written to ``path``.

    Checks, before any work: the path names a file (not a folder, not a device), its folder
    exists (model files never create folders silently) and really accepts a new file (a probe
    file is created and removed: permission bits say nothing to root, read-only mounts only
    fail on write), and it is not ``source`` (the input) unless ``overwrite_source``.
    Returns the path. Changes nothing on disk.
    """
    path = Path(path)
    where = str(path)
    if path.name in ("", ".", ".."):
        raise PressoError("the output path names no file", where=where, hint="give a file name, e.g. out.onnx")
    if path.is_dir():
        raise PressoError("the output path is a folder, not a file", where=where,
                          hint=f"give a file name inside it, e.g. {path / 'model.onnx'}")
    if path.exists() and not path.is_file():
        raise PressoError("the output path exists and is not a regular file", where=where,
                          hint="write to a regular .onnx file")
    folder = path.parent
    if not folder.is_dir():
        blocker = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise PressoError(f"'{blocker}' is a file, so the output folder '{folder}' cannot exist", where=where,
                              hint="choose an output path inside a real folder")
        raise PressoError(f"the output folder '{folder}' does not exist", where=where,
                          hint=f"create it first (mkdir -p {folder}) or choose another path")
    if source is not None and not overwrite_source and path.exists() and _same_file(path, Path(source)):
        raise PressoError("refusing to overwrite the model's own source file", where=where,
                          hint="write to a new path (or pass overwrite_source=True)")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise PressoError(f"cannot write in the output folder '{folder}': {exc.strerror or exc}", where=where,
                          hint="choose a writable folder or fix its permissions") from exc
    os.close(handle)
    os.unlink(probe)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # sees through symbolic and hard links
    except OSError:
        return a.resolve() == b.resolve()


def _check_output_path(path: str | os.PathLike, model: Model, overwrite_source: bool) -> None:
    """What :func:`save` checks before it converts or writes anything."""
    check_output_path(path, source=model.source_path, overwrite_source=overwrite_source)


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None,
         overwrite_source: bool = False, engine: str | None = "onnxruntime") -> Path:
    """Write ``model`` to ``path`` atomically, after checking that it is a model to hand out.

    The model is written to a temporary file beside ``path``, checked there by
    :func:`presso.ir.validate.validate_written_model` (``onnx.checker`` with full checking, and
    a load in ``engine``; ``engine=None`` skips the load for models meant for another engine),
    and only then renamed into place. A model that fails raises
    :class:`~presso.ir.errors.InvalidModelError` and nothing is written; an old file at
    ``path`` stays as it was, even when the process is killed mid-write.

    Models larger than about 1.8 GB are saved with external data in ``<name>.data`` beside the
    file (``external_data=True`` forces it). Refuses to overwrite the file the model was
    loaded from unless ``overwrite_source`` is set, so an input is never lost by mistake.
    """
    _check_output_path(path, model, overwrite_source)
    path = Path(path)
    # Large weights leave the export as stubs and go to the file one by one: never a second
    # full copy of them in memory, and none at all of the ones still mapped from disk.
    proto, weights = model.to_proto_without_large_data(min_bytes=EXTERNAL_MIN_BYTES)
    if external_data is None:
        total = proto.ByteSize() + sum(a.nbytes for a in weights.values())
        external_data = model.external_data or total > EXTERNAL_DATA_THRESHOLD
    history = [str(step.get("pass")) for step in model.annotations.history]

    def check(written: Path) -> None:
        validate_written_model(written, engine=engine, history=history, destination=str(path))

    if external_data:
        _atomic_write_external(proto, weights, path, path.name + ".data", check)
    else:
        _fill_stubs(proto, weights)
        atomic_write_bytes(path, proto.SerializeToString(), check)
    return path


def written_size(path: str | os.PathLike) -> int:
    """Bytes of a saved model: the file and the external data files it refers to."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    locations = {ExternalDataInfo(t).location for t in _all_tensors(proto, subgraphs=True) if uses_external_data(t)}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


# Tensors of at least this many bytes go to the external data file (onnx's own default).
EXTERNAL_MIN_BYTES = 1024


def _fill_stubs(proto: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Put the data of the stubbed tensors back into the proto, for a single-file model."""
    for tensor in proto.graph.initializer:
        if tensor.name in weights:
            array = np.ascontiguousarray(weights[tensor.name])
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp makes files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, payload: bytes, check: Callable[[Path], None] | None = None) -> None:
    """Write ``payload`` to a hidden temporary file beside ``path``, run ``check`` on it (which
    raises to refuse it), then rename it into place; nothing is left behind on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_external(proto: onnx.ModelProto, weights: dict[str, np.ndarray], path: Path, data_name: str,
                           check: Callable[[Path], None] | None = None) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        stubs = {t.name: t for t in proto.graph.initializer if t.name in weights}
        write_external_data(stubs, weights.items(), staging / data_name, data_name)
        with open(staging / path.name, "wb") as handle:
            handle.write(proto.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
        for written in (staging / data_name, staging / path.name):
            os.chmod(written, _file_mode())
        if check is not None:
            check(staging / path.name)
        os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()

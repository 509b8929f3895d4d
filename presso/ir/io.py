"""Loading and saving models, with validation on the way in and atomic writes on the way out."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import ModelLoadError, PressoError, UnsupportedOpError
from .model import Model

# A single protobuf cannot exceed 2 GiB; beyond this the weights go to an external file.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 1800 * 2**20


def load(source: str | os.PathLike | onnx.ModelProto, *, check: bool = True) -> Model:
    """Load and validate a model from a file path or an in-memory ``onnx.ModelProto``.

    Raises :class:`ModelLoadError` naming the problem: missing or unreadable file, empty or
    oversized file, bytes that are not an ONNX protobuf, a graph that fails ``onnx.checker``,
    an unknown opset, or external data that points outside the model's folder.
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
    else:
        path = Path(source)
        proto = _read_proto(path)
    _check_structure(proto, path)
    if check:
        _check_with_onnx(proto, path)
    return Model.from_proto(proto, source_path=str(path) if path else None)


def _read_proto(path: Path) -> onnx.ModelProto:
    where = str(path)
    if not path.exists():
        raise ModelLoadError("model file does not exist", where=where, hint="check the path")
    if not path.is_file():
        raise ModelLoadError("model path is not a regular file", where=where)
    if not os.access(path, os.R_OK):
        raise ModelLoadError("model file is not readable", where=where, hint="check its permissions")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError("model file is empty", where=where)
    if size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"model file is {size / 2**30:.1f} GiB, over the 2 GiB protobuf limit",
            where=where,
            hint="store the weights as ONNX external data next to the model",
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError here
        raise ModelLoadError(
            f"file is not an ONNX model: the protobuf does not parse ({type(exc).__name__}: {exc})",
            where=where,
            hint="the file may be truncated or not an .onnx file; re-export or re-download it",
        ) from exc
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelLoadError(
            "file is not an ONNX model: it parses as protobuf but has no graph or IR version",
            where=where,
            hint="the file may be truncated or not an .onnx file",
        )
    _check_external_data(proto, path)
    if any(uses_external_data(t) for t in _all_tensors(proto)):
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:
            raise ModelLoadError(f"external data could not be read: {exc}", where=where) from exc
    return proto


def _all_tensors(proto: onnx.ModelProto):
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    folder = path.parent.resolve()
    for tensor in _all_tensors(proto):
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
            raise ModelLoadError(f"external data file '{location}' is missing", where=where)
        end = (info.offset or 0) + (info.length or 0)
        if end > target.stat().st_size:
            raise ModelLoadError(
                f"external data file '{location}' is shorter than the tensor needs "
                f"({target.stat().st_size} < {end} bytes): truncated",
                where=where,
            )


def _check_structure(proto: onnx.ModelProto, path: Path | None) -> None:
    where = str(path) if path else "in-memory model"
    known = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > known:
            raise ModelLoadError(
                f"model uses ONNX opset {opset.version}, newer than this onnx package knows ({known})",
                where=where,
                hint="upgrade the onnx package or export the model with an older opset",
            )
    domains = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    if "" not in domains:
        domains[""] = 1
    for node in proto.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in ("", "ai.onnx.ml") or domain not in domains:
            continue
        try:
            onnx.defs.get_schema(node.op_type, domains[domain], domain)
        except onnx.defs.SchemaError:
            raise UnsupportedOpError(
                f"unknown operator '{node.op_type}' in domain '{domain or 'ai.onnx'}' "
                f"at opset {domains[domain]}",
                where=f"node '{node.name}' in {where}",
                hint="the op does not exist in that opset: fix the exporter or the opset version",
            ) from None


def _check_with_onnx(proto: onnx.ModelProto, path: Path | None) -> None:
    where = str(path) if path else "in-memory model"
    try:
        if proto.ByteSize() > PROTOBUF_LIMIT:
            if path is None:
                return  # the checker cannot take a proto this large, and there is no file to check
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelLoadError(
            f"model fails onnx.checker: {first_line}",
            where=where,
            hint="the exporter wrote an invalid model; fix or re-export it",
        ) from exc


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None,
         overwrite_source: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename).

    Models larger than about 1.8 GB are saved with external data in ``<name>.data`` beside the
    file (``external_data=True`` forces it). Refuses to overwrite the file the model was
    loaded from unless ``overwrite_source`` is set, so an input is never lost by mistake.
    """
    path = Path(path)
    if (
        not overwrite_source
        and model.source_path
        and path.exists()
        and path.resolve() == Path(model.source_path).resolve()
    ):
        raise PressoError(
            "refusing to overwrite the model's own source file",
            where=str(path),
            hint="write to a new path (or pass overwrite_source=True)",
        )
    proto = model.to_proto()
    if external_data is None:
        external_data = proto.ByteSize() > EXTERNAL_DATA_THRESHOLD
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        data_name = path.name + ".data"
        _atomic_write_external(proto, path, data_name)
    else:
        _atomic_write_bytes(path, proto.SerializeToString())
    return path


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_external(proto: onnx.ModelProto, path: Path, data_name: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(
            proto,
            str(staging / path.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()

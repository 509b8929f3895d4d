"""`OrtArtifact`: a model compiled for onnxruntime — run it, save it as a folder, load it back.

The folder holds ``model.onnx`` (what the session runs), ``model.ort-optimized.onnx`` (the
graph onnxruntime produced at the ``extended`` optimization level, portable across CPUs,
written through ``SessionOptions.optimized_model_filepath``) and ``manifest.json``. Saving
re-opens both written files in onnxruntime before the manifest is written, so a folder with a
manifest always holds models the runtime loads.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ...ir import Model, create_session
from ...ir import save as save_model
from ...ir.errors import BackendError, CalibrationError, InvalidModelError, PressoError
from ...ir.validate import validate_written_model
from ..artifact import Artifact, write_manifest

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
OPTIMIZED_FILE = "model.ort-optimized.onnx"
OPTIMIZED_LEVEL = "extended"  # "all" adds CPU-specific layouts (NCHWc) that do not travel


class OrtArtifact(Artifact):
    """A model ready for onnxruntime: ``run(feeds)``, ``save(folder)``, ``benchmark(feeds)``.

    ``threads`` sets the session's intra-op threads (``None``: onnxruntime's default, all
    cores). ``optimization`` is the session's graph optimization level.
    """

    backend = "onnxruntime"

    def __init__(self, manifest: dict[str, Any], *, model: Model | None = None, folder: Path | None = None,
                 providers: Sequence[str] | None = None, optimization: str = "all", threads: int | None = None):
        super().__init__(manifest, folder)
        if model is None and folder is None:
            raise ValueError("an OrtArtifact needs a model or a folder")
        self.model = model
        self.providers = tuple(providers or manifest.get("providers") or ("CPUExecutionProvider",))
        self.optimization = optimization
        self.threads = threads
        self._session = None

    # ---- running ----------------------------------------------------------------------
    @property
    def session(self):
        if self._session is None:
            source = self.model.to_proto() if self.model is not None else self.folder / MODEL_FILE
            self._session = open_session(source, self.model, providers=self.providers,
                                         optimization=self.optimization, threads=self.threads)
        return self._session

    def adopt_session(self, session) -> None:
        """Use an already open session of this artifact's model (same providers, optimization
        and threads) instead of loading the model again on the first run."""
        self._session = session

    def with_threads(self, threads: int | None) -> OrtArtifact:
        """The same artifact with another intra-op thread count (a new session)."""
        return OrtArtifact(self.manifest, model=self.model, folder=self.folder, providers=self.providers,
                           optimization=self.optimization, threads=threads)

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.manifest.get("inputs", [])]

    @property
    def output_names(self) -> list[str]:
        return [spec["name"] for spec in self.manifest.get("outputs", [])]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self._check_feeds(feeds)
        try:
            values = self.session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime failed to run the artifact: {str(exc).strip().splitlines()[0]}",
                               where=str(self.folder) if self.folder else None,
                               hint="check the input shapes against manifest.json's input specs") from exc
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, values))

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = {spec["name"]: spec for spec in self.manifest.get("inputs", [])}
        missing = sorted(set(specs) - set(feeds))
        extra = sorted(set(feeds) - set(specs))
        if missing or extra:
            raise CalibrationError(f"input names do not match the artifact: missing {missing}, unexpected {extra}",
                                   hint=f"the artifact's inputs are {sorted(specs)}")
        checked = {}
        for name, spec in specs.items():
            value = np.asarray(feeds[name])
            want = np.dtype(spec["dtype"]) if spec.get("dtype") else value.dtype
            if value.dtype != want:
                if value.dtype.kind != want.kind:
                    raise CalibrationError(f"input '{name}' has dtype {value.dtype}, the artifact expects {want}",
                                           where=f"input '{name}'", hint="convert the data to the input dtype")
                value = value.astype(want)
            shape = spec.get("shape")
            if shape is not None and value.ndim != len(shape):
                raise CalibrationError(f"input '{name}' has shape {list(value.shape)}, the artifact expects "
                                       f"rank {len(shape)} ({shape})", where=f"input '{name}'")
            checked[name] = value
        return checked

    # ---- saving and loading -------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the artifact folder; raises :class:`BackendError` if onnxruntime cannot load it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / MODEL_FILE
        if self.model is not None:
            save_model(self.model, model_path)
        elif self.folder is not None and self.folder.resolve() != folder.resolve():
            for item in self.folder.iterdir():
                if item.is_file() and item.name != "manifest.json":
                    shutil.copy2(item, folder / item.name)
        optimized_path = folder / OPTIMIZED_FILE
        # Loading the written file is the proof that the target can run it; the same session
        # writes the onnxruntime-optimized graph.
        open_session(model_path, self.model, providers=self.providers, optimization=OPTIMIZED_LEVEL,
                     optimized_model_path=str(optimized_path))
        files = {"model": MODEL_FILE}
        if optimized_path.is_file() and _keep_optimized(optimized_path):
            open_session(optimized_path, self.model, providers=self.providers, optimization="none")
            files["optimized"] = OPTIMIZED_FILE
        extra_data = sorted(p.name for p in folder.glob(MODEL_FILE + ".data"))
        if extra_data:
            files["external_data"] = extra_data[0]
        self.manifest["files"] = files
        self.manifest["sizes"] = {key: (folder / name).stat().st_size for key, name in files.items()}
        self.manifest["optimized_level"] = OPTIMIZED_LEVEL
        write_manifest(folder, self.manifest)
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: Path, manifest: dict[str, Any]) -> OrtArtifact:
        require_model_file(folder, manifest)
        return cls(manifest, folder=folder)


def require_model_file(folder: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`BackendError` when the artifact folder lacks the model its manifest names."""
    model_file = folder / manifest.get("files", {}).get("model", MODEL_FILE)
    if not model_file.is_file():
        raise BackendError(f"the artifact's model file '{model_file.name}' is missing", where=str(folder),
                           hint="recompile with `presso compile`")


def _keep_optimized(path: Path) -> bool:
    """Whether onnxruntime's optimized graph passes the same check as every model Presso writes;
    it is an extra beside the model, so one that fails is dropped with a warning."""
    try:
        validate_written_model(path, engine=None)
    except InvalidModelError as exc:
        log.warning("dropping onnxruntime's optimized graph from the artifact: %s", exc)
        path.unlink()
        return False
    return True


def open_session(source: onnx.ModelProto | str | Path, model: Model | None = None, *,
                 providers: Sequence[str] = ("CPUExecutionProvider",), optimization: str = "all",
                 threads: int | None = None, optimized_model_path: str | None = None):
    """An onnxruntime session; a failure becomes a BackendError that names the node and op."""
    try:
        return create_session(source, providers=providers, optimization=optimization, threads=threads,
                              optimized_model_path=optimized_model_path)
    except PressoError as exc:
        cause = exc.__cause__ or exc
        message = str(cause).strip()
        first = message.splitlines()[0] if message else type(cause).__name__
        raise BackendError(f"onnxruntime cannot load the compiled model: {first}",
                           where=_culprit(message, model, source),
                           hint="the target cannot run this node; keep it in float, change the opset "
                                "(upgrade-opset) or choose another target") from exc


def _culprit(message: str, model: Model | None, source: Any) -> str | None:
    """The node (and op) that onnxruntime's error message names, if any."""
    nodes = []
    if model is not None:
        nodes = [(n.name, n.op) for n in model.graph.nodes]
    elif isinstance(source, (str, Path)):
        try:
            proto = onnx.load(str(source), load_external_data=False)
            nodes = [(n.name, n.op_type) for n in proto.graph.node]
        except Exception:
            nodes = []
    for name, op in sorted(nodes, key=lambda item: -len(item[0])):
        if name and name in message:
            return f"node '{name}' ({op})"
    for op in dict.fromkeys(op for _, op in nodes):
        if op and re.search(rf"(?<![A-Za-z0-9_]){re.escape(op)}(?![A-Za-z0-9_])", message):
            named = [name for name, node_op in nodes if node_op == op]
            listed = ", ".join(f"'{n}'" for n in named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
            return f"node {listed} (op {op})"
    return str(source) if isinstance(source, (str, Path)) else None

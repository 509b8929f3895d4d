"""`McuArtifact`: a model as C for a Cortex-M board — the folder, and running it in QEMU.

The folder::

    model.c, model.h, ...      the generated library (presso/backends/mcu/codegen.py)
    harness/main.c             semihosting test harness (reads input0.bin…, writes output0.bin…)
    harness/startup.c          vector table, FPU enable, .data/.bss set-up
    harness/harness_config.h   the tensor sizes and the presso_model_run call the harness makes
    mps2-an386.ld              the board's linker script (one per board)
    Makefile                   rebuilds model.elf with arm-none-eabi-gcc; `make run` runs it in QEMU
    model.elf                  the built program
    manifest.json              target, board, tensors (shape, dtype, scale, zero point), memory,
                               instruction count, verification

``run(feeds)`` quantizes float feeds with each input's scale and zero point (round half to
even, as onnxruntime's QuantizeLinear), runs the ELF on the emulated board, and returns the
outputs dequantized to the model's own output dtype, like every other artifact. A feed with
a leading batch of N (the compiled batch being 1) runs as N samples in one QEMU start.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...ir.errors import BackendError, CalibrationError
from ..artifact import Artifact, write_manifest
from .boards import Board, get_board
from .qemu import DEFAULT_TIMEOUT_S, SampleRun, run_elf
from .toolchain import ELF_NAME, HARNESS_SOURCES, RUNTIME_DIR, linker_script_name, makefile

HARNESS_DIR = "harness"
HARNESS_CONFIG = "harness_config.h"


class McuArtifact(Artifact):
    """A Cortex-M artifact folder: ``run(feeds)`` in QEMU, ``save(folder)``, ``load``.

    After a run, ``last_runs`` holds one :class:`SampleRun` per sample (instructions, peak
    stack).
    """

    backend = "tvm"

    def __init__(self, manifest: dict[str, Any], folder: Path, *, timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(manifest, Path(folder))
        self.timeout = timeout
        self.last_runs: list[SampleRun] = []

    @property
    def board(self) -> Board:
        return get_board(self.manifest["target"])

    @property
    def elf(self) -> Path:
        return self.folder / self.manifest.get("files", {}).get("elf", ELF_NAME)

    # ---- running ----------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = self.manifest["inputs"]
        names = [s["name"] for s in specs]
        if set(feeds) != set(names):
            raise CalibrationError(f"input names do not match the artifact: got {sorted(feeds)}",
                                   hint=f"the artifact's inputs are {sorted(names)}")
        per_input = [self._samples(spec, np.asarray(feeds[spec["name"]])) for spec in specs]
        counts = {len(samples) for samples in per_input}
        if len(counts) != 1:
            raise CalibrationError("the inputs hold different numbers of samples",
                                   hint="feed the same batch size to every input")
        outputs = self.run_samples([list(samples) for samples in zip(*per_input)])
        return {spec["name"]: np.concatenate([o[i] for o in outputs], axis=0) if len(outputs) > 1 else outputs[0][i]
                for i, spec in enumerate(self.manifest["outputs"])}

    def run_samples(self, samples: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        """Run already quantized samples (one array per input, in the artifact's order, in
        the port dtype and compiled shape) in one QEMU start; return the dequantized outputs
        per sample. ``last_runs`` gets the instruction count and peak stack of each."""
        if not samples:
            return []
        with tempfile.TemporaryDirectory(prefix="presso-mcu-run-") as tmp:
            work = Path(tmp)
            for i in range(len(self.manifest["inputs"])):
                with open(work / f"input{i}.bin", "wb") as f:
                    for sample in samples:
                        f.write(np.ascontiguousarray(sample[i]).tobytes())
            runs = run_elf(self.elf, self.board, work, timeout=self.timeout)
            if len(runs) != len(samples):
                raise BackendError(f"the board ran {len(runs)} of {len(samples)} samples", where=str(self.elf))
            raw = []
            for i, spec in enumerate(self.manifest["outputs"]):
                data = np.fromfile(work / f"output{i}.bin", dtype=np.dtype(spec["dtype"]))
                raw.append(data.reshape(len(samples), *spec["shape"]))
        self.last_runs = runs
        return [[dequantize(spec, raw[i][s]) for i, spec in enumerate(self.manifest["outputs"])]
                for s in range(len(samples))]

    def _samples(self, spec: dict[str, Any], value: np.ndarray) -> list[np.ndarray]:
        """Quantize one input and split it into samples of the compiled shape."""
        shape = list(spec["shape"])
        if list(value.shape) == shape:
            batch = [value]
        elif shape and shape[0] == 1 and value.ndim == len(shape) and list(value.shape[1:]) == shape[1:]:
            batch = [value[i:i + 1] for i in range(value.shape[0])]
        else:
            raise CalibrationError(f"input '{spec['name']}' has shape {list(value.shape)}, the artifact was "
                                   f"compiled for {shape}", where=f"input '{spec['name']}'",
                                   hint="feed samples of the compiled shape (a leading batch of N runs N samples)")
        return [quantize(spec, sample) for sample in batch]

    # ---- memory and cost -------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        """Flash and RAM of the model on its board, as the manifest records them."""
        return dict(self.manifest.get("memory", {}))

    # ---- the folder ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Copy the artifact into ``folder`` atomically (a new folder renamed into place); an
        existing folder is replaced only if it is an artifact folder itself."""
        folder = Path(folder)
        if self.folder is not None and folder.exists() and folder.resolve() == self.folder.resolve():
            write_manifest(folder, self.manifest)
            return folder
        foreign = folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                                and not (folder / "manifest.json").is_file()))
        if foreign:
            raise BackendError("the output exists and is not an artifact folder", where=str(folder),
                               hint="give a new or empty folder with -o")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for path in sorted(self.folder.rglob("*")):
                relative = path.relative_to(self.folder)
                if relative.parts[0] == "build" or relative.name == "manifest.json" or not path.is_file():
                    continue
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / relative)
            write_manifest(staging, self.manifest)
            if folder.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
                old.rmdir()
                folder.rename(old)
                staging.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: Path, manifest: dict[str, Any]) -> McuArtifact:
        for key in ("inputs", "outputs", "target", "files"):
            if key not in manifest:
                raise BackendError(f"the Cortex-M artifact's manifest has no '{key}'", where=str(folder),
                                   hint="recompile it with `presso compile --backend tvm --target cortex-m4`")
        elf = Path(folder) / manifest["files"].get("elf", ELF_NAME)
        if not elf.is_file():
            raise BackendError(f"the artifact's program {elf.name} is missing", where=str(folder),
                               hint="rebuild it with `make` in the folder, or recompile")
        return cls(manifest, Path(folder))


# ---- quantization of the ports --------------------------------------------------------------
def quantize(spec: dict[str, Any], value: np.ndarray) -> np.ndarray:
    """A feed in the port's integer dtype: float values are quantized with the port's scale
    and zero point (round half to even, saturating); integer values are checked and cast."""
    dtype = np.dtype(spec["dtype"])
    if np.issubdtype(value.dtype, np.floating) and spec.get("scale") is not None:
        info = np.iinfo(dtype)
        q = np.rint(value.astype(np.float32) / np.float32(spec["scale"])) + spec["zero_point"]
        return np.clip(q, info.min, info.max).astype(dtype)
    if np.issubdtype(value.dtype, np.integer):
        info = np.iinfo(dtype)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise CalibrationError(f"input '{spec['name']}' holds values outside {dtype.name}",
                                   where=f"input '{spec['name']}'")
        return value.astype(dtype)
    raise CalibrationError(f"input '{spec['name']}' is {value.dtype}, the artifact takes {dtype.name}",
                           where=f"input '{spec['name']}'")


def dequantize(spec: dict[str, Any], value: np.ndarray) -> np.ndarray:
    """An output in the model's own dtype: (q - zero point) × scale for a float output."""
    model_dtype = np.dtype(spec.get("model_dtype", spec["dtype"]))
    if np.issubdtype(model_dtype, np.floating) and spec.get("scale") is not None:
        return ((value.astype(np.int32) - spec["zero_point"]) * np.float32(spec["scale"])).astype(model_dtype)
    return value.astype(model_dtype)


# ---- writing the folder -------------------------------------------------------------------
def write_sources(folder: Path, library, board: Board) -> list[str]:
    """Write the library, the harness, the linker script and the Makefile into ``folder``;
    return the model's C sources (relative paths) to compile."""
    for name, text in library.sources.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    model_sources = sorted(name for name in library.sources if name.endswith(".c"))
    harness = folder / HARNESS_DIR
    harness.mkdir(parents=True, exist_ok=True)
    for name in HARNESS_SOURCES:
        shutil.copyfile(RUNTIME_DIR / name, harness / name)
    (harness / HARNESS_CONFIG).write_text(harness_config(library.inputs, library.outputs))
    (folder / linker_script_name(board)).write_text(board.linker_script())
    (folder / "Makefile").write_text(makefile(board, model_sources))
    return model_sources


def harness_config(inputs, outputs) -> str:
    """``harness_config.h``: buffers for every port and the call of ``presso_model_run``
    (inputs first, then outputs, in the order of ``model.h``)."""
    lines = ["/* Written by Presso: the tensors harness/main.c reads and writes, and the model call. */",
             "#include <stdint.h>", "",
             f"#define HARNESS_INPUTS {len(inputs)}", f"#define HARNESS_OUTPUTS {len(outputs)}", ""]
    args = []
    for kind, ports in (("in", inputs), ("out", outputs)):
        sizes = []
        for i, port in enumerate(ports):
            nbytes = port.size * np.dtype(port.dtype).itemsize
            sizes.append(str(nbytes))
            lines.append(f"static uint8_t harness_{kind}{i}[{nbytes}] __attribute__((aligned(16)));  /* {port.name} */")
            args.append(f"({'const ' if kind == 'in' else ''}void *)harness_{kind}{i}")
        name = "inputs" if kind == "in" else "outputs"
        buffers = ", ".join(f"harness_{kind}{i}" for i in range(len(ports)))
        lines.append(f"static void *const harness_{name}[] = {{{buffers}}};")
        lines.append(f"static const unsigned harness_{name[:-1]}_bytes[] = {{{', '.join(sizes)}}};")
        lines.append("")
    lines.append(f"#define HARNESS_RUN() presso_model_run({', '.join(args)})")
    return "\n".join(lines) + "\n"


def port_spec(port, model_dtype: str | None = None) -> dict[str, Any]:
    return {"name": port.name, "shape": [int(d) for d in port.shape], "dtype": port.dtype,
            "scale": float(port.scale) if port.scale is not None else None,
            "zero_point": int(port.zero_point) if port.zero_point is not None else None,
            "model_dtype": model_dtype or port.dtype}


__all__ = ["McuArtifact", "dequantize", "harness_config", "port_spec", "quantize", "write_sources"]

"""The Cortex-M backend: a quantized model → C library + harness → ELF, checked in QEMU.

Reached through the TVM backend (``presso compile MODEL --backend tvm --target cortex-m4 -o
DIR``; ``presso.compile(model, target="cortex-m7", backend="tvm")``), which hands targets of
device ``mcu`` to :data:`BACKEND`. Steps, each failing with one error that says what to do
before anything is written:

1. the toolchain is there (``arm-none-eabi-gcc``, newlib, ``qemu-system-arm``);
2. the model is quantized (Q/DQ int8; a float model → quantize it with the target's scheme);
3. every node has an integer kernel (:func:`codegen.unsupported_nodes`);
4. the generated library's weights and arena fit the board (:mod:`.boards`), then the link
   proves it for code, data and the reserved stack too;
5. one sample (``data``'s first, else random) runs on the emulated board and is compared
   with onnxruntime on the same Q/DQ model, in quantization steps of each output.

Everything is built in a temporary folder; :meth:`McuArtifact.save` renames the finished
folder into place.

Options: ``shapes`` (fix dynamic inputs), ``data`` (the verification sample, and the shapes
of dynamic inputs), ``verify`` (default True), ``timeout`` (seconds per QEMU run), ``output``
(the artifact folder, written once everything passed; without it the artifact stays in a
temporary folder until :meth:`McuArtifact.save`). ``tune_trials`` and
``int8`` are TVM host options and must stay unset.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...ir import DataSource, Model, random_feeds
from ...ir.analysis.shapes import dynamic_inputs, fix_input_shapes
from ...ir.errors import BackendError, PressoError, UnsupportedOpError
from ..artifact import base_manifest
from ..target import Target
from . import toolchain
from .artifact import McuArtifact, port_spec, write_sources
from .boards import get_board
from .qemu import DEFAULT_TIMEOUT_S


class McuBackend:
    name = "tvm"

    def compile(self, model: Model, target: Target, *, shapes: Mapping[str, Sequence[int]] | None = None,
                data: Any = None, verify: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
                output: str | Path | None = None, progress: bool = True, tune_trials: int = 0,
                int8: str | None = None, **options: Any) -> McuArtifact:
        if options:
            raise BackendError(f"unknown option(s) for the Cortex-M backend: {sorted(options)}",
                               hint="valid options: shapes, data, verify, timeout, output")
        if tune_trials or int8:
            raise BackendError(f"--tune and --int8 are TVM host options; the {target.name} target always runs "
                               "integer kernels and cannot be tuned here", hint="drop --tune/--int8")
        tools = toolchain.require()
        board = get_board(target)
        start = time.perf_counter()
        model = checked_model(model, target, shapes=shapes, data=data)
        from .codegen import generate_c_library

        library = generate_c_library(model, target)
        check_fit(library, board)
        folder = Path(tempfile.mkdtemp(prefix="presso-mcu-"))
        try:
            sources = write_sources(folder, library, board)
            elf = toolchain.build(folder, board, sources, toolchain=tools)
            sizes = toolchain.elf_sizes(elf, toolchain=tools)
            manifest = base_manifest(
                "tvm", target.name, device="mcu",
                board=board.as_dict(),
                inputs=ports(library.inputs, model.graph.inputs),
                outputs=ports(library.outputs, model.graph.outputs),
                files={"sources": sorted(library.sources), "elf": toolchain.ELF_NAME, "makefile": "Makefile",
                       "linker_script": toolchain.linker_script_name(board), "harness": "harness"},
                kernels=dict(library.kernels),
                memory=memory_report(library, sizes, board, peak_stack=None),
                source=str(model.source_path) if model.source_path else None,
            )
            manifest["sizes"] = {"elf": elf.stat().st_size, **sizes.as_dict()}
            artifact = McuArtifact(manifest, folder, timeout=timeout)
            if verify:
                manifest["verification"] = verify_artifact(model, artifact, data)
                if artifact.last_runs:
                    run = artifact.last_runs[0]
                    manifest["instructions_per_inference"] = run.instructions
                    manifest["memory"] = memory_report(library, sizes, board, peak_stack=run.stack_bytes)
            manifest["compile_seconds"] = round(time.perf_counter() - start, 1)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if output is not None:  # as the TVM backend: the folder is written when compile returns
            built = artifact.folder
            artifact.save(output)
            shutil.rmtree(built, ignore_errors=True)
        return artifact

    def load(self, folder: Path, manifest: dict[str, Any]) -> McuArtifact:
        return McuArtifact.load(folder, manifest)


def ports(library_ports, graph_tensors) -> list[dict[str, Any]]:
    """The manifest's tensor specs: the model's input/output names (the library's ports are
    its int8 tensors, in the same order) with each port's shape, dtype and quantization."""
    if len(library_ports) != len(graph_tensors):
        raise BackendError(f"the generated library has {len(library_ports)} ports for {len(graph_tensors)} model "
                           "inputs/outputs", hint="report the model")
    return [{**port_spec(port, np.dtype(tensor.dtype).name if tensor.dtype is not None else None),
             "name": tensor.name, "port": port.name} for port, tensor in zip(library_ports, graph_tensors)]


def checked_model(model: Model, target: Target, *, shapes: Mapping[str, Sequence[int]] | None = None,
                  data: Any = None) -> Model:
    """A copy of ``model`` with static input shapes, refused if it is float or has a node
    without an integer kernel."""
    model = model.copy()
    if shapes:
        fix_input_shapes(model, shapes)
    dynamic = dynamic_inputs(model)
    if dynamic and data is not None:
        sample = next(iter(DataSource.open(data, model).feeds(batch=1, limit=1)))
        fix_input_shapes(model, {name: list(np.asarray(sample[name]).shape) for name in dynamic})
    elif dynamic:
        name, dims = next(iter(dynamic.items()))
        raise BackendError(f"the {target.name} target needs static shapes, and input '{name}' is {dims}",
                           hint=f"give --shape {name}=… (shapes={{'{name}': [...]}}) or --data with a sample")
    from ..onnxruntime.int8_form import is_quantized

    if not is_quantized(model):
        raise BackendError(f"the {target.name} target runs int8 models, and this one is float",
                           hint=f'quantize it first: presso.quantize(model, data, target="{target.name}") or '
                                f'presso opt MODEL --target {target.name} -p "insert-qdq,calibrate,fold-qdq" '
                                "--data DATA -o MODEL.int8.onnx")
    from .codegen import unsupported_nodes

    unsupported = unsupported_nodes(model)
    if unsupported:
        listed = "; ".join(f"{name} ({op}): {reason}" for name, op, reason in unsupported[:5])
        more = f" and {len(unsupported) - 5} more" if len(unsupported) > 5 else ""
        raise UnsupportedOpError(f"{len(unsupported)} node(s) have no Cortex-M integer kernel: {listed}{more}",
                                 where=target.name,
                                 hint=f"see `presso inspect MODEL --target {target.name}`; rewrite those ops or "
                                      "quantize with the target's scheme "
                                      f"(presso.quantize(..., target=\"{target.name}\"))")
    return model


def check_fit(library, board) -> None:
    """Refuse a library whose weights or arena alone exceed the board (before building)."""
    weights_region = board.flash.size
    if library.weight_bytes > weights_region:
        raise BackendError(f"the model does not fit the {board.target} board ({board.machine}): its weights take "
                           f"{library.weight_bytes:,} bytes, the {board.flash.name} holds {weights_region:,}",
                           hint="make it smaller (prune-channels, quantize-weights to 4 bits) or pick a target "
                                "with more flash")
    ram = board.ram.size - board.stack_bytes
    io = io_bytes(library)
    if library.arena_bytes + io > ram:
        raise BackendError(f"the model does not fit the {board.target} board ({board.machine}): its activations "
                           f"need a {library.arena_bytes:,}-byte arena and {io:,} bytes of input/output buffers, "
                           f"the {board.ram.name} has {ram:,} bytes beside a {board.stack_bytes // 1024} KiB stack",
                           hint="use a smaller input (--shape) or a smaller model, or pick a target with more RAM")


def io_bytes(library) -> int:
    """The input and output buffers the application passes to presso_model_run."""
    return sum(p.size * np.dtype(p.dtype).itemsize for p in [*library.inputs, *library.outputs])


def memory_report(library, sizes, board, *, peak_stack: int | None) -> dict[str, Any]:
    """Flash (text + rodata) and RAM (arena + data + bss + peak stack) of the model itself."""
    flash = sizes.model_text + sizes.model_rodata + sizes.model_data
    arena_in_bss = sizes.model_bss >= library.arena_bytes
    ram_static = sizes.model_data + sizes.model_bss + (0 if arena_in_bss else library.arena_bytes)
    return {
        "flash_bytes": flash, "text_bytes": sizes.model_text, "rodata_bytes": sizes.model_rodata,
        "data_bytes": sizes.model_data, "bss_bytes": sizes.model_bss,
        "arena_bytes": library.arena_bytes, "arena_lower_bound": library.arena_lower_bound,
        "arena_ratio": round(library.arena_bytes / library.arena_lower_bound, 4) if library.arena_lower_bound else None,
        "weight_bytes": library.weight_bytes, "io_bytes": io_bytes(library),
        "peak_stack_bytes": peak_stack,
        "ram_bytes": ram_static + (peak_stack or 0),
        "program_flash_bytes": sizes.text, "program_ram_bytes": sizes.data + sizes.bss + board.stack_bytes,
        "board_flash_bytes": board.flash_bytes, "board_ram_bytes": board.ram_bytes,
    }


def verify_artifact(model: Model, artifact: McuArtifact, data: Any) -> dict[str, Any]:
    """The board's outputs on one sample against onnxruntime on the same Q/DQ model.

    ``max_diff_steps``: the largest difference of any output element, in quantization steps
    of that output (0 = bit-exact)."""
    from ...ir import evaluate

    try:
        feed = (next(iter(DataSource.open(data, model).feeds(batch=1, limit=1))) if data is not None
                else random_feeds(model, 1, seed=0)[0])
    except PressoError as exc:
        return {"skipped": str(exc)}
    reference = evaluate(model, feed)
    values = artifact.run(feed)
    return {"samples": 1, "against": "onnxruntime on the same Q/DQ model", "real_data": data is not None,
            "max_diff_steps": max_diff_steps(artifact.manifest["outputs"], reference, values)}


def max_diff_steps(specs: list[dict[str, Any]], reference: Mapping[str, np.ndarray],
                   values: Mapping[str, np.ndarray]) -> int:
    worst = 0
    for spec in specs:
        ref = np.asarray(reference[spec["name"]], dtype=np.float64)
        got = np.asarray(values[spec["name"]], dtype=np.float64).reshape(ref.shape)
        scale = spec.get("scale") if np.issubdtype(np.dtype(spec["model_dtype"]), np.floating) else None
        diff = np.abs(got - ref) / (scale or 1.0)
        worst = max(worst, int(np.rint(diff.max())) if diff.size else 0)
    return worst


BACKEND = McuBackend()

__all__ = ["BACKEND", "McuBackend", "check_fit", "checked_model", "max_diff_steps", "memory_report",
           "verify_artifact"]

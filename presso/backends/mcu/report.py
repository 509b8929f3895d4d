"""What the command line says about Cortex-M models: a compiled artifact, and whether a model fits.

:func:`describe_artifact` is ``presso compile``'s summary of an MCU artifact (files, tensors,
flash, RAM, arena against its lower bound, instructions per inference, agreement with
onnxruntime). :func:`fit_report` is ``presso inspect MODEL --target cortex-m4``: the nodes
without an integer kernel and, for a quantized model, the real figures of the generated
library (weights, arena) and — when the toolchain is installed — of the linked program
against the board's flash and RAM. A float model gets an estimate (int8 weights, int8
activations) and the advice to quantize it with the target's scheme. Activation sizes need
static input shapes: for a model with a dynamic input (a symbolic batch) the report says so
and how to fix them (``--shape NAME=…``) instead of an estimate from the tensors whose
shapes happen to be known.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...ir import Model
from ...ir.analysis.batch import shape_hint
from ...ir.analysis.shapes import dynamic_inputs
from ...ir.errors import PressoError
from ...ir.table import format_table, human_bytes
from ..target import Target
from .boards import Board, get_board


def describe_artifact(manifest: dict[str, Any], folder: str) -> str:
    board = manifest.get("board", {})
    lines = [f"compiled for target '{manifest.get('target')}' ({board.get('cpu')}, QEMU -M {board.get('machine')}) "
             f"→ {folder}"]
    tensors = [[kind, s["name"], s["dtype"], "×".join(map(str, s["shape"])),
                "-" if s.get("scale") is None else f"{s['scale']:.6g}", s.get("zero_point", "-")]
               for kind, key in (("input", "inputs"), ("output", "outputs")) for s in manifest.get(key, [])]
    lines += ["", format_table(["", "tensor", "dtype", "shape", "scale", "zero point"], tensors)]
    memory = manifest.get("memory", {})
    if memory:
        lines += ["", *memory_lines(memory)]
    if manifest.get("instructions_per_inference") is not None:
        lines.append(f"instructions per inference: {manifest['instructions_per_inference']:,} "
                     "(QEMU -icount, SysTick; not cycles)")
    check = manifest.get("verification")
    if check and "max_diff_steps" in check:
        lines.append(f"verified against {check['against']} on 1 {'real' if check['real_data'] else 'random'} sample: "
                     f"max difference {check['max_diff_steps']} quantization step(s)")
    elif check:
        lines.append(f"verification skipped: {check.get('skipped')}")
    return "\n".join(lines)


def memory_lines(memory: dict[str, Any]) -> list[str]:
    stack = memory.get("peak_stack_bytes")
    ram_parts = f"arena {human_bytes(memory['arena_bytes'])}, data {human_bytes(memory['data_bytes'])}, " \
                f"bss {human_bytes(memory['bss_bytes'])} incl. the arena" + \
                (f", peak stack {human_bytes(stack)}" if stack is not None else ", stack not measured")
    io = f"; the caller's input/output buffers: {human_bytes(memory['io_bytes'])}" if memory.get("io_bytes") else ""
    lines = [
        f"flash  {human_bytes(memory['flash_bytes'])} (text {human_bytes(memory['text_bytes'])} + rodata "
        f"{human_bytes(memory['rodata_bytes'])}) of {human_bytes(memory['board_flash_bytes'])}",
        f"RAM    {human_bytes(memory['ram_bytes'])} ({ram_parts}) of {human_bytes(memory['board_ram_bytes'])}{io}",
    ]
    if memory.get("arena_lower_bound"):
        lines.append(f"arena  {memory['arena_bytes']:,} bytes = {memory['arena_ratio']:.3f}× the liveness lower bound "
                     f"({memory['arena_lower_bound']:,} bytes live at once)")
    return lines


# ---- presso bench on an MCU artifact ------------------------------------------------------------
def board_bench_facts(artifact, runs, reference=None, outputs=None) -> dict[str, Any]:
    """What ``presso bench`` reports for an MCU artifact beside agreement: its flash and RAM
    (with the peak stack measured on the benchmark's samples), instructions per inference, and
    the largest difference from the baseline in quantization steps of the artifact's outputs."""
    from .backend import max_diff_steps

    memory = dict(artifact.manifest.get("memory", {}))
    steps = None
    specs = artifact.manifest.get("outputs", [])
    if reference and outputs and all(spec["name"] in ref for spec in specs for ref in reference):
        steps = max(max_diff_steps(specs, ref, out) for ref, out in zip(reference, outputs))
    instructions = sorted(r.instructions for r in runs)
    if runs:
        stack = max(r.stack_bytes for r in runs)
        memory["ram_bytes"] = memory.get("ram_bytes", 0) - (memory.get("peak_stack_bytes") or 0) + stack
        memory["peak_stack_bytes"] = stack
    return {"target": artifact.manifest.get("target"), "machine": artifact.manifest.get("board", {}).get("machine"),
            "memory": memory, "samples": len(runs), "max_diff_steps": steps,
            "instructions": {"median": instructions[len(instructions) // 2], "min": instructions[0],
                             "max": instructions[-1]} if instructions else None}


def board_bench_lines(name: str, facts: dict[str, Any]) -> list[str]:
    lines = [f"{name}: {facts['target']} on QEMU -M {facts['machine']}"]
    lines += [f"  {line}" for line in memory_lines(facts["memory"])]
    count = facts.get("instructions")
    if count:
        spread = "" if count["min"] == count["max"] else f" (min {count['min']:,}, max {count['max']:,})"
        lines.append(f"  {count['median']:,} instructions per inference, median of {facts['samples']} "
                     f"sample(s){spread}")
    if facts.get("max_diff_steps") is not None:
        lines.append(f"  largest difference from the baseline: {facts['max_diff_steps']} quantization step(s) of the "
                     "outputs (0 = bit-exact)")
    return lines


# ---- inspect --target cortex-m* ---------------------------------------------------------------
def fit_report(model: Model, target: Target) -> dict[str, Any]:
    """Whether ``model`` fits ``target``'s board and which nodes have no integer kernel."""
    from ..onnxruntime.int8_form import is_quantized
    from . import toolchain

    board = get_board(target)
    report: dict[str, Any] = {"target": target.name, "machine": board.machine,
                              "board_flash_bytes": board.flash_bytes, "board_ram_bytes": board.ram_bytes,
                              "weights_region_bytes": board.flash.size, "stack_reserve_bytes": board.stack_bytes}
    quantized = is_quantized(model)
    dynamic = dynamic_inputs(model)
    if dynamic:  # activation sizes (the arena) and the integer kernels depend on every input dim
        name, dims = next(iter(dynamic.items()))
        shown = "of unknown rank" if dims is None else "×".join(map(str, dims))
        needs = "the arena and the op check need" if quantized else "the arena estimate needs"
        report["needs_shapes"] = f"{needs} static input shapes, and input '{name}' is {shown}: pass " \
                                 f"{shape_hint(name, dims)}"
    if not quantized:
        report.update(_float_estimate(model, board, arena=not dynamic), quantized=False, unsupported=[],
                      advice=f'quantize it first: presso.quantize(model, data, target="{target.name}")')
        return report
    if dynamic:
        report.update(quantized=True, fits=None)
        return report
    from .backend import checked_model, io_bytes
    from .codegen import generate_c_library, unsupported_nodes

    report["quantized"] = True
    try:
        unsupported = unsupported_nodes(model)
    except PressoError as exc:
        report.update(unsupported=[], error=str(exc))
        return report
    report["unsupported"] = [{"node": n, "op": op, "reason": why} for n, op, why in unsupported]
    if unsupported:
        return report
    try:
        library = generate_c_library(checked_model(model, target), target)
    except PressoError as exc:
        report["error"] = str(exc)
        return report
    report.update(weight_bytes=library.weight_bytes, arena_bytes=library.arena_bytes,
                  arena_lower_bound=library.arena_lower_bound, measured="generated library")
    report["fits"] = (library.weight_bytes <= board.flash.size
                      and library.arena_bytes + io_bytes(library) <= board.ram.size - board.stack_bytes)
    ok, why = toolchain.available()
    if not ok:
        report["link"] = f"not linked: {why}"
        return report
    report.update(_link(library, board))
    return report


def _float_estimate(model: Model, board: Board, *, arena: bool = True) -> dict[str, Any]:
    """int8 weights and (with ``arena``: the model's input shapes are static) arena of a float
    model once quantized. Without the arena, ``fits`` is False when the weights alone exceed
    the flash, else None (unknown)."""
    from ...ir.analysis.summary import summarize
    from ...passes import PassContext, PassManager

    # weights that the graph computes from small constants (ConstantOfShape, Expand…) count
    # once folded, as the target's preparation folds them
    from ...ir.evaluate import ort_logs

    model = model.copy()
    try:
        with ort_logs():  # onnxruntime's own lines from folding go to the presso loggers
            PassManager.parse("constants-to-initializers,fold-constants,eliminate-dead-code").run(
                model, ctx=PassContext(progress=False))
    except PressoError:
        pass
    summary = summarize(model)
    params = int(summary["params"])
    # int8 weights (biases, scales and multipliers add a few percent); int8 activations are a
    # quarter of float32's peak of simultaneously live tensors
    weights = params
    if not arena:
        return {"weight_bytes": weights, "measured": "estimate for the int8 model",
                "fits": False if weights > board.flash.size else None}
    arena_bytes = int(summary["peak_activation_bytes"]) // 4
    return {"weight_bytes": weights, "arena_bytes": arena_bytes, "measured": "estimate for the int8 model",
            "fits": weights <= board.flash.size and arena_bytes <= board.ram.size - board.stack_bytes}


def _link(library, board: Board) -> dict[str, Any]:
    """Build the real program in a scratch folder: the linker decides whether it fits."""
    from . import toolchain
    from .artifact import write_sources
    from .backend import memory_report

    folder = Path(tempfile.mkdtemp(prefix="presso-mcu-fit-"))
    try:
        sources = write_sources(folder, library, board)
        try:
            elf = toolchain.build(folder, board, sources)
        except PressoError as exc:
            return {"fits": False, "link": str(exc)}
        memory = memory_report(library, toolchain.elf_sizes(elf), board, peak_stack=None)
        return {"fits": True, "link": "linked", "memory": memory, "measured": "linked program"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def render_fit(report: dict[str, Any]) -> list[str]:
    lines = [f"{report['target']} (QEMU -M {report['machine']}): flash {human_bytes(report['board_flash_bytes'])}, "
             f"RAM {human_bytes(report['board_ram_bytes'])} ({human_bytes(report['stack_reserve_bytes'])} "
             "reserved for the stack)"]
    if not report.get("quantized"):
        lines.append(f"float model: {report['advice']}; then inspect the int8 model for the exact op check")
    if report.get("error"):
        lines.append(f"cannot generate the library: {report['error']}")
    if report.get("needs_shapes"):
        lines.append(f"not estimated: {report['needs_shapes']}")
    if report.get("unsupported"):
        rows = [[u["node"], u["op"], u["reason"]] for u in report["unsupported"]]
        lines += [f"{len(rows)} node(s) have no Cortex-M integer kernel:", format_table(["node", "op", "why"], rows)]
    elif report.get("quantized") and not report.get("error") and not report.get("needs_shapes"):
        lines.append("every node has an integer kernel")
    if "memory" in report:
        lines += memory_lines(report["memory"])
    elif "arena_bytes" in report:
        lines.append(f"weights {human_bytes(report['weight_bytes'])}, arena {human_bytes(report['arena_bytes'])} "
                     f"({report['measured']})")
    elif "weight_bytes" in report:
        lines.append(f"weights {human_bytes(report['weight_bytes'])} ({report['measured']}; arena not estimated)")
    if report.get("link") and report["link"] != "linked":
        lines.append(report["link"])
    if "fits" in report and report["fits"] is None:
        lines.append("verdict: unknown until the input shapes are fixed (--shape, see above)")
    elif "fits" in report:
        verdict = "fits" if report["fits"] else "does NOT fit"
        lines.append(f"verdict: the model {verdict} the {report['target']} board ({report['measured']})")
    return lines


__all__ = ["board_bench_facts", "board_bench_lines", "describe_artifact", "fit_report", "memory_lines",
           "render_fit"]

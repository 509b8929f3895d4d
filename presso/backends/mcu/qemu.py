"""Run a Cortex-M artifact's ELF on its emulated board with ``qemu-system-arm``.

``run_elf`` starts ``qemu-system-arm -M BOARD -icount shift=0 -semihosting ... -kernel
model.elf`` in a working folder that holds ``input0.bin``…, waits for it with a timeout, and
parses the harness's per-sample lines (status, SysTick ticks, peak stack). Under ``-icount
shift=0`` every instruction advances the virtual clock by 1 ns, so ticks convert to an exact,
repeatable instruction count (:meth:`Board.instructions`).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...ir.errors import BackendError
from .boards import Board
from .toolchain import Toolchain, require

ICOUNT_SHIFT = 0
DEFAULT_TIMEOUT_S = 600.0

_SAMPLE = re.compile(r"presso: sample=(\d+) status=(-?\d+) ticks=(\d+):(\d+) stack=(\d+)")


@dataclass(frozen=True)
class SampleRun:
    """One ``presso_model_run`` call on the board."""

    status: int
    ticks: int
    instructions: int
    stack_bytes: int


def qemu_command(board: Board, elf: str | Path, *, qemu: str = "qemu-system-arm") -> list[str]:
    return [qemu, "-M", board.machine, "-nographic", "-monitor", "none", "-serial", "none",
            "-icount", f"shift={ICOUNT_SHIFT}", "-semihosting-config", "enable=on,target=native",
            "-kernel", str(elf)]


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGKILL when the parent dies, so an interrupted
    benchmark or test leaves no emulator running on (its timeout dies with the parent)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_elf(elf: Path, board: Board, workdir: Path, *, timeout: float = DEFAULT_TIMEOUT_S,
            toolchain: Toolchain | None = None) -> list[SampleRun]:
    """Run ``elf`` in ``workdir`` (holding the input files) and return one record per sample.

    Raises :class:`BackendError` when QEMU is missing, the program faults or reports an
    error, or it runs past ``timeout`` seconds.
    """
    toolchain = toolchain or require()
    cmd = qemu_command(board, Path(elf).resolve(), qemu=toolchain.qemu)
    try:
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"the model did not finish on {board.machine} within {timeout:.0f} s",
                           where=str(elf), hint="give a longer timeout, or check the model with fewer samples") from exc
    out = done.stdout + done.stderr
    samples = []
    for match in _SAMPLE.finditer(out):
        ticks = (int(match.group(3)) << 32) | int(match.group(4))
        samples.append(SampleRun(status=int(match.group(2)), ticks=ticks,
                                 instructions=board.instructions(ticks, ICOUNT_SHIFT),
                                 stack_bytes=int(match.group(5))))
    if done.returncode != 0:
        problems = [line for line in out.splitlines() if line.startswith("presso: ") and "sample=" not in line]
        why = problems[0].removeprefix("presso: ") if problems else (out.strip().splitlines() or ["no output"])[-1]
        if samples and samples[-1].status != 0:
            why = f"presso_model_run returned {samples[-1].status} on sample {len(samples) - 1}"
        raise BackendError(f"the model failed on {board.machine} (qemu exit status {done.returncode}): {why}",
                           where=str(elf), hint="rebuild the artifact; if it persists, report it with the folder")
    return samples


__all__ = ["DEFAULT_TIMEOUT_S", "ICOUNT_SHIFT", "SampleRun", "qemu_command", "run_elf"]

"""The cross toolchain and emulator for Cortex-M artifacts: find them, build an ELF, size it.

Needs the Debian packages ``gcc-arm-none-eabi`` (12.2), ``libnewlib-arm-none-eabi`` (newlib
and its semihosting ``rdimon`` library) and ``qemu-system-arm`` (7.2). A missing one raises a
:class:`BackendError` that says what to install, before any work is done.

The build is the Makefile's (:func:`makefile` writes the same commands): model sources into
``build/model/*.o``, the harness (``runtime/main.c``, ``runtime/startup.c``) into
``build/harness/*.o``, linked with the board's linker script, ``--specs=rdimon.specs
-nostartfiles`` (semihosting system calls, Presso's own start-up code) and ``--gc-sections``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...ir.errors import BackendError
from .boards import Board

INSTALL_HINT = "install them: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
RUNTIME_DIR = Path(__file__).with_name("runtime")
HARNESS_SOURCES = ("main.c", "startup.c")
ELF_NAME = "model.elf"

# -O2: the kernels' inner loops; sections per function/object so --gc-sections drops what
# the model does not call (the flash figure is what ships).
CFLAGS = ("-O2", "-std=c99", "-ffunction-sections", "-fdata-sections", "-Wall", "-Wno-unused-function")
LDFLAGS = ("--specs=rdimon.specs", "-nostartfiles", "-Wl,--gc-sections", "-Wl,--no-warn-rwx-segments")


@dataclass(frozen=True)
class Toolchain:
    gcc: str
    size: str
    qemu: str


def missing_tools() -> list[str]:
    """The programs that building and running Cortex-M artifacts needs and this machine lacks."""
    missing = [tool for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
               if shutil.which(tool) is None]
    if not missing and not _has_newlib():
        missing.append("newlib for arm-none-eabi (rdimon.specs)")
    return missing


def _has_newlib() -> bool:
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        return False
    found = subprocess.run([gcc, "-print-file-name=rdimon.specs"], capture_output=True, text=True)
    return found.returncode == 0 and Path(found.stdout.strip()).is_file()


def available() -> tuple[bool, str]:
    """Whether Cortex-M artifacts can be built and run here, and if not, why (for skips)."""
    missing = missing_tools()
    if missing:
        return False, f"missing {', '.join(missing)} ({INSTALL_HINT.split(': ', 1)[1]})"
    return True, ""


def require() -> Toolchain:
    """The toolchain, or a :class:`BackendError` naming what is missing and how to install it."""
    missing = missing_tools()
    if missing:
        raise BackendError(f"the Cortex-M backend needs {', '.join(missing)}, which this machine lacks",
                           hint=INSTALL_HINT)
    return Toolchain(gcc=shutil.which("arm-none-eabi-gcc"), size=shutil.which("arm-none-eabi-size"),
                     qemu=shutil.which("qemu-system-arm"))


def linker_script_name(board: Board) -> str:
    return f"{board.machine}.ld"


def build(folder: Path, board: Board, model_sources: list[str], *, toolchain: Toolchain | None = None) -> Path:
    """Compile and link the artifact in ``folder`` (sources already written there) → ``model.elf``.

    ``model_sources``: the model's ``.c`` files (relative to ``folder``); the harness is in
    ``folder/harness``. A link that overflows a memory region raises a :class:`BackendError`
    that says by how much.
    """
    toolchain = toolchain or require()
    objects = []
    for source, obj in _objects(model_sources):
        _run([toolchain.gcc, *board.cflags, *CFLAGS, "-I.", "-c", source, "-o", obj], folder, f"compiling {source}")
        objects.append(obj)
    for source, obj in _objects([f"harness/{name}" for name in HARNESS_SOURCES], "harness"):
        _run([toolchain.gcc, *board.cflags, *CFLAGS, "-I.", "-Iharness", "-c", source, "-o", obj], folder,
             f"compiling {source}")
        objects.append(obj)
    _run([toolchain.gcc, *board.cflags, *LDFLAGS, "-T", linker_script_name(board), *objects, "-o", ELF_NAME,
          "-Wl,-Map=build/model.map"], folder, "linking", board=board)
    return folder / ELF_NAME


def _objects(sources: list[str], kind: str = "model") -> list[tuple[str, str]]:
    """(source, object) pairs as the Makefile's pattern rules name them."""
    if kind == "model":
        return [(source, f"build/model/{Path(source).with_suffix('.o').as_posix()}") for source in sources]
    return [(source, f"build/{kind}/{Path(source).stem}.o") for source in sources]


def _run(cmd: list[str], folder: Path, what: str, board: Board | None = None) -> None:
    for arg in cmd:
        if arg.startswith("build/"):
            (folder / arg).parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if done.returncode == 0:
        return
    message = (done.stderr or done.stdout).strip()
    overflow = re.search(r"region [`']?(\w+)'? overflowed by (\d+) bytes", message)
    if board is not None and (overflow or "RAM overflow" in message):
        region = overflow.group(1) if overflow else "RAM"
        size = {"CODE": board.code, "FLASH": board.flash, "RAM": board.ram}.get(region, board.ram)
        by = f" by {int(overflow.group(2)):,} bytes" if overflow else ""
        raise BackendError(f"the model does not fit the {board.target} board ({board.machine}): its "
                           f"{size.name} ({size.size // 1024:,} KiB) overflows{by}",
                           hint="make it smaller (prune-channels, fewer/lower-bit weights) or pick a board "
                                "with more memory")
    lines = [line for line in message.splitlines() if "error" in line.lower()] or message.splitlines()
    raise BackendError(f"{what} failed: {' / '.join(lines[:3])[:600]}", where=str(folder),
                       hint="this is a bug in the generated C; report it with the artifact folder")


@dataclass(frozen=True)
class ElfSizes:
    """Bytes per section group of the linked ELF: the model's own (``model_*``) and in all."""

    model_text: int
    model_rodata: int
    model_data: int
    model_bss: int
    text: int  # every section in code/flash: vectors, text, rodata, exception tables, .data image
    data: int  # .data (+ .model_data)
    bss: int  # .bss (+ .model_bss)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def elf_sizes(elf: Path, *, toolchain: Toolchain | None = None) -> ElfSizes:
    toolchain = toolchain or require()
    done = subprocess.run([toolchain.size, "-A", str(elf)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BackendError(f"arm-none-eabi-size failed: {done.stderr.strip()}", where=str(elf))
    sections: dict[str, int] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    flash = (".vectors", ".model_text", ".text", ".ARM.extab", ".ARM.exidx", ".model_rodata", ".rodata")
    return ElfSizes(
        model_text=sections.get(".model_text", 0), model_rodata=sections.get(".model_rodata", 0),
        model_data=sections.get(".model_data", 0), model_bss=sections.get(".model_bss", 0),
        text=sum(sections.get(s, 0) for s in flash) + sections.get(".model_data", 0) + sections.get(".data", 0),
        data=sections.get(".model_data", 0) + sections.get(".data", 0),
        bss=sections.get(".model_bss", 0) + sections.get(".bss", 0),
    )


def makefile(board: Board, model_sources: list[str]) -> str:
    """A Makefile that rebuilds ``model.elf`` with the same commands as :func:`build`."""
    model_objs = " ".join(obj for _, obj in _objects(model_sources))
    harness_objs = " ".join(obj for _, obj in _objects([f"harness/{n}" for n in HARNESS_SOURCES], "harness"))
    return f"""\
# Builds {ELF_NAME} for {board.target} ({board.machine}); run it with `make run`
# (reads input0.bin, writes output0.bin through semihosting). Written by Presso.
CC = arm-none-eabi-gcc
CPUFLAGS = {' '.join(board.cflags)}
CFLAGS = {' '.join(CFLAGS)}
LDFLAGS = {' '.join(LDFLAGS)}
MODEL_OBJS = {model_objs}
HARNESS_OBJS = {harness_objs}

{ELF_NAME}: $(MODEL_OBJS) $(HARNESS_OBJS) {linker_script_name(board)}
\t$(CC) $(CPUFLAGS) $(LDFLAGS) -T {linker_script_name(board)} $(MODEL_OBJS) $(HARNESS_OBJS) -o $@ -Wl,-Map=build/model.map

build/model/%.o: %.c model.h
\t@mkdir -p $(dir $@)
\t$(CC) $(CPUFLAGS) $(CFLAGS) -I. -c $< -o $@

build/harness/%.o: harness/%.c harness/harness_config.h model.h
\t@mkdir -p $(dir $@)
\t$(CC) $(CPUFLAGS) $(CFLAGS) -I. -Iharness -c $< -o $@

run: {ELF_NAME}
\tqemu-system-arm -M {board.machine} -nographic -monitor none -icount shift=0 \\
\t\t-semihosting-config enable=on,target=native -kernel {ELF_NAME}

clean:
\trm -rf build {ELF_NAME}

.PHONY: run clean
"""


__all__ = ["ELF_NAME", "ElfSizes", "INSTALL_HINT", "Toolchain", "available", "build", "elf_sizes",
           "linker_script_name", "makefile", "missing_tools", "require"]

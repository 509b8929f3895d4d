"""The emulated boards behind the Cortex-M targets: CPU flags, features and memory maps.

One :class:`Board` per target, each an Arm MPS2/MPS3 FPGA image that ``qemu-system-arm``
(7.2) emulates:

========== ============== =================== ============================================
target     QEMU machine   CPU (gcc flags)     memory the artifact uses
========== ============== =================== ============================================
cortex-m4  ``mps2-an386`` Cortex-M4, FPv4-SP  SSRAM1 4 MiB at 0x0 (code, vectors, const
           (AN386)        single precision,   data: the "flash"); SSRAM2&3 4 MiB at
                          DSP (SIMD32, MAC)   0x20000000 (data, bss, heap, stack)
cortex-m7  ``mps2-an500`` Cortex-M7, FPv5     as AN386 (SSRAM1 / SSRAM2&3, 4 MiB each)
           (AN500)        double precision,
                          DSP
cortex-m55 ``mps3-an547`` Cortex-M55, FPv5    ITCM 512 KiB at 0x0 (vectors, code); QSPI
           (AN547,        double, DSP,        flash 8 MiB at 0x28000000 (const data);
           SSE-300)       Helium (MVE int +   SRAM 4 MiB at 0x21000000 (data, bss, stack)
                          float)
========== ============== =================== ============================================

The maps are QEMU's (``hw/arm/mps2.c``: "AN385/AN386/AN500: 0x00000000 .. 0x003fffff ZBT
SSRAM1, 0x20000000 .. 0x203fffff ZBT SSRAM 2&3"; ``hw/arm/mps2-tz.c`` and ``armsse.c`` for
the AN547: "The SSE-300 has an ITCM at 0x0000_0000 and a DTCM at 0x2000_0000", SRAM 2 MiB at
0x01000000, "sram 2" 4 MiB at 0x21000000, QSPI 8 MiB at 0x28000000 exposed as ROM). The
PSRAM (16 MiB at 0x21000000 on AN386, 0x60000000 on AN500) and the AN547's DDR are left out:
they are external memory, and the budgets here are the on-board ones a model must fit.

SysTick runs from the CPU clock that QEMU gives the board (``SYSCLK_FRQ``: 25 MHz on MPS2,
32 MHz on the AN547). Under ``-icount shift=0`` QEMU advances virtual time by exactly 1 ns
per executed instruction, so instructions = SysTick ticks × 10⁹ / clock: 40 per tick on MPS2,
31.25 on the AN547 (measured: a 2-instruction loop run 10⁶ times reads 50,000 and 64,000
ticks). These are instruction counts, not cycles: QEMU models no pipeline or memory timing,
so the M4 and the M7 count the same for the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...ir.errors import BackendError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class MemoryRegion:
    """A span of the board's address space that the linker script places sections into."""

    name: str
    origin: int
    size: int

    @property
    def end(self) -> int:
        return self.origin + self.size


@dataclass(frozen=True)
class Board:
    """An emulated board: how to compile for its CPU, where memory is, how to run it.

    ``code`` holds the vector table (at address 0, where the core reads its initial stack
    pointer and reset handler) and ``.text``; ``flash`` holds ``.rodata`` (the weights) and
    the load image of ``.data``; both are the same region on MPS2. ``ram`` holds ``.data``,
    ``.bss`` (the arena), the heap newlib's stdio uses and, at its top, the stack.
    """

    target: str
    machine: str  # qemu-system-arm -M
    cpu: str
    cflags: tuple[str, ...]
    features: tuple[str, ...]
    code: MemoryRegion
    flash: MemoryRegion
    ram: MemoryRegion
    sysclk_hz: int
    description: str
    stack_bytes: int = 64 * KiB  # reserved at the top of RAM; the harness measures what is used

    @property
    def shared_flash(self) -> bool:
        """Whether code and const data share one region (MPS2) or not (AN547: ITCM + QSPI)."""
        return self.code == self.flash

    @property
    def flash_bytes(self) -> int:
        return self.flash.size if self.shared_flash else self.code.size + self.flash.size

    @property
    def ram_bytes(self) -> int:
        return self.ram.size

    def instructions(self, ticks: int, icount_shift: int = 0) -> int:
        """SysTick ticks → instructions executed (QEMU ``-icount shift=N``: 2^N ns per instruction)."""
        return round(ticks * 1_000_000_000 / (self.sysclk_hz * (1 << icount_shift)))

    def as_dict(self) -> dict:
        region = lambda r: {"name": r.name, "origin": hex(r.origin), "size": r.size}  # noqa: E731
        return {"machine": self.machine, "cpu": self.cpu, "cflags": list(self.cflags),
                "features": list(self.features), "code": region(self.code), "flash": region(self.flash),
                "ram": region(self.ram), "sysclk_hz": self.sysclk_hz, "stack_bytes": self.stack_bytes}

    def linker_script(self, model_objects: tuple[str, ...] = ("build/model/*.o",)) -> str:
        """A GNU ld script for this board.

        The model's own sections (``model_objects``: input-file patterns) go to output
        sections of their own (``.model_text``, ``.model_rodata``, ``.model_data``,
        ``.model_bss``) so that ``arm-none-eabi-size -A`` reports the model's flash and RAM
        exactly, after ``--gc-sections``, apart from the harness and the C library.
        """
        files = " ".join(model_objects)
        regions = [f"  CODE  (rx)  : ORIGIN = {self.code.origin:#010x}, LENGTH = {self.code.size:#x}"]
        if not self.shared_flash:
            regions.append(f"  FLASH (r)   : ORIGIN = {self.flash.origin:#010x}, LENGTH = {self.flash.size:#x}")
        regions.append(f"  RAM   (rwx) : ORIGIN = {self.ram.origin:#010x}, LENGTH = {self.ram.size:#x}")
        flash = "CODE" if self.shared_flash else "FLASH"
        return _LINKER_TEMPLATE.format(
            target=self.target, machine=self.machine, regions="\n".join(regions), flash=flash,
            files=files, stack=self.stack_bytes)


# .data is linked to run in RAM and load from flash (AT>): the reset handler copies it, as it
# must on a real board (QEMU places the load image at its flash address).
_LINKER_TEMPLATE = """\
/* {target}: qemu-system-arm -M {machine}. Written by Presso (presso/backends/mcu/boards.py). */
MEMORY
{{
{regions}
}}

ENTRY(Reset_Handler)
__stack_size = {stack:#x};

SECTIONS
{{
  .vectors : {{ KEEP(*(.vectors)) }} > CODE
  .model_text : {{ {files}(.text .text.*) }} > CODE
  .text : {{
    *(.text .text.*)
    *(.glue_7) *(.glue_7t) *(.vfp11_veneer) *(.v4_bx)
    KEEP(*(.init)) KEEP(*(.fini))
  }} > CODE
  .ARM.extab : {{ *(.ARM.extab* .gnu.linkonce.armextab.*) }} > CODE
  .ARM.exidx : {{
    __exidx_start = .;
    *(.ARM.exidx* .gnu.linkonce.armexidx.*)
    __exidx_end = .;
  }} > CODE
  .model_rodata : ALIGN(16) {{ {files}(.rodata .rodata.*) }} > {flash}
  .rodata : ALIGN(4) {{
    *(.rodata .rodata.*)
    . = ALIGN(4);
    PROVIDE_HIDDEN(__preinit_array_start = .); KEEP(*(.preinit_array*)) PROVIDE_HIDDEN(__preinit_array_end = .);
    PROVIDE_HIDDEN(__init_array_start = .); KEEP(*(SORT(.init_array.*))) KEEP(*(.init_array*)) PROVIDE_HIDDEN(__init_array_end = .);
    PROVIDE_HIDDEN(__fini_array_start = .); KEEP(*(.fini_array*)) PROVIDE_HIDDEN(__fini_array_end = .);
  }} > {flash}

  .model_data : ALIGN(4) {{
    __model_data_start__ = .; {files}(.data .data.*) . = ALIGN(4); __model_data_end__ = .;
  }} > RAM AT> {flash}
  __model_data_load__ = LOADADDR(.model_data);
  .data : ALIGN(4) {{ __data_start__ = .; *(.data .data.*) . = ALIGN(4); __data_end__ = .; }} > RAM AT> {flash}
  __data_load__ = LOADADDR(.data);

  .model_bss (NOLOAD) : ALIGN(16) {{
    __model_bss_start__ = .; {files}(.bss .bss.* COMMON) . = ALIGN(4); __model_bss_end__ = .;
  }} > RAM
  .bss (NOLOAD) : ALIGN(4) {{ __bss_start__ = .; *(.bss .bss.*) *(COMMON) . = ALIGN(4); __bss_end__ = .; }} > RAM

  . = ALIGN(8);
  end = .;
  PROVIDE(_end = .);
  PROVIDE(__end__ = .);
  __stack_top = ORIGIN(RAM) + LENGTH(RAM);
  __stack_limit = __stack_top - __stack_size;
  PROVIDE(__heap_limit = __stack_limit);
  ASSERT(end <= __stack_limit, "RAM overflow: .data + .bss do not fit below the reserved stack")
}}
"""

_MPS2_SSRAM1 = MemoryRegion("ssram1", 0x00000000, 4 * MiB)
_MPS2_SSRAM23 = MemoryRegion("ssram2_3", 0x20000000, 4 * MiB)

BOARDS: dict[str, Board] = {board.target: board for board in (
    Board(
        target="cortex-m4", machine="mps2-an386", cpu="cortex-m4",
        cflags=("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
        features=("fpv4-sp", "dsp"),
        code=_MPS2_SSRAM1, flash=_MPS2_SSRAM1, ram=_MPS2_SSRAM23, sysclk_hz=25_000_000,
        description="Arm MPS2 AN386 (Cortex-M4, FPv4 single-precision FPU, DSP), 4 MiB code + 4 MiB data SRAM",
    ),
    Board(
        target="cortex-m7", machine="mps2-an500", cpu="cortex-m7",
        cflags=("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
        features=("fpv5-dp", "dsp"),
        code=_MPS2_SSRAM1, flash=_MPS2_SSRAM1, ram=_MPS2_SSRAM23, sysclk_hz=25_000_000,
        description="Arm MPS2 AN500 (Cortex-M7, FPv5 double-precision FPU, DSP), 4 MiB code + 4 MiB data SRAM",
    ),
    Board(
        target="cortex-m55", machine="mps3-an547", cpu="cortex-m55",
        # -mcpu=cortex-m55 enables MVE (Helium) integer and float, FPv5 double and DSP
        cflags=("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
        features=("fpv5-dp", "dsp", "helium"),
        code=MemoryRegion("itcm", 0x00000000, 512 * KiB),
        flash=MemoryRegion("qspi", 0x28000000, 8 * MiB),
        ram=MemoryRegion("sram2", 0x21000000, 4 * MiB),
        sysclk_hz=32_000_000,
        description="Arm MPS3 AN547 (SSE-300, Cortex-M55, FPv5 double-precision FPU, DSP, Helium MVE), "
                    "512 KiB ITCM + 8 MiB QSPI flash + 4 MiB SRAM",
    ),
)}


def get_board(target: str) -> Board:
    """The board a Cortex-M target emulates on (``target``: a name or a Target)."""
    name = getattr(target, "name", target)
    if name not in BOARDS:
        raise BackendError(f"no emulated board for target '{name}'",
                           hint="Cortex-M targets: " + ", ".join(BOARDS))
    return BOARDS[name]


__all__ = ["BOARDS", "Board", "MemoryRegion", "get_board"]

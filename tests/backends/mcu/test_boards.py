"""The board side of the Cortex-M backend, on hand-written model libraries (no code generator).

Every board builds the fixture (tests/backends/mcu/fixtures: one int8 dense layer in the
model.h API) and runs it in QEMU; the outputs are checked against the same integer math in
numpy. Small C programs check what the harness measures: instruction counts (a loop of a
known number of instructions), the peak stack (a known stack buffer), faults, and the
linker's memory budget.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from presso.backends.mcu import toolchain
from presso.backends.mcu.artifact import McuArtifact, harness_config, port_spec, write_sources
from presso.backends.mcu.boards import BOARDS, get_board
from presso.backends.mcu.codegen import CLibrary, TensorPort
from presso.ir.errors import BackendError

FIXTURES = Path(__file__).with_name("fixtures")
AVAILABLE, WHY = toolchain.available()
needs_toolchain = pytest.mark.skipif(not AVAILABLE, reason=f"Cortex-M toolchain: {WHY}")

WEIGHTS = np.array([[12, -7, 33, 0, -128, 5, 90, -1], [-3, 44, -60, 17, 8, 127, -20, 2],
                    [100, 100, -100, -100, 50, -50, 25, -25], [1, 2, 3, 4, 5, 6, 7, 8]], np.int64)
BIAS = np.array([150, -2000, 37, 0], np.int64)
IN_PORT = TensorPort("x", (1, 8), "int8", 0.05, -3)
OUT_PORT = TensorPort("y", (1, 4), "int8", 0.1, 2)
HEADER = (FIXTURES / "model.h").read_text()


def fixture_library(source: str | None = None, header: str = HEADER) -> CLibrary:
    return CLibrary(sources={"model.c": source or (FIXTURES / "model.c").read_text(), "model.h": header},
                    inputs=[IN_PORT], outputs=[OUT_PORT], arena_bytes=16, arena_lower_bound=16, weight_bytes=48)


def build_artifact(tmp_path: Path, target: str, library: CLibrary) -> McuArtifact:
    board = get_board(target)
    folder = tmp_path / target
    folder.mkdir()
    toolchain.build(folder, board, write_sources(folder, library, board))
    manifest = {"target": target, "files": {"elf": toolchain.ELF_NAME},
                "inputs": [port_spec(IN_PORT, "float32")], "outputs": [port_spec(OUT_PORT, "float32")]}
    return McuArtifact(manifest, folder, timeout=60)


def reference(q: np.ndarray) -> np.ndarray:
    """The fixture's integer math: int32 accumulation, Q31 multiplier 0.01 with a rounding shift."""
    acc = BIAS + (q.astype(np.int64) - IN_PORT.zero_point) @ WEIGHTS.T
    product = acc * 1374389535
    out = ((product + (1 << 36)) >> 37) + OUT_PORT.zero_point
    return np.clip(out, -128, 127)


@needs_toolchain
@pytest.mark.parametrize("target", sorted(BOARDS))
def test_fixture_runs_on_every_board(tmp_path, target):
    artifact = build_artifact(tmp_path, target, fixture_library())
    x = np.random.default_rng(0).uniform(-6, 6, (5, 8)).astype(np.float32)
    got = artifact.run({"x": x})["y"]
    q = np.clip(np.rint(x / IN_PORT.scale) + IN_PORT.zero_point, -128, 127)
    expected = (reference(q) - OUT_PORT.zero_point) * np.float32(OUT_PORT.scale)
    assert got.dtype == np.float32 and got.shape == (5, 4)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert len(artifact.last_runs) == 5
    assert all(r.status == 0 and r.instructions > 0 and 0 < r.stack_bytes < 1024 for r in artifact.last_runs)


LOOP_MODEL = """\
#include "model.h"
/* exactly 2 instructions per iteration (subs, bne) */
int presso_model_run(const int8_t *input, int8_t *output) {
    unsigned n = (unsigned)(uint8_t)input[0] * 10000u;
    __asm volatile("1: subs %0, %0, #1\\n bne 1b" : "+r"(n) : : "cc");
    output[0] = 0;
    return 0;
}
"""


@needs_toolchain
@pytest.mark.parametrize("target", sorted(BOARDS))
def test_instruction_count_is_exact_to_a_systick_tick(tmp_path, target):
    artifact = build_artifact(tmp_path, target, fixture_library(LOOP_MODEL))
    samples = [[np.full((1, 8), k, np.int8)] for k in (10, 20, 40)]
    artifact.run_samples(samples)
    counts = [r.instructions for r in artifact.last_runs]
    per_tick = 1e9 / BOARDS[target].sysclk_hz
    for k, count in zip((10, 20, 40), counts):
        loop = 2 * k * 10000
        assert loop <= count <= loop + 100 + 2 * per_tick, (k, count)
    # QEMU -icount is deterministic: the same samples in a new QEMU start count the same
    artifact.run_samples(samples)
    assert [r.instructions for r in artifact.last_runs] == counts


STACK_MODEL = """\
#include "model.h"
#include <string.h>
static __attribute__((noinline)) int deep(const int8_t *input) {
    volatile int8_t buffer[6000];
    memset((void *)buffer, input[0], sizeof buffer);
    return buffer[5999] + buffer[0];
}
int presso_model_run(const int8_t *input, int8_t *output) {
    output[0] = (int8_t)deep(input);
    return 0;
}
"""


@needs_toolchain
def test_peak_stack_is_measured(tmp_path):
    artifact = build_artifact(tmp_path, "cortex-m4", fixture_library(STACK_MODEL))
    artifact.run_samples([[np.full((1, 8), 3, np.int8)]])
    assert 6000 <= artifact.last_runs[0].stack_bytes < 6000 + 128


@needs_toolchain
@pytest.mark.parametrize("target, message", [("cortex-m4", "overflowed the 65536-byte stack"),
                                             ("cortex-m55", "fault: exception")])  # MSPLIM on v8-M
def test_stack_overflow_is_caught(tmp_path, target, message):
    source = STACK_MODEL.replace("buffer[6000]", "buffer[70000]").replace("buffer[5999]", "buffer[69999]")
    artifact = build_artifact(tmp_path, target, fixture_library(source))
    with pytest.raises(BackendError, match=message):
        artifact.run_samples([[np.full((1, 8), 3, np.int8)]])


FAULT_MODEL = """\
#include "model.h"
int presso_model_run(const int8_t *input, int8_t *output) {
    (void)input; (void)output;
    __asm volatile("udf #0");
    return 0;
}
"""


@needs_toolchain
def test_a_fault_stops_the_board_with_a_clear_error(tmp_path):
    artifact = build_artifact(tmp_path, "cortex-m7", fixture_library(FAULT_MODEL))
    with pytest.raises(BackendError, match=r"fault: exception 0x00000003 at pc 0x"):
        artifact.run_samples([[np.zeros((1, 8), np.int8)]])


@needs_toolchain
def test_a_failing_model_status_is_reported(tmp_path):
    source = (FIXTURES / "model.c").read_text().replace("    return 0;\n}", "    return 7;\n}")
    artifact = build_artifact(tmp_path, "cortex-m4", fixture_library(source))
    with pytest.raises(BackendError, match="presso_model_run returned 7"):
        artifact.run_samples([[np.zeros((1, 8), np.int8)]])


@needs_toolchain
@pytest.mark.parametrize("target, region", [("cortex-m4", "ssram1"), ("cortex-m55", "qspi")])
def test_weights_beyond_the_flash_do_not_link(tmp_path, target, region):
    board = BOARDS[target]
    big = f"static const int8_t big[{board.flash.size + 4096}] = {{1}};\n"
    source = (FIXTURES / "model.c").read_text().replace("static int32_t arena", big + "static int32_t arena")
    source = source.replace("return 0;\n}", "return big[input[0] & 1];\n}")
    with pytest.raises(BackendError, match=rf"does not fit the {target} board .*{region}.* overflows"):
        build_artifact(tmp_path, target, fixture_library(source))


@needs_toolchain
def test_makefile_rebuilds_the_same_program(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    artifact = build_artifact(tmp_path, "cortex-m55", fixture_library())
    before = toolchain.elf_sizes(artifact.elf)
    artifact.elf.unlink()
    shutil.rmtree(artifact.folder / "build")
    done = subprocess.run(["make"], cwd=artifact.folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert toolchain.elf_sizes(artifact.elf) == before
    x = np.linspace(-3, 3, 8, dtype=np.float32)[None]
    assert artifact.run({"x": x})["y"].shape == (1, 4)


def test_missing_toolchain_says_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BackendError, match="apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"):
        toolchain.require()
    ok, why = toolchain.available()
    assert not ok and "arm-none-eabi-gcc" in why and "qemu-system-arm" in why


def test_boards_follow_qemus_memory_maps():
    m4, m7, m55 = BOARDS["cortex-m4"], BOARDS["cortex-m7"], BOARDS["cortex-m55"]
    assert (m4.machine, m7.machine, m55.machine) == ("mps2-an386", "mps2-an500", "mps3-an547")
    for board in (m4, m7):  # ZBT SSRAM1 for code, SSRAM2&3 for data, 4 MiB each
        assert (board.code.origin, board.code.size) == (0, 4 << 20)
        assert (board.ram.origin, board.ram.size) == (0x20000000, 4 << 20)
        assert board.shared_flash and board.sysclk_hz == 25_000_000
    assert (m55.code.origin, m55.code.size) == (0, 512 << 10)  # SSE-300 ITCM: vectors and code
    assert (m55.flash.origin, m55.flash.size) == (0x28000000, 8 << 20)  # QSPI (ROM in QEMU)
    assert not m55.shared_flash and m55.flash_bytes == (512 << 10) + (8 << 20)
    assert "helium" in m55.features and "-mfpu=fpv4-sp-d16" in m4.cflags and "-mfpu=fpv5-d16" in m7.cflags
    script = m55.linker_script()
    assert "ORIGIN = 0x28000000" in script and "> RAM AT> FLASH" in script and "KEEP(*(.vectors))" in script


def test_harness_config_calls_inputs_then_outputs():
    two = TensorPort("b", (2, 3), "int8", 1.0, 0)
    text = harness_config([IN_PORT, two], [OUT_PORT])
    assert "#define HARNESS_INPUTS 2" in text and "harness_in1[6]" in text
    assert "presso_model_run((const void *)harness_in0, (const void *)harness_in1, (void *)harness_out0)" in text

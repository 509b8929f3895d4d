"""Build a generated C library with the host gcc and run it (test helper)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from presso.backends.mcu.codegen import CLibrary

GCC = shutil.which("gcc")
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def harness(lib: CLibrary) -> str:
    """A main() that reads every input (int8 bytes) from stdin, runs once per batch of inputs
    until stdin ends, and writes every output to stdout."""
    n_in, n_out = len(lib.inputs), len(lib.outputs)
    ins = [f"in{i}" for i in range(n_in)]
    outs = [f"out{i}" for i in range(n_out)]
    decl = [f"static {'int32_t' if p.dtype == 'int32' else 'int8_t'} in{i}[{p.size}];" for i, p in enumerate(lib.inputs)]
    decl += [f"static int8_t out{i}[{p.size}];" for i, p in enumerate(lib.outputs)]
    reads = " && ".join(f"fread(in{i}, 1, {p.nbytes}, stdin) == {p.nbytes}" for i, p in enumerate(lib.inputs))
    writes = "\n        ".join(f"fwrite(out{i}, 1, {p.size}, stdout);" for i, p in enumerate(lib.outputs))
    return "\n".join([
        "#include <stdio.h>", '#include "model.h"', *decl,
        "int main(void)", "{",
        f"    while ({reads}) {{",
        f"        if (presso_model_run({', '.join(ins + outs)}) != 0) return 1;",
        f"        {writes}",
        "    }", "    return 0;", "}", ""])


def build(lib: CLibrary, folder: Path, extra_flags: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in lib.sources.items():
        (folder / name).write_text(text)
    (folder / "main.c").write_text(harness(lib))
    exe = folder / "model_host"
    proc = subprocess.run([GCC, *CFLAGS, *extra_flags, "-o", str(exe), str(folder / "model.c"), str(folder / "main.c")],
                          capture_output=True, text=True)
    if proc.returncode != 0 or proc.stderr.strip():
        raise AssertionError(f"gcc failed or warned:\n{proc.stderr[:4000]}")
    return exe


def run(exe: Path, lib: CLibrary, feeds: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Run the program on several samples: feeds[k][i] is input i of sample k (int8, or int32
    for an index input)."""
    data = b"".join(np.ascontiguousarray(x, dtype=np.int32 if p.dtype == "int32" else np.int8).tobytes()
                    for sample in feeds for x, p in zip(sample, lib.inputs, strict=True))
    proc = subprocess.run([str(exe)], input=data, capture_output=True, check=True)
    out = np.frombuffer(proc.stdout, dtype=np.int8)
    per = sum(p.size for p in lib.outputs)
    assert out.size == per * len(feeds), (out.size, per, len(feeds))
    results = []
    for k in range(len(feeds)):
        chunk = out[k * per:(k + 1) * per]
        pos, sample = 0, []
        for p in lib.outputs:
            sample.append(chunk[pos:pos + p.size].reshape(p.shape))
            pos += p.size
        results.append(sample)
    return results

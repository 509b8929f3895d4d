"""Run a cross-compiled aarch64 TVM artifact for real under ``qemu-aarch64``.

The runner is ``runner.cc`` (beside this file) built with ``aarch64-linux-gnu-g++`` against
an aarch64 TVM runtime: ``libtvm_runtime.so`` and ``libtvm_ffi.so`` from the aarch64 wheels
of ``apache-tvm`` and ``apache-tvm-ffi`` (the same versions as the host's). ``setup()`` fetches
those wheels with pip into a cache folder (``$PRESSO_TVM_AARCH64`` or
``~/.cache/presso/tvm-aarch64``), extracts the two libraries and the headers, and builds the
runner. Needs the Debian packages ``g++-aarch64-linux-gnu`` and ``qemu-user``.

    python -m presso.backends.tvm.qemu setup     # once
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...ir.errors import BackendError

TRIPLE = "aarch64-linux-gnu"
SYSROOT = Path("/usr") / TRIPLE
_RUNNER_SOURCE = Path(__file__).with_name("runner.cc")


def cache_dir() -> Path:
    return Path(os.environ.get("PRESSO_TVM_AARCH64", Path.home() / ".cache" / "presso" / "tvm-aarch64"))


def missing_tools() -> list[str]:
    """The host tools that running aarch64 artifacts needs and this machine lacks."""
    return [tool for tool in ("qemu-aarch64", f"{TRIPLE}-g++") if shutil.which(tool) is None]


def runner_path() -> Path:
    return cache_dir() / "presso_tvm_runner"


def available() -> tuple[bool, str]:
    """Whether aarch64 artifacts can run here, and if not, why (for skips and errors)."""
    missing = missing_tools()
    if missing:
        return False, f"missing {', '.join(missing)} (apt-get install -y g++-aarch64-linux-gnu qemu-user)"
    if not runner_path().is_file():
        return False, f"no aarch64 TVM runtime in {cache_dir()} (run: python -m presso.backends.tvm.qemu setup)"
    return True, ""


def setup(*, quiet: bool = False) -> Path:
    """Fetch the aarch64 TVM runtime wheels, extract the libraries, build the runner."""
    import importlib.metadata as md

    missing = missing_tools()
    if missing:
        raise BackendError(f"cannot set up the aarch64 runner: missing {', '.join(missing)}",
                           hint="apt-get install -y g++-aarch64-linux-gnu qemu-user")
    root = cache_dir()
    (root / "lib").mkdir(parents=True, exist_ok=True)
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
               "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_27_aarch64",
               "--platform", "manylinux_2_17_aarch64", "--python-version", py,
               f"apache-tvm=={md.version('apache-tvm')}", f"apache-tvm-ffi=={md.version('apache-tvm-ffi')}"]
        done = subprocess.run(cmd, capture_output=quiet, text=True)
        if done.returncode != 0:
            raise BackendError("pip could not download the aarch64 TVM runtime wheels",
                               hint=(done.stderr or "")[-300:] if quiet else None)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    keep_lib = name.endswith(("/lib/libtvm_runtime.so", "/lib/libtvm_ffi.so"))
                    keep_header = name.startswith("tvm_ffi/include/") and not name.endswith("/")
                    if keep_lib:
                        (root / "lib" / Path(name).name).write_bytes(archive.read(name))
                    elif keep_header:
                        target = root / "include" / Path(name).relative_to("tvm_ffi/include")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(name))
    build = subprocess.run(
        [f"{TRIPLE}-g++", "-std=c++17", "-O2", "-I", str(root / "include"), str(_RUNNER_SOURCE),
         "-o", str(runner_path()), "-L", str(root / "lib"), "-ltvm_runtime", "-ltvm_ffi"],
        capture_output=True, text=True)
    if build.returncode != 0:
        raise BackendError("building the aarch64 runner failed", hint=build.stderr[-500:])
    return runner_path()


def run(library: Path, feeds: Mapping[str, np.ndarray], input_names: list[str]) -> list[np.ndarray]:
    """Run ``library`` (an aarch64 Relax VM executable) on ``feeds`` under qemu-aarch64."""
    ok, why = available()
    if not ok:
        raise BackendError(f"cannot run an aarch64 artifact on this machine: {why}",
                           where=str(library), hint="run it on an aarch64 machine, or install the tools")
    with tempfile.TemporaryDirectory() as tmp:
        args = []
        for i, name in enumerate(input_names):
            array = np.ascontiguousarray(feeds[name])
            path = Path(tmp) / f"in{i}.bin"
            array.tofile(path)
            args.append(f"{path}:{array.dtype.name}:{','.join(str(d) for d in array.shape)}")
        env = dict(os.environ, LD_LIBRARY_PATH=str(cache_dir() / "lib"))
        done = subprocess.run(["qemu-aarch64", "-L", str(SYSROOT), str(runner_path()), str(library), tmp, *args],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BackendError(f"the aarch64 runner failed under qemu: {done.stderr.strip()[-400:]}",
                               where=str(library))
        outputs = []
        for meta in sorted(Path(tmp).glob("out*.txt"), key=lambda p: int(p.stem[3:])):
            dtype, _, dims = meta.read_text().strip().partition(" ")
            shape = [int(d) for d in dims.split(",") if d]
            outputs.append(np.fromfile(meta.with_suffix(".bin"), dtype=np.dtype(dtype)).reshape(shape))
        return outputs


if __name__ == "__main__":
    if sys.argv[1:] != ["setup"]:
        sys.exit("usage: python -m presso.backends.tvm.qemu setup")
    print(setup())

"""The TVM backend: ONNX → Relax → scheduled kernels → a shared library for x86, ARM64 or CUDA.

``presso compile IN.onnx --backend tvm --target cpu-x86|cpu-arm64|cuda [--shape ...] [--tune trials=N]``.
Modules: :mod:`.lower` (cleanup passes + Relax import with node-named errors), :mod:`.build`
(fusion, schedules, export), :mod:`.schedule` (untuned CPU schedules), :mod:`.tune`
(MetaSchedule with a reusable database), :mod:`.artifact` (the folder), :mod:`.qemu` (running
aarch64 artifacts under qemu-aarch64). Importing this package needs ``apache-tvm``
(``pip install 'presso[tvm]'``).
"""

import tvm  # noqa: F401  (fail here, with ModuleNotFoundError, when the extra is missing)

from .backend import BACKEND, TVMBackend

__all__ = ["BACKEND", "TVMBackend"]

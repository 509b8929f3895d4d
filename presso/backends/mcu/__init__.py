"""Cortex-M backend: a quantized (Q/DQ int8) model as a self-contained C library.

Compiler side: ``scheme`` holds the quantization scheme and preparation pipeline; ``lower``
turns the Q/DQ graph into integer ops with fixed-point requantization parameters;
``planner`` packs every tensor into one static arena; ``codegen`` writes ``model.c`` /
``model.h`` from Presso's C kernels (``kernels/``) and TVM-generated ones (``tvm_kernels``);
``emulate`` runs the same integer program in numpy. Board side: ``boards``, ``toolchain``,
``qemu``, ``backend``, ``artifact`` and ``report`` build, run and report it on the emulated
boards.
"""

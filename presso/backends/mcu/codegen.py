"""Write a quantized model as a self-contained C99 library (``model.c`` / ``model.h``).

:func:`generate_c_library` lowers a Q/DQ int8 model to integer ops (:mod:`.lower`), packs
its tensors into one static arena (:mod:`.planner`) and writes:

- ``model.h``: ``int presso_model_run(const int8_t *input, int8_t *output)`` (one pointer per
  input and output when there are several: ``input0, input1, …, output0, …``; ``const int32_t *``
  for an integer index input such as magika's bytes), and macros for
  the arena size, the byte size and the quantization of every input and output
  (``PRESSO_INPUT_SIZE``, ``PRESSO_INPUT_SCALE``, ``PRESSO_INPUT_ZERO_POINT``, and the same for
  outputs; ``PRESSO_INPUT0_SIZE``… with several);
- ``model.c``: the int8 kernels it calls (from ``kernels/int8_kernels.c``), the weights,
  biases, multipliers and tables as ``const`` arrays (flash), one ``static`` arena, and
  ``presso_model_run``: the fixed sequence of kernel calls.

No heap, no stdio, no float at run time; pure C99 that compiles without warnings under
``-Wall -Wextra`` with a host gcc or ``arm-none-eabi-gcc``. Gemm/MatMul and unpadded Conv
kernels come from Apache TVM's C code generation when it is installed (:mod:`.tvm_kernels`),
every other op from Presso's C kernels (``kernels=`` chooses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...ir import Model
from ...ir.errors import BackendError
from .lower import Op, Program, lower, unsupported
from .planner import MemoryPlan, plan_memory
from .tvm_kernels import tvm_available

_KERNELS_FILE = Path(__file__).with_name("kernels") / "int8_kernels.c"
# kernels that call another kernel section
_DEPENDS = {"conv": ["requant"], "conv1x1": ["requant"], "dense": ["requant"], "matmul": ["requant"],
            "mul": ["requant"], "mean": ["requant"], "avgpool": ["requant"], "concat": ["requant"]}
_SECTION_ORDER = ["requant", "conv", "conv1x1", "dense", "matmul", "add", "mul", "lut", "mean", "avgpool",
                  "maxpool", "softmax", "concat", "gather", "copy", "gather_rows", "layernorm", "lrn"]


@dataclass(frozen=True)
class TensorPort:
    """One int8 input or output of the generated ``presso_model_run``."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "int8"; "int32" for an index input (magika's bytes), scale 1 and zero point 0
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    @property
    def nbytes(self) -> int:
        return self.size * (4 if self.dtype == "int32" else 1)


@dataclass
class CLibrary:
    """The generated C sources and what a board needs to know about them."""

    sources: dict[str, str]  # file name -> text: "model.c", "model.h"
    inputs: list[TensorPort]
    outputs: list[TensorPort]
    arena_bytes: int  # static arena the planner packed every intermediate tensor into
    arena_lower_bound: int  # largest total of tensors live at one step of the schedule
    weight_bytes: int  # const data (weights, biases, multipliers, tables) in flash
    kernels: dict[str, str] = field(default_factory=dict)  # op -> "tvm" or "c"
    notes: list[str] = field(default_factory=list)  # why a kernel fell back from TVM to C


def unsupported_nodes(model: Model) -> list[tuple[str, str, str]]:
    """(node name, op, reason) for every node the integer kernels cannot run; [] if none."""
    return unsupported(model)


def generate_c_library(model: Model, target=None, *, kernels: str = "auto") -> CLibrary:
    """Lower a Q/DQ int8 model to integer kernels and write it as C.

    ``target`` (a :class:`~presso.backends.target.Target` or ``None``) is accepted for the
    interface; the C is the same for every Cortex-M core. ``kernels``: ``"auto"`` (default,
    when TVM is installed) generates Gemm/MatMul and the convolutions without padding (1×1 and
    valid windows: most of a MobileNet's multiply-accumulates) with Apache TVM
    (:mod:`.tvm_kernels`), and padded convolutions and every other op with Presso's C kernels;
    ``"tvm"`` uses TVM for every Conv too; ``"c"`` uses Presso's C kernels only (also what
    ``"auto"`` does without TVM, and what any layer TVM fails on gets, see
    :attr:`CLibrary.notes`). All compute the same integers.
    Raises :class:`BackendError` for a float model or an op without an integer kernel, naming
    the nodes.
    """
    del target
    if kernels not in ("auto", "tvm", "c"):
        raise BackendError(f"unknown kernel source '{kernels}'", hint="use 'auto', 'tvm' or 'c'")
    program = lower(model)
    plan = plan_memory(program)
    use_tvm = kernels == "tvm" or (kernels == "auto" and tvm_available())
    if kernels == "tvm" and not tvm_available():
        raise BackendError("Apache TVM is not installed", hint="pip install 'presso[tvm]', or use kernels='c'")
    writer = _Writer(program, plan, use_tvm=use_tvm, tvm_everywhere=kernels == "tvm")
    library = writer.write()
    library.notes = writer.tvm_failures
    return library


def _kernel_sections() -> dict[str, str]:
    text = _KERNELS_FILE.read_text()
    parts = re.split(r"/\* @kernel (\w+) \*/\n", text)
    return {parts[i]: parts[i + 1].rstrip() + "\n" for i in range(1, len(parts), 2)}


def _c_array(values: np.ndarray, per_line: int = 24) -> str:
    items = [str(int(v)) for v in np.asarray(values).reshape(-1).tolist()]
    if not items:
        items = ["0"]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "{\n    " + ",\n    ".join(lines) + "\n}"


def _float_literal(value: float) -> str:
    text = repr(float(value))
    return text if ("." in text or "e" in text) else text + ".0"


def _port_params(inputs: list[TensorPort], outputs: list[TensorPort]) -> tuple[list[str], list[str]]:
    def ctype(port: TensorPort) -> str:
        return "int32_t" if port.dtype == "int32" else "int8_t"

    ins = [f"const {ctype(p)} *input" + ("" if len(inputs) == 1 else str(i)) for i, p in enumerate(inputs)]
    outs = [f"{ctype(p)} *output" + ("" if len(outputs) == 1 else str(i)) for i, p in enumerate(outputs)]
    return ins, outs


class _Writer:
    def __init__(self, program: Program, plan: MemoryPlan, use_tvm: bool = False, tvm_everywhere: bool = False):
        self.program = program
        self.plan = plan
        self.use_tvm = use_tvm
        self.tvm_everywhere = tvm_everywhere
        self.tvm_cache: dict[tuple, str | None] = {}
        self.tvm_functions: list[str] = []
        self.tvm_failures: list[str] = []
        self.arrays: list[str] = []
        self.const_names: dict[str, str] = {}
        self.weight_bytes = 0
        self.used: set[str] = set()
        self.kernels: dict[str, str] = {}

    def const(self, base: str, values: np.ndarray, ctype: str) -> str:
        name = f"presso_{base}{len(self.arrays)}"
        dtype = {"int8_t": np.int8, "int32_t": np.int32}[ctype]
        values = np.asarray(values).astype(dtype)
        self.weight_bytes += values.size * values.itemsize
        self.arrays.append(f"static const {ctype} {name}[{max(values.size, 1)}] = {_c_array(values)};")
        return name

    def ptr(self, tensor: str) -> str:
        t = self.program.tensors[tensor]
        if t.data is not None:
            if tensor not in self.const_names:
                self.const_names[tensor] = self.const("c", t.data, "int8_t")
            return self.const_names[tensor]
        kind, port, offset = self.plan.location(tensor)
        if kind == "input":
            return "input" if len(self.program.inputs) == 1 else f"input{port}"
        if kind == "output":
            return "output" if len(self.program.outputs) == 1 else f"output{port}"
        return f"(arena + {offset})"

    def use(self, section: str, op: str) -> None:
        self.used.add(section)
        self.used.update(_DEPENDS.get(section, []))
        self.kernels[op] = "c" if self.kernels.get(op, "c") == "c" else "tvm+c"

    def call(self, op: Op, step: int) -> list[str]:
        p = op.params
        k = op.kind
        if k == "view":
            return []
        x = self.ptr(op.inputs[0])
        y = self.ptr(op.outputs[0]) if op.outputs else ""
        comment = f"    /* {op.node} ({k}) */"
        if k == "conv":
            pointwise = (p["KH"], p["KW"], p["SH"], p["SW"], p["PT"], p["PL"], p["G"]) == (1, 1, 1, 1, 0, 0, 1) \
                and (p["OH"], p["OW"]) == (p["H"], p["W"])
            w = p["weights"]
            if self.use_tvm:
                lines = self.tvm_conv(op, x, y, comment)
                if lines:
                    return lines
            if pointwise:
                bias = p["bias"].astype(np.int64) - p["zx"] * w.reshape(p["M"], -1).astype(np.int64).sum(axis=1)
                if np.all(np.abs(bias) < 2**31):
                    self.use("conv1x1", "Conv")
                    args = [x, y, self.const("w", w, "int8_t"), self.const("b", bias, "int32_t"),
                            self.const("m", p["mult"], "int32_t"), self.const("s", p["shift"], "int32_t"),
                            p["C"], p["H"] * p["W"], p["M"], p["zy"], p["lo"], p["hi"]]
                    return [comment, f"    presso_conv1x1({', '.join(map(str, args))});"]
            self.use("conv", "Conv")
            args = [x, y, self.const("w", w, "int8_t"), self.const("b", p["bias"], "int32_t"),
                    self.const("m", p["mult"], "int32_t"), self.const("s", p["shift"], "int32_t")]
            args += [p[n] for n in ("C", "H", "W", "M", "OH", "OW", "KH", "KW", "SH", "SW", "PT", "PL", "DH",
                                    "DW", "G", "zx", "zy", "lo", "hi")]
            return [comment, f"    presso_conv({', '.join(map(str, args))});"]
        if k == "dense":
            if self.use_tvm:
                lines = self.tvm_dense(op, x, y, comment)
                if lines:
                    return lines
            self.use("dense", "Gemm/MatMul")
            args = [x, y, self.const("w", p["weights"], "int8_t"), self.const("b", p["bias"], "int32_t"),
                    self.const("m", p["mult"], "int32_t"), self.const("s", p["shift"], "int32_t"),
                    p["rows"], p["K"], p["N"], p["zy"], p["lo"], p["hi"]]
            return [comment, f"    presso_dense({', '.join(map(str, args))});"]
        if k == "matmul":
            self.use("matmul", "MatMul")
            args = [x, self.ptr(op.inputs[1]), y] + [p[n] for n in ("batch", "b_step", "M", "K", "N", "za", "zb",
                                                                    "mult", "shift", "zy", "lo", "hi")]
            return [comment, f"    presso_matmul({', '.join(map(str, args))});"]
        if k in ("add", "mul"):
            self.use(k, "Add/Sub" if k == "add" else "Mul")
            dims = self.const("d", np.array(p["dims"]), "int32_t")
            a_st = self.const("d", np.array(p["a_strides"]), "int32_t")
            b_st = self.const("d", np.array(p["b_strides"]), "int32_t")
            args = [x, self.ptr(op.inputs[1]), y, dims, a_st, b_st, p["za"], p["zb"]]
            args += [p["ma"], p["mb"], p["shift"]] if k == "add" else [p["mult"], p["shift"]]
            args += [p["zy"], p["lo"], p["hi"]]
            return [comment, f"    presso_{k}({', '.join(map(str, args))});"]
        if k == "lut":
            self.use("lut", p["ops"])
            table = self.const("t", p["table"], "int8_t")
            n = self.program.tensors[op.outputs[0]].size
            return [f"    /* {op.node} (lookup table: {p['ops']}) */", f"    presso_lut({x}, {y}, {n}, {table});"]
        if k == "mean":
            self.use("mean", "GlobalAveragePool/ReduceMean")
            args = [x, y] + [p[n] for n in ("outer", "count", "zx", "mult", "shift", "zy", "lo", "hi")]
            return [comment, f"    presso_mean({', '.join(map(str, args))});"]
        if k == "avgpool":
            self.use("avgpool", "AveragePool")
            args = [x, y] + [p[n] for n in ("C", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "PT", "PL",
                                            "include_pad", "zx")]
            args += [self.const("m", p["mult"], "int32_t"), self.const("s", p["shift"], "int32_t"), p["zy"],
                     p["lo"], p["hi"]]
            return [comment, f"    presso_avgpool({', '.join(map(str, args))});"]
        if k == "maxpool":
            self.use("maxpool", "MaxPool")
            args = [x, y] + [p[n] for n in ("C", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "PT", "PL")]
            return [comment, f"    presso_maxpool({', '.join(map(str, args))});"]
        if k == "softmax":
            self.use("softmax", "Softmax")
            args = [x, y, p["rows"], p["length"], self.const("t", p["table"], "int32_t"), p["mult"], p["shift"],
                    p["zy"]]
            return [comment, f"    presso_softmax({', '.join(map(str, args))});"]
        if k == "concat":
            lines = [comment]
            for index, (src, part) in enumerate(zip(op.inputs, p["parts"], strict=True)):
                if (step, index) in self.plan.aliased_parts:
                    lines.append(f"    /* input {index} was written in place */")
                    self.kernels.setdefault("Concat", "c")
                    continue
                self.use("concat", "Concat")
                args = [self.ptr(src), y, p["outer"], part["block"], p["out_block"], part["offset"],
                        int(part["copy"]), part["zx"], part["mult"], part["shift"], p["zy"], p["lo"], p["hi"]]
                lines.append(f"    presso_concat_part({', '.join(map(str, args))});")
            return lines
        if k == "gather_rows":
            self.use("gather_rows", "Gather")
            args = [x, y, p["count"], p["rows"], p["row"], self.const("t", p["table"], "int8_t")]
            return [comment, f"    if (presso_gather_rows({', '.join(map(str, args))}) != 0) return 1;"]
        if k == "layernorm":
            self.use("layernorm", "LayerNormalization")
            args = [x, y, p["rows"], p["length"], p["zx"], f"(int64_t){p['eps']}", self.const("m", p["mult"], "int32_t"),
                    self.const("s", p["shift"], "int32_t"), self.const("b", p["beta_q16"], "int32_t"), p["zy"], p["lo"],
                    p["hi"]]
            return [comment, f"    presso_layernorm({', '.join(map(str, args))});"]
        if k == "lrn":
            self.use("lrn", "LRN")
            args = [x, y, p["C"], p["inner"], p["before"], p["after"], p["zx"], self.const("t", p["table"], "int32_t"),
                    p["gbits"], p["zy"], p["lo"], p["hi"]]
            return [comment, f"    presso_lrn({', '.join(map(str, args))});"]
        if k in ("transpose", "slice"):
            self.use("gather", "Transpose/Slice")
            shape, strides = list(p["shape"]), list(p["in_strides"])
            if len(shape) > 6:
                raise BackendError(f"{op.node}: {k} over {len(shape)} axes (at most 6 after merging)")
            src = x if not p.get("offset") else f"{x} + {p['offset']}"
            args = [src, y, len(shape), self.const("d", np.array(shape), "int32_t"),
                    self.const("d", np.array(strides), "int32_t")]
            return [comment, f"    presso_gather({', '.join(map(str, args))});"]
        raise BackendError(f"no C kernel for lowered op '{k}' (node {op.node})")

    def tvm_function(self, key: tuple, build) -> str | None:
        """The name of a TVM-generated kernel for ``key`` (built once), or None if TVM failed."""
        if key not in self.tvm_cache:
            name = f"presso_tvm_{key[0]}{len(self.tvm_cache)}"
            try:
                self.tvm_functions.append(build(name).code)
                self.tvm_cache[key] = name
            except Exception as exc:  # noqa: BLE001 - any TVM failure falls back to Presso's C kernel
                self.tvm_cache[key] = None
                self.tvm_failures.append(f"{key[0]}: {type(exc).__name__}: {str(exc)[:200]}")
        return self.tvm_cache[key]

    def tvm_conv(self, op: Op, x: str, y: str, comment: str) -> list[str] | None:
        from .tvm_kernels import conv_kernel

        p = op.params
        fold = (p["PT"], p["PL"]) == (0, 0) and (p["OH"] - 1) * p["SH"] + (p["KH"] - 1) * p["DH"] < p["H"] \
            and (p["OW"] - 1) * p["SW"] + (p["KW"] - 1) * p["DW"] < p["W"]
        if not fold and not self.tvm_everywhere:
            # a padded window: TVM tests every tap against the border (if_then_else; its loop
            # partitioning does not split these loops), Presso's C kernel clips the window once
            # per output. PP-OCR cls on cortex-m4 (QEMU, instructions per inference): 138.2 M
            # with TVM for every conv, 110.1 M with padded convs in C, 109.2 M all in C.
            return None
        shape_keys = ("C", "H", "W", "M", "OH", "OW", "KH", "KW", "SH", "SW", "PT", "PL", "DH", "DW", "G")
        key = ("conv",) + tuple(p[n] for n in shape_keys) + (fold,)
        name = self.tvm_function(key, lambda fn: conv_kernel(fn, p, fold))
        if name is None:
            return None
        w = p["weights"]
        bias = p["bias"].astype(np.int64)
        if fold:
            bias = bias - p["zx"] * w.reshape(p["M"], -1).astype(np.int64).sum(axis=1)
            if np.any(np.abs(bias) >= 2**31):
                return None
        self.kernels["Conv"] = "tvm" if self.kernels.get("Conv", "tvm") == "tvm" else "tvm+c"
        args = [x, self.const("w", w, "int8_t"), self.const("b", bias, "int32_t"), self.const("m", p["mult"], "int32_t"),
                self.const("s", p["shift"], "int32_t"), p["zx"], p["zy"], p["lo"], p["hi"], y]
        return [comment, f"    {name}({', '.join(map(str, args))});"]

    def tvm_dense(self, op: Op, x: str, y: str, comment: str) -> list[str] | None:
        from .tvm_kernels import dense_kernel

        p = op.params
        key = ("dense", p["rows"], p["K"], p["N"])
        name = self.tvm_function(key, lambda fn: dense_kernel(fn, p))
        if name is None:
            return None
        self.kernels["Gemm/MatMul"] = "tvm" if self.kernels.get("Gemm/MatMul", "tvm") == "tvm" else "tvm+c"
        args = [x, self.const("w", p["weights"], "int8_t"), self.const("b", p["bias"], "int32_t"),
                self.const("m", p["mult"], "int32_t"), self.const("s", p["shift"], "int32_t"), p["zy"], p["lo"],
                p["hi"], y]
        return [comment, f"    {name}({', '.join(map(str, args))});"]

    def write(self) -> CLibrary:
        program, plan = self.program, self.plan
        body: list[str] = []
        for step, op in enumerate(program.ops):
            body.extend(self.call(op, step))
        for tensor, port in plan.copies:
            self.use("copy", "output copy")
            dst = "output" if len(program.outputs) == 1 else f"output{port}"
            body.append(f"    presso_copy({self.ptr(tensor)}, {dst}, {program.tensors[tensor].nbytes});")

        inputs = [self.port(n) for n in program.inputs]
        outputs = [self.port(n) for n in program.outputs]
        header = self.header(inputs, outputs)
        sections = _kernel_sections()
        kernels_text = "\n".join(sections[s] for s in _SECTION_ORDER if s in self.used)
        if self.tvm_functions:
            kernels_text += "\n/* kernels generated by Apache TVM (TIR -> C), one per layer shape */\n"
            kernels_text += "\n".join(self.tvm_functions)
        in_params, out_params = _port_params(inputs, outputs)
        uses_arena = any("arena +" in line for line in body)
        source = [
            "/* Generated by Presso: a quantized model as integer kernels over one static arena. */",
            '#include "model.h"',
            "",
            kernels_text,
            "/* weights, biases, requantization multipliers and tables (flash) */",
            *self.arrays,
            "",
            "/* every intermediate tensor, at offsets fixed by Presso's memory planner */",
            "static union {",
            "    int64_t align;",
            "    int8_t bytes[PRESSO_ARENA_SIZE > 0 ? PRESSO_ARENA_SIZE : 1];",
            "} presso_arena;",
            "",
            f"int presso_model_run({', '.join(in_params + out_params)})",
            "{",
            ("    int8_t *const arena = presso_arena.bytes;" if uses_arena else "    (void)presso_arena;"),
            *body,
            "    return 0;",
            "}",
            "",
        ]
        return CLibrary(sources={"model.c": "\n".join(source), "model.h": header}, inputs=inputs, outputs=outputs,
                        arena_bytes=plan.arena_bytes, arena_lower_bound=plan.lower_bound,
                        weight_bytes=self.weight_bytes, kernels=dict(sorted(self.kernels.items())))

    def port(self, name: str) -> TensorPort:
        t = self.program.tensors[name]
        return TensorPort(name, t.shape, t.dtype, t.scale, t.zero_point)

    def header(self, inputs: list[TensorPort], outputs: list[TensorPort]) -> str:
        lines = [
            "/* Generated by Presso. Inputs and outputs are int8: real = scale * (q - zero_point). */",
            "#ifndef PRESSO_MODEL_H",
            "#define PRESSO_MODEL_H",
            "",
            "#include <stdint.h>",
            "",
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            "",
            f"#define PRESSO_ARENA_SIZE {self.plan.arena_bytes}",
            f"#define PRESSO_NUM_INPUTS {len(inputs)}",
            f"#define PRESSO_NUM_OUTPUTS {len(outputs)}",
        ]
        for kind, ports in (("INPUT", inputs), ("OUTPUT", outputs)):
            for i, port in enumerate(ports):
                tag = kind if len(ports) == 1 else f"{kind}{i}"
                lines += [
                    f"/* {kind.lower()} '{port.name}': {port.dtype}, shape {list(port.shape)} */",
                    f"#define PRESSO_{tag}_SIZE {port.nbytes}",
                    f"#define PRESSO_{tag}_SCALE {_float_literal(port.scale)}",
                    f"#define PRESSO_{tag}_ZERO_POINT ({port.zero_point})",
                ]
        in_params, out_params = _port_params(inputs, outputs)
        params = in_params + out_params
        lines += [
            "",
            "/* Runs the model once; returns 0 on success. Not reentrant (one static arena). */",
            f"int presso_model_run({', '.join(params)});",
            "",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            "",
            "#endif /* PRESSO_MODEL_H */",
            "",
        ]
        return "\n".join(lines)

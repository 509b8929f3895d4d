"""The integer semantics of a lowered program, in numpy: what the generated C computes.

:func:`run_program` executes a :class:`~presso.backends.mcu.lower.Program` with the same
integer arithmetic as ``kernels/int8_kernels.c`` (int32 accumulation, 64-bit fixed-point
requantization with one rounding, the Q20 softmax table, the integer layer norm), so the C
library must match it bit for bit; :func:`run_op` runs one op on given inputs.
:func:`per_op_steps` feeds each op onnxruntime's own inputs and measures that op's error
alone: in a deep network one-step differences compound (onnxruntime's own two execution
modes of the same Q/DQ PP-OCR cls differ by up to 7 steps on some images), so per-op
agreement is what "within one quantization step" can promise. :func:`reference_int8` gives
onnxruntime's int8 inputs and outputs of a program.
"""

from __future__ import annotations

import math

import numpy as np

from ...ir import Model, evaluate
from .lower import Op, Program


def _rq(acc, mult, shift, zp, lo, hi) -> np.ndarray:
    acc = np.asarray(acc, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    v = ((acc * mult + (np.int64(1) << (shift - 1))) >> shift) + zp
    return np.clip(v, lo, hi).astype(np.int8)


def _conv(x: np.ndarray, p: dict) -> np.ndarray:
    C, H, W, M, OH, OW = p["C"], p["H"], p["W"], p["M"], p["OH"], p["OW"]
    KH, KW, SH, SW, PT, PL, DH, DW, G = (p[k] for k in ("KH", "KW", "SH", "SW", "PT", "PL", "DH", "DW", "G"))
    v = x.reshape(C, H, W).astype(np.int64) - p["zx"]
    # zero (the input zero point) outside the image, enough for every window
    pb = max(0, (OH - 1) * SH + (KH - 1) * DH + 1 - H - PT)
    pr = max(0, (OW - 1) * SW + (KW - 1) * DW + 1 - W - PL)
    v = np.pad(v, ((0, 0), (PT, pb), (PL, pr)))
    w = p["weights"].astype(np.int64).reshape(G, M // G, C // G, KH, KW)
    v = v.reshape(G, C // G, v.shape[1], v.shape[2])
    acc = np.zeros((G, M // G, OH, OW), np.int64)
    for ky in range(KH):
        for kx in range(KW):
            patch = v[:, :, ky * DH: ky * DH + (OH - 1) * SH + 1: SH, kx * DW: kx * DW + (OW - 1) * SW + 1: SW]
            acc += np.einsum("gmc,gcyx->gmyx", w[:, :, :, ky, kx], patch)
    acc = acc.reshape(M, OH, OW) + p["bias"].astype(np.int64)[:, None, None]
    return _rq(acc, p["mult"][:, None, None], p["shift"][:, None, None], p["zy"], p["lo"], p["hi"])


def _broadcast(values: np.ndarray, dims, strides) -> np.ndarray:
    flat = values.reshape(-1)
    idx = sum(np.arange(d).reshape([-1 if i == k else 1 for i in range(4)]) * s
              for k, (d, s) in enumerate(zip(dims, strides, strict=True)))
    return flat[np.asarray(idx)].astype(np.int64)


def _strided(x: np.ndarray, shape, strides, offset: int) -> np.ndarray:
    flat = x.reshape(-1)
    idx = offset + sum(np.arange(d).reshape([-1 if i == k else 1 for i in range(len(shape))]) * s
                       for k, (d, s) in enumerate(zip(shape, strides, strict=True)))
    return flat[np.asarray(idx)]


def _pool_windows(x: np.ndarray, p: dict, fill) -> tuple[np.ndarray, np.ndarray]:
    C, H, W, OH, OW = p["C"], p["H"], p["W"], p["OH"], p["OW"]
    KH, KW, SH, SW, PT, PL = (p[k] for k in ("KH", "KW", "SH", "SW", "PT", "PL"))
    v = x.reshape(C, H, W)
    pb = max(0, (OH - 1) * SH + KH - H - PT)
    pr = max(0, (OW - 1) * SW + KW - W - PL)
    padded = np.pad(v.astype(np.int64), ((0, 0), (PT, pb), (PL, pr)), constant_values=fill)
    inside = np.pad(np.ones((H, W), np.int64), ((PT, pb), (PL, pr)))
    wins, counts = [], []
    for ky in range(KH):
        for kx in range(KW):
            wins.append(padded[:, ky: ky + (OH - 1) * SH + 1: SH, kx: kx + (OW - 1) * SW + 1: SW])
            counts.append(inside[ky: ky + (OH - 1) * SH + 1: SH, kx: kx + (OW - 1) * SW + 1: SW])
    return np.stack(wins), np.stack(counts)


def run_op(op: Op, inputs: list[np.ndarray], program: Program) -> list[np.ndarray]:
    """One op of ``program`` on ``inputs`` (int8/int32 arrays); returns its outputs."""
    p = op.params
    k = op.kind
    out_t = [program.tensors[o] for o in op.outputs]
    x = inputs[0]
    if k in ("view", "copy"):
        y = x
    elif k == "conv":
        y = _conv(x, p)
    elif k == "dense":
        a = x.reshape(p["rows"], p["K"]).astype(np.int64)
        acc = a @ p["weights"].astype(np.int64).T + p["bias"].astype(np.int64)
        y = _rq(acc, p["mult"], p["shift"], p["zy"], p["lo"], p["hi"])
    elif k == "matmul":
        a = x.reshape(p["batch"], p["M"], p["K"]).astype(np.int64) - p["za"]
        b = inputs[1].reshape(-1, p["K"], p["N"]).astype(np.int64) - p["zb"]
        y = _rq(a @ b, p["mult"], p["shift"], p["zy"], p["lo"], p["hi"])
    elif k in ("add", "mul"):
        a = _broadcast(x, p["dims"], p["a_strides"]) - p["za"]
        b = _broadcast(inputs[1], p["dims"], p["b_strides"]) - p["zb"]
        if k == "mul":
            y = _rq(a * b, p["mult"], p["shift"], p["zy"], p["lo"], p["hi"])
        else:
            s = p["shift"]
            v = ((a * p["ma"] + b * p["mb"] + (np.int64(1) << (s - 1))) >> s) + p["zy"]
            y = np.clip(v, p["lo"], p["hi"]).astype(np.int8)
    elif k == "lut":
        y = p["table"][x.astype(np.int64) + 128]
    elif k == "mean":
        v = x.reshape(p["outer"], p["count"]).astype(np.int64)
        y = _rq(v.sum(axis=1) - p["zx"] * p["count"], p["mult"], p["shift"], p["zy"], p["lo"], p["hi"])
    elif k == "avgpool":
        wins, inside = _pool_windows(x.astype(np.int64) - p["zx"], p, 0)
        acc = wins.sum(axis=0)
        count = np.full(inside.shape[1:], p["KH"] * p["KW"]) if p["include_pad"] else np.maximum(inside.sum(axis=0), 1)
        y = _rq(acc, p["mult"][count - 1][None], p["shift"][count - 1][None], p["zy"], p["lo"], p["hi"])
    elif k == "maxpool":
        wins, _ = _pool_windows(x, p, -128)
        y = wins.max(axis=0).astype(np.int8)
    elif k == "softmax":
        v = x.reshape(p["rows"], p["length"]).astype(np.int64)
        e = p["table"].astype(np.int64)[v.max(axis=1, keepdims=True) - v]
        total = e.sum(axis=1, keepdims=True)
        inv = ((np.int64(p["mult"]) << 30) + total // 2) // total
        sh = 30 + p["shift"]
        y = np.clip(((e * inv + (np.int64(1) << (sh - 1))) >> sh) + p["zy"], -128, 127).astype(np.int8)
    elif k == "concat":
        parts = []
        for src, part in zip(inputs, p["parts"], strict=True):
            v = src.reshape(p["outer"], part["block"])
            if not part["copy"]:
                v = _rq(v.astype(np.int64) - part["zx"], part["mult"], part["shift"], p["zy"], p["lo"], p["hi"])
            parts.append(v)
        y = np.concatenate(parts, axis=1)
    elif k in ("transpose", "slice"):
        y = _strided(x, p["shape"], p["in_strides"], p.get("offset", 0))
    elif k == "gather_rows":
        idx = x.reshape(-1).astype(np.int64)
        idx = np.where(idx < 0, idx + p["rows"], idx)
        if np.any((idx < 0) | (idx >= p["rows"])):
            raise IndexError(f"{op.node}: index outside the table")
        y = p["table"][idx]
    elif k == "layernorm":
        y = _layernorm(x, p)
    elif k == "lrn":
        y = _lrn(x, p)
    else:
        raise NotImplementedError(k)
    return [np.asarray(y).reshape(out_t[0].shape).astype(np.int32 if out_t[0].dtype == "int32" else np.int8)]


def _layernorm(x: np.ndarray, p: dict) -> np.ndarray:
    n = p["length"]
    rows = x.reshape(p["rows"], n).astype(np.int64) - p["zx"]
    out = np.empty(rows.shape, np.int8)
    mult = p["mult"].astype(np.int64)
    shift = p["shift"].astype(np.int64)
    for r, v in enumerate(rows):
        total = int(v.sum())
        d = max(1, n * int((v * v).sum()) - total * total + p["eps"])
        bits = d.bit_length()
        f = max(0, (56 - bits) // 2)
        s = max(1, math.isqrt(d << (2 * f)))
        inv = np.int64((1 << 62) // s)
        t = n * v - total
        q16 = (t * inv + (np.int64(1) << (45 - f))) >> (46 - f)
        val = ((q16 * mult + (np.int64(1) << (shift - 1))) >> shift) + p["beta_q16"]
        out[r] = np.clip(((val + 32768) >> 16) + p["zy"], p["lo"], p["hi"])
    return out


def _lrn(x: np.ndarray, p: dict) -> np.ndarray:
    C = p["C"]
    v = x.reshape(C, p["inner"]).astype(np.int64) - p["zx"]
    sq = np.concatenate([np.zeros((1, v.shape[1]), np.int64), np.cumsum(v * v, axis=0)])
    c = np.arange(C)
    total = sq[np.minimum(C, c + p["after"] + 1)] - sq[np.maximum(0, c - p["before"])]
    # grid index: exact below 32, then 32 points per octave; linear interpolation between points
    octave = np.maximum(5, np.floor(np.log2(np.maximum(total, 1))).astype(np.int64))
    step = octave - 5
    index = np.where(total < 32, total, 32 + (octave - 5) * 32 + ((total >> step) & 31))
    frac = np.where(total < 32, 0, total & ((np.int64(1) << step) - 1))
    table = p["table"].astype(np.int64)
    g = table[index] + (((table[index + 1] - table[index]) * frac) >> step)
    gbits = p["gbits"]
    y = ((v * g + (np.int64(1) << (gbits - 1))) >> gbits) + p["zy"]
    return np.clip(y, p["lo"], p["hi"]).astype(np.int8)


def run_program(program: Program, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of ``program`` for the given int8 (or int32 index) inputs."""
    values: dict[str, np.ndarray] = {n: np.asarray(v).reshape(program.tensors[n].shape)
                                     for n, v in zip(program.inputs, inputs, strict=True)}
    for name, t in program.tensors.items():
        if t.data is not None:
            values[name] = t.data
    for op in program.ops:
        for name, value in zip(op.outputs, run_op(op, [values[i] for i in op.inputs], program), strict=True):
            values[name] = value
    return values


def reference_int8(qmodel: Model, program: Program, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """onnxruntime on the Q/DQ model: the int8 inputs (after the input Q) and the int8 outputs
    (before the output DQ) that the C program takes and returns. A float input that the
    program takes quantized is rounded half to even, as the model's QuantizeLinear does."""
    names = [program.model_tensor(n) for n in program.inputs + program.outputs]
    values = evaluate(qmodel, feeds, outputs=[n for n in names if n not in feeds])
    values.update(feeds)
    arrays = []
    for n, p in zip(names, program.inputs + program.outputs, strict=True):
        value, port = values[n], program.tensors[p]
        if value.dtype.kind == "f":  # a float graph input the program takes quantized (as the artifact does)
            value = np.clip(np.rint(value / port.scale) + port.zero_point, -128, 127).astype(np.int8)
        arrays.append(value.reshape(port.shape))
    return arrays[:len(program.inputs)], arrays[len(program.inputs):]


def per_op_steps(qmodel: Model, program: Program, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Largest difference in quantization steps, per op kind, between each op of ``program``
    run on onnxruntime's own inputs (the integer emulator, which the C matches bit for bit)
    and onnxruntime's output of that op: each kernel's error alone, without the compounding
    of a deep network."""
    names = {t.name for t in qmodel.graph.tensors().values()}
    wanted = [n for op in program.ops for n in op.outputs if n in names and n not in feeds]
    ref = evaluate(qmodel, feeds, outputs=wanted)
    values = {n: t.data for n, t in program.tensors.items() if t.data is not None}
    values.update(zip(program.inputs, reference_int8(qmodel, program, feeds)[0], strict=True))
    worst: dict[str, int] = {}
    for op in program.ops:
        for name, value in zip(op.outputs, run_op(op, [values[i] for i in op.inputs], program), strict=True):
            if name in ref:
                theirs = ref[name].reshape(value.shape)
                if theirs.dtype.kind == "f":  # a float tensor of the model that the program holds quantized
                    t = program.tensors[name]
                    theirs = np.clip(np.rint(theirs / t.scale) + t.zero_point, -128, 127).astype(np.int8)
                worst[op.kind] = max(worst.get(op.kind, 0), int(np.abs(value.astype(int) - theirs.astype(int)).max()))
                values[name] = theirs
            else:
                values[name] = value
    return worst

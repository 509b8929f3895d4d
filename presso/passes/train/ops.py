"""ONNX operators as differentiable torch functions, for the training executor.

Each entry of :data:`OPS` takes ``(node, inputs, env)`` — the graphsurgeon node, its input
values as torch tensors (``None`` for an omitted optional input) and an :class:`OpEnv` with
the executor's settings — and returns the list of output tensors. Semantics follow the ONNX
operator specification at the model's opset, checked against onnxruntime by the tests.
Integer tensors (shapes, indices) stay integer; floating tensors use the executor's float
dtype so that the same graph runs in float32 for training and float64 for gradient checks.
QuantizeLinear/DequantizeLinear are fake-quant with the straight-through estimator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
import torch
import torch.nn.functional as F

from ...ir.errors import UnsupportedOpError


@dataclass
class OpEnv:
    """What op implementations need besides their inputs."""

    opset: int
    float_dtype: torch.dtype = torch.float32
    # QuantizeLinear nodes whose scale is learned (LSQ); the executor scales their step-size
    # gradient (see GraphExecutor._lsq_scale)
    lsq_nodes: set[str] = field(default_factory=set)


OpFn = Callable[[gs.Node, list, OpEnv], list]
OPS: dict[str, OpFn] = {}


def op(*names: str):
    def decorate(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return decorate


def _unsupported(node: gs.Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"the training executor does not support {node.op} {why}",
        where=f"node '{node.name}' ({node.op})",
        hint="run cleanup passes first (constants-to-initializers, fold-constants with fixed input "
             "shapes), or keep this part of the model out of training",
    )


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _attr(node: gs.Node, name: str, default=None):
    value = node.attrs.get(name, default)
    if isinstance(value, bytes):
        return value.decode()
    return value


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


# ---- element-wise ---------------------------------------------------------------------------
def _binary(fn):
    def run(node, x, env):
        a, b = x
        return [fn(a, b)]

    return run


def _div(a, b):
    if _is_float(a) or _is_float(b):
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a, b):
    return torch.pow(a, b.to(a.dtype) if _is_float(a) else b)


OPS.update({
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
    "Div": _binary(_div), "Pow": _binary(_pow),
    "Equal": _binary(torch.eq), "Greater": _binary(torch.gt), "Less": _binary(torch.lt),
    "GreaterOrEqual": _binary(torch.ge), "LessOrEqual": _binary(torch.le),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
})

_UNARY = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Neg": torch.neg,
    "Abs": torch.abs, "Floor": torch.floor, "Ceil": torch.ceil, "Erf": torch.erf,
    "Softplus": F.softplus, "Softsign": F.softsign, "Sin": torch.sin, "Cos": torch.cos,
    "Not": torch.logical_not, "Sign": torch.sign, "Round": torch.round, "IsNaN": torch.isnan,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = (lambda f: lambda node, x, env: [f(x[0])])(_fn)


@op("Identity", "Dropout")
def _identity(node, x, env):
    out = [x[0]]
    if len(node.outputs) > 1:  # Dropout's mask: all ones in inference
        out.append(torch.ones_like(x[0], dtype=torch.bool))
    return out


@op("LeakyRelu")
def _leaky_relu(node, x, env):
    return [F.leaky_relu(x[0], float(_attr(node, "alpha", 0.01)))]


@op("Elu")
def _elu(node, x, env):
    return [F.elu(x[0], float(_attr(node, "alpha", 1.0)))]


@op("Selu")
def _selu(node, x, env):
    alpha = float(_attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(_attr(node, "gamma", 1.05070102214813232421875))
    return [gamma * torch.where(x[0] > 0, x[0], alpha * (torch.exp(x[0]) - 1))]


@op("PRelu")
def _prelu(node, x, env):
    return [torch.where(x[0] >= 0, x[0], x[0] * x[1])]


@op("Gelu")
def _gelu(node, x, env):
    return [F.gelu(x[0], approximate=_attr(node, "approximate", "none"))]


@op("HardSigmoid")
def _hard_sigmoid(node, x, env):
    alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
    return [torch.clamp(alpha * x[0] + beta, 0.0, 1.0)]


@op("HardSwish")
def _hard_swish(node, x, env):
    return [x[0] * torch.clamp(x[0] / 6.0 + 0.5, 0.0, 1.0)]


@op("Clip")
def _clip(node, x, env):
    if env.opset < 11:
        lo, hi = _attr(node, "min"), _attr(node, "max")
    else:
        lo = x[1] if len(x) > 1 else None
        hi = x[2] if len(x) > 2 else None
    out = x[0]
    if lo is not None:
        out = torch.maximum(out, torch.as_tensor(lo, dtype=out.dtype))
    if hi is not None:
        out = torch.minimum(out, torch.as_tensor(hi, dtype=out.dtype))
    return [out]


def _variadic(fn):
    def run(node, x, env):
        out = x[0]
        for other in x[1:]:
            out = fn(out, other)
        return [out]

    return run


OPS.update({"Sum": _variadic(torch.add), "Max": _variadic(torch.maximum),
            "Min": _variadic(torch.minimum)})


@op("Mean")
def _mean(node, x, env):
    return [_variadic(torch.add)(node, x, env)[0] / len(x)]


@op("Where")
def _where(node, x, env):
    return [torch.where(x[0].bool(), x[1], x[2])]


# ---- linear ---------------------------------------------------------------------------------
@op("MatMul")
def _matmul(node, x, env):
    return [torch.matmul(x[0], x[1])]


@op("Gemm")
def _gemm(node, x, env):
    a, b = x[0], x[1]
    if _attr(node, "transA", 0):
        a = a.transpose(0, 1)
    if _attr(node, "transB", 0):
        b = b.transpose(0, 1)
    out = float(_attr(node, "alpha", 1.0)) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        out = out + float(_attr(node, "beta", 1.0)) * x[2]
    return [out]


def _auto_pads(node, spatial_in, kernel, strides, dilations):
    """Per-axis (begin, end) padding following ONNX's auto_pad / pads attributes."""
    auto = _attr(node, "auto_pad", "NOTSET")
    rank = len(spatial_in)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial_in, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            pads.append((big, small) if auto == "SAME_LOWER" else (small, big))
        return pads
    if auto == "VALID":
        return [(0, 0)] * rank
    return _explicit_pads(node, rank)


def _explicit_pads(node, rank):
    """The `pads` attribute (begins then ends) as per-axis (begin, end) pairs."""
    flat = list(_attr(node, "pads", [0] * (2 * rank)))
    return list(zip(flat[:rank], flat[rank:]))


def _torch_pad(pads):
    """ONNX per-axis (begin, end) pairs to F.pad's last-axis-first list."""
    result = []
    for begin, end in reversed(pads):
        result += [begin, end]
    return result


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_operands(node, x, table):
    """Input, weight, bias, spatial rank, kernel, strides and dilations of a (transposed) Conv."""
    inp, weight = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    rank = weight.dim() - 2
    if rank not in table:
        raise _unsupported(node, f"with {rank} spatial dimensions")
    kernel = list(weight.shape[2:])
    strides = list(_attr(node, "strides", [1] * rank))
    dilations = list(_attr(node, "dilations", [1] * rank))
    return inp, weight, bias, rank, kernel, strides, dilations


@op("Conv")
def _conv(node, x, env):
    inp, weight, bias, rank, kernel, strides, dilations = _conv_operands(node, x, _CONV)
    pads = _auto_pads(node, list(inp.shape[2:]), kernel, strides, dilations)
    symmetric = all(b == e for b, e in pads)
    if not symmetric:
        inp = F.pad(inp, _torch_pad(pads))
    padding = [b for b, _ in pads] if symmetric else 0
    return [_CONV[rank](inp, weight, bias, strides, padding, dilations, int(_attr(node, "group", 1)))]


@op("ConvTranspose")
def _conv_transpose(node, x, env):
    inp, weight, bias, rank, kernel, strides, dilations = _conv_operands(node, x, _CONV_T)
    group = int(_attr(node, "group", 1))
    out_pad = list(_attr(node, "output_padding", [0] * rank))
    # Full (unpadded) transposed convolution, then output_padding and crop; the bias is added
    # last so that the border from output_padding gets it too. Handles asymmetric pads.
    full = _CONV_T[rank](inp, weight, None, strides, 0, 0, group, dilations)
    in_sizes = list(inp.shape[2:])
    full_sizes = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(in_sizes, strides, kernel, dilations)]
    output_shape = _attr(node, "output_shape")
    auto = _attr(node, "auto_pad", "NOTSET")
    if output_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        targets = list(output_shape)[-rank:] if output_shape is not None else [i * s for i, s in zip(in_sizes, strides)]
        pads = []
        for full_size, extra, target in zip(full_sizes, out_pad, targets):
            total = full_size + extra - target
            half = total // 2  # floor division: a negative total adds zeros at the end, as in onnxruntime
            pads.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
    elif auto == "VALID":
        pads = [(0, 0)] * rank
    else:
        pads = _explicit_pads(node, rank)
    if any(out_pad):
        full = F.pad(full, _torch_pad([(0, p) for p in out_pad]))
    out = F.pad(full, _torch_pad([(-b, -e) for b, e in pads]))  # negative pads crop, positive add zeros
    if bias is not None:
        out = out + bias.reshape([1, -1] + [1] * rank)
    return [out]


# ---- normalization --------------------------------------------------------------------------
@op("BatchNormalization")
def _batch_norm(node, x, env):
    if _attr(node, "training_mode", 0):
        raise _unsupported(node, "in training mode (training_mode=1)")
    inp, scale, bias, mean, var = x[:5]
    out = F.batch_norm(inp, mean, var, scale, bias, False, 0.0, float(_attr(node, "epsilon", 1e-5)))
    return [out] + [None] * (len(node.outputs) - 1)


@op("InstanceNormalization")
def _instance_norm(node, x, env):
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=float(_attr(node, "epsilon", 1e-5)))]


@op("LayerNormalization")
def _layer_norm(node, x, env):
    inp = x[0]
    axis = int(_attr(node, "axis", -1)) % inp.dim()
    dims = tuple(range(axis, inp.dim()))
    mean = inp.mean(dim=dims, keepdim=True)
    var = ((inp - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + float(_attr(node, "epsilon", 1e-5)))
    out = (inp - mean) * inv * x[1]
    if len(x) > 2 and x[2] is not None:
        out = out + x[2]
    return [out, mean, inv][: len(node.outputs)]


@op("LRN")
def _lrn(node, x, env):
    size = int(_attr(node, "size"))
    return [F.local_response_norm(x[0], size, alpha=float(_attr(node, "alpha", 1e-4)),
                                  beta=float(_attr(node, "beta", 0.75)), k=float(_attr(node, "bias", 1.0)))]


@op("Softmax", "LogSoftmax")
def _softmax(node, x, env):
    inp = x[0]
    fn = torch.softmax if node.op == "Softmax" else torch.log_softmax
    if env.opset >= 13:
        return [fn(inp, dim=int(_attr(node, "axis", -1)))]
    # before opset 13 the input is coerced to 2-D at `axis` and normalized over the tail
    axis = int(_attr(node, "axis", 1)) % max(inp.dim(), 1)
    flat = inp.reshape(int(np.prod(inp.shape[:axis], dtype=np.int64)), -1)
    return [fn(flat, dim=1).reshape(inp.shape)]


# ---- pooling --------------------------------------------------------------------------------
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(node, inp):
    kernel = list(_attr(node, "kernel_shape"))
    rank = len(kernel)
    strides = list(_attr(node, "strides", [1] * rank))
    dilations = list(_attr(node, "dilations", [1] * rank))
    pads = _auto_pads(node, list(inp.shape[2:]), kernel, strides, dilations)
    ceil = bool(_attr(node, "ceil_mode", 0))
    return kernel, strides, dilations, pads, ceil


@op("MaxPool")
def _max_pool(node, x, env):
    inp = x[0]
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        raise _unsupported(node, "with its Indices output in use")
    kernel, strides, dilations, pads, ceil = _pool_geometry(node, inp)
    rank = len(kernel)
    symmetric = all(b == e for b, e in pads) and all(b <= k // 2 for (b, _), k in zip(pads, kernel))
    if not symmetric:
        inp = F.pad(inp, _torch_pad(pads), value=-math.inf)
    padding = [b for b, _ in pads] if symmetric else 0
    return [_MAX_POOL[rank](inp, kernel, strides, padding, dilations, ceil_mode=ceil)]


@op("AveragePool")
def _avg_pool(node, x, env):
    inp = x[0]
    kernel, strides, dilations, pads, ceil = _pool_geometry(node, inp)
    rank = len(kernel)
    if any(d != 1 for d in dilations):
        raise _unsupported(node, "with dilations")
    include = bool(_attr(node, "count_include_pad", 0))
    symmetric = all(b == e for b, e in pads) and all(b <= k // 2 for (b, _), k in zip(pads, kernel))
    if symmetric and not ceil:
        return [_AVG_POOL[rank](inp, kernel, strides, [b for b, _ in pads], ceil_mode=False,
                                count_include_pad=include)]
    # General case: window sums over the zero-padded input divided by the count of
    # contributing elements (padding counted or not), both computed with the same pooling.
    padded = F.pad(inp, _torch_pad(pads))
    ones = F.pad(torch.ones_like(inp[:1, :1]), _torch_pad(pads), value=1.0 if include else 0.0)
    sums = _AVG_POOL[rank](padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    counts = _AVG_POOL[rank](ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    return [sums / counts]


@op("GlobalAveragePool")
def _global_avg_pool(node, x, env):
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def _global_max_pool(node, x, env):
    return [x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)]


# ---- reductions -----------------------------------------------------------------------------
def _reduce_axes(node, x, env, axes_input_since: int):
    inp = x[0]
    if env.opset >= axes_input_since:
        axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else None
    else:
        axes = _attr(node, "axes")
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return None
        axes = list(range(inp.dim()))
    return tuple(int(a) % max(inp.dim(), 1) for a in axes)


def _reduction(fn, since: int):
    def run(node, x, env):
        axes = _reduce_axes(node, x, env, since)
        if axes is None:
            return [x[0]]
        keep = bool(_attr(node, "keepdims", 1))
        return [fn(x[0], axes, keep)]

    return run


OPS.update({
    "ReduceSum": _reduction(lambda t, a, k: t.sum(dim=a, keepdim=k), 13),
    "ReduceMean": _reduction(lambda t, a, k: t.mean(dim=a, keepdim=k), 18),
    "ReduceMax": _reduction(lambda t, a, k: t.amax(dim=a, keepdim=k), 18),
    "ReduceMin": _reduction(lambda t, a, k: t.amin(dim=a, keepdim=k), 18),
    "ReduceProd": _reduction(lambda t, a, k: _prod(t, a, k), 18),
    "ReduceL2": _reduction(lambda t, a, k: torch.sqrt((t * t).sum(dim=a, keepdim=k)), 18),
    "ReduceL1": _reduction(lambda t, a, k: t.abs().sum(dim=a, keepdim=k), 18),
    "ReduceSumSquare": _reduction(lambda t, a, k: (t * t).sum(dim=a, keepdim=k), 18),
})


def _prod(t, axes, keep):
    for a in sorted(axes, reverse=True):
        t = t.prod(dim=a, keepdim=keep)
    return t


@op("ArgMax", "ArgMin")
def _arg(node, x, env):
    axis = int(_attr(node, "axis", 0))
    keep = bool(_attr(node, "keepdims", 1))
    inp = x[0]
    if _attr(node, "select_last_index", 0):
        inp = inp.flip(axis)
        index = (inp.argmax if node.op == "ArgMax" else inp.argmin)(dim=axis, keepdim=keep)
        return [x[0].shape[axis] - 1 - index]
    return [(inp.argmax if node.op == "ArgMax" else inp.argmin)(dim=axis, keepdim=keep)]


# ---- shape and data movement ----------------------------------------------------------------
@op("Shape")
def _shape(node, x, env):
    dims = list(x[0].shape)
    start, end = int(_attr(node, "start", 0)), _attr(node, "end")
    dims = dims[start:] if end is None else dims[start:int(end)]
    return [torch.tensor(dims, dtype=torch.int64)]


@op("Size")
def _size(node, x, env):
    return [torch.tensor(x[0].numel(), dtype=torch.int64)]


@op("Reshape")
def _reshape(node, x, env):
    inp = x[0]
    shape = _ints(x[1]) if env.opset >= 5 else list(_attr(node, "shape"))
    if not _attr(node, "allowzero", 0):
        shape = [inp.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [inp.reshape(shape)]


@op("Flatten")
def _flatten(node, x, env):
    inp = x[0]
    axis = int(_attr(node, "axis", 1)) % (inp.dim() + 1) if inp.dim() else 0
    outer = int(np.prod(inp.shape[:axis], dtype=np.int64))
    return [inp.reshape(outer, -1)]


@op("Transpose")
def _transpose(node, x, env):
    perm = _attr(node, "perm")
    perm = list(perm) if perm is not None else list(reversed(range(x[0].dim())))
    return [x[0].permute(perm)]


def _axes(node, x, env, since: int = 13):
    if env.opset >= since:
        return _ints(x[1]) if len(x) > 1 else None
    axes = _attr(node, "axes")
    return list(axes) if axes is not None else None


@op("Squeeze")
def _squeeze(node, x, env):
    axes = _axes(node, x, env)
    inp = x[0]
    if axes is None:
        return [inp.squeeze()]
    axes = sorted((a % inp.dim() for a in axes), reverse=True)
    for a in axes:
        inp = inp.squeeze(a)
    return [inp]


@op("Unsqueeze")
def _unsqueeze(node, x, env):
    axes = _axes(node, x, env)
    out = x[0]
    rank = out.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        out = out.unsqueeze(a)
    return [out]


@op("Concat")
def _concat(node, x, env):
    parts = [t for t in x if t is not None and not (t.dim() == 1 and t.numel() == 0 and len(x) > 1)]
    parts = parts or [x[0]]
    dtype = parts[0].dtype
    return [torch.cat([p.to(dtype) for p in parts], dim=int(_attr(node, "axis")))]


@op("Split")
def _split(node, x, env):
    inp = x[0]
    axis = int(_attr(node, "axis", 0))
    if env.opset >= 13:
        sizes = _ints(x[1]) if len(x) > 1 and x[1] is not None else None
    else:
        sizes = _attr(node, "split")
        sizes = list(sizes) if sizes else None
    count = len(node.outputs)
    if sizes is None:
        total = inp.shape[axis]
        chunk = -(-total // count)
        sizes = [min(chunk, total - i * chunk) for i in range(count)]
    return list(torch.split(inp, list(sizes), dim=axis))


@op("Slice")
def _slice(node, x, env):
    inp = x[0]
    if env.opset >= 10:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else None
    else:
        starts, ends = list(_attr(node, "starts")), list(_attr(node, "ends"))
        axes, steps = _attr(node, "axes"), None
    axes = list(range(len(starts))) if axes is None else [a % inp.dim() for a in axes]
    steps = steps or [1] * len(starts)
    out = inp
    for start, end, axis, step in zip(starts, ends, axes, steps):
        # Python's slice clamping is ONNX's, for positive and negative steps alike
        begin, stop, _ = slice(start, end, step).indices(inp.shape[axis])
        out = out.index_select(axis, torch.arange(begin, stop, step))
    return [out]


@op("Gather")
def _gather(node, x, env):
    inp, idx = x[0], x[1].long()
    axis = int(_attr(node, "axis", 0)) % inp.dim()
    idx = torch.where(idx < 0, idx + inp.shape[axis], idx)
    out = inp.index_select(axis, idx.reshape(-1))
    shape = list(inp.shape[:axis]) + list(idx.shape) + list(inp.shape[axis + 1:])
    return [out.reshape(shape)]


@op("Expand")
def _expand(node, x, env):
    shape = _ints(x[1])
    target = torch.broadcast_shapes(tuple(x[0].shape), tuple(shape))
    return [x[0].expand(target)]


@op("Tile")
def _tile(node, x, env):
    return [x[0].repeat(_ints(x[1]))]


@op("Pad")
def _pad(node, x, env):
    inp = x[0]
    mode = _attr(node, "mode", "constant")
    if env.opset >= 11:
        pads = _ints(x[1])
        value = float(x[2].reshape(-1)[0]) if len(x) > 2 and x[2] is not None and x[2].numel() else 0.0
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
    else:
        pads, value, axes = list(_attr(node, "pads")), float(_attr(node, "value", 0.0)), None
    rank = inp.dim()
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    pairs = [(0, 0)] * rank
    for i, a in enumerate(axes):
        pairs[a] = (pads[i], pads[i + len(axes)])
    if any(b < 0 or e < 0 for b, e in pairs):
        raise _unsupported(node, "with negative pads")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise _unsupported(node, f"in mode '{mode}'")
    lead = next((i for i, p in enumerate(pairs) if p != (0, 0)), rank)
    if mode != "constant" and lead < rank - 3:
        raise _unsupported(node, f"in mode '{mode}' on more than the last three axes")
    torch_pads = _torch_pad(pairs[lead:] if mode != "constant" else pairs)
    if mode == "constant":
        return [F.pad(inp, torch_pads, value=value)]
    return [F.pad(inp, torch_pads, mode=modes[mode])]


@op("ConstantOfShape")
def _constant_of_shape(node, x, env):
    value = node.attrs.get("value")
    fill = np.asarray(value.values if isinstance(value, gs.Constant) else (value if value is not None else 0.0),
                      dtype=(value.values.dtype if isinstance(value, gs.Constant) else np.float32)).reshape(-1)
    tensor = torch.full(_ints(x[0]), float(fill[0]) if fill.dtype.kind == "f" else int(fill[0]),
                        dtype=_torch_dtype(fill.dtype, env))
    return [tensor]


@op("Constant")
def _constant(node, x, env):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            array = np.asarray(value.values if isinstance(value, gs.Constant) else value)
            if key in ("value_float", "value_floats"):
                array = array.astype(np.float32)
            if key in ("value_int", "value_ints"):
                array = array.astype(np.int64)
            return [to_torch(array, env)]
    raise _unsupported(node, "with a sparse or string value")


@op("Range")
def _range(node, x, env):
    start, limit, delta = (v.reshape(-1)[0] for v in x)
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=x[0].dtype)]


@op("Cast")
def _cast(node, x, env):
    import onnx

    target = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(_attr(node, "to"))))
    return [x[0].to(_torch_dtype(target, env))]


@op("CastLike")
def _cast_like(node, x, env):
    return [x[0].to(x[1].dtype)]


# ---- resize ---------------------------------------------------------------------------------
def _source_coords(out_size: int, in_size: int, scale: float, mode: str) -> np.ndarray:
    """Input coordinates of each output index (ONNX coordinate_transformation_mode)."""
    i = np.arange(out_size, dtype=np.float64)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(i)
    if mode == "align_corners":
        return i * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(i)
    if mode == "half_pixel_symmetric":
        adjustment = out_size / (scale * in_size)
        center = in_size / 2
        offset = center * (1 - adjustment)
        return offset + (i + 0.5) / scale - 0.5
    raise ValueError(mode)


def _nearest(coords: np.ndarray, mode: str) -> np.ndarray:
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    if mode == "round_prefer_ceil":
        return np.floor(coords + 0.5)
    return np.ceil(coords - 0.5)  # round_prefer_floor (default)


@op("Resize", "Upsample")
def _resize(node, x, env):
    inp = x[0]
    rank = inp.dim()
    mode = _attr(node, "mode", "nearest")
    coord_mode = _attr(node, "coordinate_transformation_mode", "half_pixel" if node.op == "Resize" else "asymmetric")
    if node.op == "Upsample" or env.opset < 11:
        scales_t = x[1] if len(x) > 1 else None
        scales = [float(s) for s in (scales_t.tolist() if scales_t is not None else _attr(node, "scales"))]
        sizes = None
        if node.op == "Resize" and env.opset == 10:
            coord_mode = "asymmetric"
    else:
        scales_t = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
        sizes_t = x[3] if len(x) > 3 and x[3] is not None and x[3].numel() else None
        scales = [float(s) for s in scales_t.tolist()] if scales_t is not None else None
        sizes = _ints(sizes_t)
    if _attr(node, "axes") is not None or _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise _unsupported(node, "with axes or keep_aspect_ratio_policy")
    if coord_mode == "tf_crop_and_resize":
        raise _unsupported(node, "with coordinate_transformation_mode=tf_crop_and_resize")
    if sizes is None:
        sizes = [int(math.floor(d * s)) for d, s in zip(inp.shape, scales)]
    else:
        scales = [o / i for o, i in zip(sizes, inp.shape)]
    if mode not in ("nearest", "linear", "bilinear"):
        raise _unsupported(node, f"in mode '{mode}'")
    nearest_mode = _attr(node, "nearest_mode", "round_prefer_floor")
    out = inp
    # Separable: resample one axis at a time (exact for nearest and (multi)linear).
    for axis in range(rank):
        in_size, out_size = inp.shape[axis], sizes[axis]
        if in_size == out_size and scales[axis] == 1.0:
            continue
        coords = _source_coords(out_size, in_size, scales[axis], coord_mode)
        if mode == "nearest":
            index = np.clip(_nearest(coords, nearest_mode), 0, in_size - 1).astype(np.int64)
            out = out.index_select(axis, torch.from_numpy(index))
        else:
            coords = np.clip(coords, 0, in_size - 1)
            low = np.floor(coords).astype(np.int64)
            high = np.minimum(low + 1, in_size - 1)
            frac = torch.as_tensor(coords - low, dtype=out.dtype)
            shape = [1] * rank
            shape[axis] = out_size
            frac = frac.reshape(shape)
            a = out.index_select(axis, torch.from_numpy(low))
            b = out.index_select(axis, torch.from_numpy(high))
            out = a + (b - a) * frac
    return [out]


# ---- quantization as fake-quant -------------------------------------------------------------
QUANT_RANGES = {
    "int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
    "int4": (-8, 7), "uint4": (0, 15), "int32": (-(2**31), 2**31 - 1),
}


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    """round() in the forward pass, identity in the backward pass (straight-through)."""
    return v + (torch.round(v) - v).detach()


def grad_scale(v: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return v * factor + (v - v * factor).detach()


def _per_axis(param: torch.Tensor, ref: torch.Tensor, axis: int) -> torch.Tensor:
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * ref.dim()
    shape[axis % ref.dim()] = -1
    return param.reshape(shape)


def quant_type_of(node: gs.Node) -> str:
    """The integer type a QuantizeLinear produces (zero point's type, else output_dtype, else uint8)."""
    if len(node.inputs) > 2 and node.inputs[2].name and node.inputs[2].dtype is not None:
        return str(np.dtype(node.inputs[2].dtype))
    out_dtype = node.attrs.get("output_dtype")
    if out_dtype:
        import onnx

        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(out_dtype))))
    return "uint8"


def _qdq_operands(node, x):
    """Input, scale and zero point (or None) of a QuantizeLinear/DequantizeLinear."""
    if node.attrs.get("block_size"):
        raise _unsupported(node, "with blocked quantization (block_size)")
    return x[0], x[1], x[2] if len(x) > 2 and x[2] is not None else None


@op("QuantizeLinear")
def _quantize(node, x, env):
    inp, scale, zp = _qdq_operands(node, x)
    qtype = quant_type_of(node)
    if qtype not in QUANT_RANGES:
        raise _unsupported(node, f"to type {qtype}")
    qmin, qmax = QUANT_RANGES[qtype]
    axis = int(_attr(node, "axis", 1))
    scale = _per_axis(scale.to(inp.dtype), inp, axis)
    zp_f = _per_axis(zp.to(inp.dtype), inp, axis) if zp is not None else 0.0
    q = _round_ste(inp / scale) + zp_f
    # clamp with a straight-through gradient inside the range and zero outside (as in LSQ)
    q = torch.clamp(q, qmin, qmax)
    return [q]


@op("DequantizeLinear")
def _dequantize(node, x, env):
    q, scale, zp = _qdq_operands(node, x)
    dtype = env.float_dtype if not scale.is_floating_point() else scale.dtype
    q = q.to(dtype)
    axis = int(_attr(node, "axis", 1))
    scale = _per_axis(scale.to(dtype), q, axis)
    zp_f = _per_axis(zp.to(dtype), q, axis) if zp is not None else 0.0
    return [(q - zp_f) * scale]


# ---- conversions ----------------------------------------------------------------------------
def _torch_dtype(dtype: np.dtype, env: OpEnv) -> torch.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or str(dtype) in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        return env.float_dtype
    if dtype == np.bool_:
        return torch.bool
    if str(dtype) in ("int4", "uint4", "int2", "uint2"):
        return torch.int32
    return {np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8,
            np.dtype(np.int16): torch.int16, np.dtype(np.uint16): torch.int32,
            np.dtype(np.int32): torch.int32, np.dtype(np.uint32): torch.int64,
            np.dtype(np.int64): torch.int64, np.dtype(np.uint64): torch.int64}.get(dtype, torch.int64)


def to_torch(array: np.ndarray, env: OpEnv) -> torch.Tensor:
    """A numpy array as a torch tensor in the executor's dtypes (floats in ``env.float_dtype``)."""
    array = np.asarray(array)
    target = _torch_dtype(array.dtype, env)
    if str(array.dtype) in ("int4", "uint4", "int2", "uint2", "uint16", "uint32", "uint64"):
        array = array.astype(np.int64)
    elif array.dtype.kind == "f" and array.dtype not in (np.float16, np.float32, np.float64):
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array)).to(target)


def supported_ops() -> Sequence[str]:
    return sorted(OPS)

"""Choose the int8 form of a quantized model that onnxruntime actually runs fastest here.

Onnxruntime's CPU speed depends on the form: on an AVX2 CPU without VNNI, int8 (s8)
activations take a slower path than uint8 (u8) ones; QOperator nodes (``QLinearConv``) and the
QDQ form that onnxruntime fuses itself may or may not differ; a Div by a constant between Q/DQ
pairs has no int8 kernel and runs in float unless it is rewritten as an int8 Mul. Instead of
assuming, :func:`select_int8_form` builds every form the target lists (``Target.int8_forms``:
``qdq-u8``, ``qdq-s8``, ``qoperator-u8``, ``qdq-u8+divmul``…) that it can produce without
changing the numbers — u8 and s8 activations are the same quantization with the zero point
shifted by 128; the other rewrites change float rounding only — checks that each computes the
same outputs as the given form, times them interleaved on this machine, and keeps the fastest.
The measurements go into the artifact's manifest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import Model, create_session
from ...ir.errors import BackendError

QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
    "DynamicQuantizeLinear", "MatMulNBits", "QLinearAdd", "QLinearMul", "DynamicQuantizeMatMul",
})
QOPERATOR_OPS = frozenset(QUANT_OPS - {"QuantizeLinear", "DequantizeLinear"})
# from-type: (to-type, numpy type, zero-point shift)
_SHIFT = {"uint8": ("int8", np.dtype(np.int8), -128), "int8": ("uint8", np.dtype(np.uint8), 128)}


def is_quantized(model: Model) -> bool:
    return any(node.op in QUANT_OPS for node in model.graph.nodes)


def _activation_quantizers(model: Model) -> list[gs.Node]:
    """QuantizeLinear nodes on computed tensors (not on constant weights)."""
    return [n for n in model.nodes("QuantizeLinear") if not isinstance(n.inputs[0], gs.Constant)]


def activation_dtype(model: Model) -> str | None:
    """``"uint8"``/``"int8"`` when every activation quantizer uses it, else ``None``."""
    kinds = set()
    for node in _activation_quantizers(model):
        zp = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        kinds.add(str(np.dtype(zp.values.dtype)) if isinstance(zp, gs.Constant) else ("uint8" if zp is None else "?"))
    return kinds.pop() if len(kinds) == 1 else None


def convert_activations(model: Model, dtype: str) -> int:
    """Switch 8-bit activation Q/DQ pairs to ``dtype`` (``uint8`` or ``int8``) in place.

    ``q_s8 = q_u8 − 128`` with ``zp_s8 = zp_u8 − 128`` dequantizes to the same value, so the
    model computes exactly the same function. A quantizer whose output feeds anything but
    DequantizeLinear nodes (a QOperator node, a graph output) is left alone. Returns how many
    quantizers changed.
    """
    if dtype not in _SHIFT:
        raise BackendError(f"cannot convert activations to '{dtype}'", hint="choose uint8 or int8")
    source = _SHIFT[dtype][0]  # the other 8-bit type
    _, np_type, shift = _SHIFT[source]
    outputs = {id(t) for t in model.graph.outputs}
    changed = 0
    for q in _activation_quantizers(model):
        zp = q.inputs[2] if len(q.inputs) > 2 and q.inputs[2].name else None
        current = str(np.dtype(zp.values.dtype)) if isinstance(zp, gs.Constant) else ("uint8" if zp is None else None)
        if current != source:
            continue
        y = q.outputs[0]
        if id(y) in outputs or not y.outputs or any(c.op != "DequantizeLinear" for c in y.outputs):
            continue
        new_zp = _shifted(zp, shift, np_type, f"{q.name or y.name}_zp_{dtype}")
        if len(q.inputs) > 2:
            q.inputs[2] = new_zp
        else:
            q.inputs.append(new_zp)
        y.dtype = np_type
        for dq in y.outputs:
            dq_zp = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else None
            if dq_zp is zp or dq_zp is None:
                replacement = new_zp
            else:
                replacement = _shifted(dq_zp, shift, np_type, f"{dq.name or dq.outputs[0].name}_zp_{dtype}")
            if len(dq.inputs) > 2:
                dq.inputs[2] = replacement
            else:
                dq.inputs.append(replacement)
        changed += 1
    if changed:
        model.graph.cleanup(remove_unused_graph_inputs=False)
        model.invalidate()
    return changed


def _shifted(zp: gs.Constant | None, shift: int, np_type: np.dtype, name: str) -> gs.Constant:
    values = np.zeros((), dtype=np.int32) if zp is None else zp.values.astype(np.int32)
    return gs.Constant(name, np.asarray(values + shift).astype(np_type))


def scalar_qparams(model: Model) -> int:
    """Store one-element per-tensor scales and zero points of Q/DQ nodes as rank-0 scalars.

    The numbers do not change, but onnxruntime's QDQ fusions (``QLinearAdd``, ``QLinearMul``,
    removing a Clip that the Q's range makes redundant…) only match scalar parameters: with
    ``[1]``-shaped ones PP-OCRv4 det keeps 88 Adds, 86 Muls and 24 Clips in float between
    Q/DQ pairs. ``fold-qdq`` does the same (:func:`~presso.passes.quant.qdq.scalarize_qparams`);
    this catches models quantized elsewhere. Returns how many parameters changed.
    """
    from ...passes.quant.qdq import scalarize_qparams

    return scalarize_qparams(model)


def divisions_to_multiplications(model: Model) -> int:
    """Rewrite ``DQ → Div(x, c) → Q`` as ``DQ → Mul(x, DQ(1/c)) → Q`` in place.

    Onnxruntime fuses ``DQ → Mul → Q`` into ``QLinearMul`` but has no int8 Div, so a Div by a
    constant between quantized tensors runs in float with a DequantizeLinear before it and a
    QuantizeLinear after it (PP-OCR's hard-swish ``x · relu6(x + 3) / 6`` has one per block).
    The reciprocal is stored as an exactly dequantizable 8-bit constant of the activations'
    type (one value, scale = |1/c| / 255 or / 127), so outputs change by at most a float
    rounding of the constant. Only constants holding a single repeated value are rewritten.
    Returns how many Div nodes changed.
    """
    outputs = {id(t) for t in model.graph.outputs}
    changed = 0
    for node in model.nodes("Div"):
        x, c = node.inputs[0], node.inputs[1]
        y = node.outputs[0]
        if not isinstance(c, gs.Constant) or c.values is None or c.values.dtype.kind != "f" or c.values.size == 0:
            continue
        producers = x.inputs
        if len(producers) != 1 or producers[0].op != "DequantizeLinear" or id(y) in outputs:
            continue
        if not y.outputs or any(consumer.op != "QuantizeLinear" for consumer in y.outputs):
            continue
        values = np.asarray(c.values, dtype=np.float64)
        value = float(values.flat[0])
        if not np.all(values == value) or value == 0 or not np.isfinite(value):
            continue
        dq = producers[0]
        zp = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else None
        storage = np.dtype(zp.values.dtype) if isinstance(zp, gs.Constant) else np.dtype(np.uint8)
        if storage not in (np.dtype(np.uint8), np.dtype(np.int8)):
            continue
        reciprocal = 1.0 / value
        top = 255 if storage == np.uint8 else 127
        if storage == np.uint8:
            q, zero = (top, 0) if reciprocal > 0 else (0, top)
        else:
            q, zero = (top if reciprocal > 0 else -top), 0
        base = node.name or y.name
        quantized = gs.Constant(f"{base}_reciprocal_q", np.full(values.shape, q, dtype=storage))
        scale = gs.Constant(f"{base}_reciprocal_scale", np.array(abs(reciprocal) / top, dtype=np.float32))
        zero_point = gs.Constant(f"{base}_reciprocal_zp", np.array(zero, dtype=storage))
        dequantized = gs.Variable(f"{base}_reciprocal", dtype=c.values.dtype, shape=list(values.shape))
        model.graph.nodes.append(gs.Node("DequantizeLinear", name=f"{base}_reciprocal_dq",
                                         inputs=[quantized, scale, zero_point], outputs=[dequantized]))
        node.op = "Mul"
        node.inputs[1] = dequantized
        changed += 1
    if changed:
        model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model.invalidate()
    return changed


# ---- candidates and measurement -------------------------------------------------------------
@dataclass
class Candidate:
    name: str
    model: Model
    session: object = None


def candidate_forms(model: Model, forms: Sequence[str],
                    prepare: Callable[[Model], object] | None = None) -> list[Candidate]:
    """The forms of ``model`` among ``forms`` that can be built exactly (the given one first).

    ``prepare`` runs on every variant built here (not on ``model``), e.g. the backend's
    ``compact`` step, so that what gets timed and verified is what would be shipped.
    """
    given = activation_dtype(model)
    qoperator = any(n.op in QOPERATOR_OPS for n in model.graph.nodes)
    given_name = ("qoperator" if qoperator else "qdq") + (f"-{_short(given)}" if given else "")
    candidates = [Candidate(given_name, model)]
    for form in forms:
        if form == given_name or qoperator:
            continue
        base, *rewrites = form.split("+")
        kind, _, act = base.partition("-")
        if kind not in ("qdq", "qoperator") or act not in ("u8", "s8") or given not in ("uint8", "int8") \
                or set(rewrites) - REWRITES.keys():
            continue  # only exact rewrites of the given form are built here
        variant = model.copy()
        changed = act == _short(given) or convert_activations(variant, "uint8" if act == "u8" else "int8") > 0
        for rewrite in rewrites:
            changed = REWRITES[rewrite](variant) > 0 and changed
        if kind == "qoperator":
            changed = _lower_to_qoperators(variant) > 0 and changed
        if changed:
            if prepare is not None:
                prepare(variant)
            candidates.append(Candidate(form, variant))
    return candidates


def _lower_to_qoperators(model: Model) -> int:
    """QLinearConv/QLinearMatMul for DQ→Conv/MatMul→Q groups (fold-qdq's QOperator lowering)."""
    from ...passes.quant.qoperator import lower_to_qoperators

    counts = lower_to_qoperators(model)
    model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model.invalidate()
    return sum(counts.values())


# Form suffixes ("qdq-u8+divmul"): graph rewrites that keep the numbers.
REWRITES: dict[str, Callable[[Model], int]] = {"divmul": divisions_to_multiplications}


def _short(dtype: str) -> str:
    return {"uint8": "u8", "int8": "s8"}.get(dtype, dtype)


def measure(candidates: list[Candidate], feeds: Mapping[str, np.ndarray], *, threads: Sequence[int] = (1,),
            rounds: int = 10, warmup: int = 2, providers: Sequence[str] = ("CPUExecutionProvider",),
            clock: Callable[[], float] = time.perf_counter) -> dict[str, dict[str, dict[str, float]]]:
    """Median and p90 latency (ms) of every candidate per thread count, runs interleaved."""
    result: dict[str, dict[str, dict[str, float]]] = {c.name: {} for c in candidates}
    protos: dict[int, object] = {}  # serialize each candidate once, not once per thread count

    def proto(i: int):
        if i not in protos:
            protos[i] = candidates[i].model.to_proto()
        return protos[i]

    for count in threads:
        sessions = [c.session if c.session is not None and count == threads[0] else
                    create_session(proto(i), providers=providers, optimization="all", threads=count)
                    for i, c in enumerate(candidates)]
        for session in sessions:
            for _ in range(warmup):
                session.run(None, dict(feeds))
        times: list[list[float]] = [[] for _ in candidates]
        for r in range(rounds):
            # rotate the order so that no candidate always runs right after the same one
            order = list(range(len(candidates)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                start = clock()
                sessions[i].run(None, dict(feeds))
                times[i].append((clock() - start) * 1000)
        for candidate, samples in zip(candidates, times):
            arr = np.array(samples)
            result[candidate.name][f"threads={count}"] = {
                "median_ms": round(float(np.median(arr)), 4), "p90_ms": round(float(np.percentile(arr, 90)), 4)}
    return result


def select_int8_form(model: Model, feeds: Mapping[str, np.ndarray], *, forms: Sequence[str],
                     threads: Sequence[int] = (1,), rounds: int = 10,
                     providers: Sequence[str] = ("CPUExecutionProvider",)) -> tuple[Model, dict]:
    """The fastest exact form of quantized ``model`` and the record of what was measured.

    The score of a form is the sum over thread counts of its median latency relative to the
    given form. Every candidate's outputs are checked against the given form's first.
    """
    best, record = choose_int8_form(model, feeds, forms=forms, threads=threads, rounds=rounds, providers=providers)
    return best.model, record


def choose_int8_form(model: Model, feeds: Mapping[str, np.ndarray], *, forms: Sequence[str],
                     threads: Sequence[int] = (1,), rounds: int = 10,
                     providers: Sequence[str] = ("CPUExecutionProvider",), given_session: object = None,
                     prepare: Callable[[Model], object] | None = None) -> tuple[Candidate, dict]:
    """:func:`select_int8_form`, returning the chosen :class:`Candidate` with its open session.

    ``given_session``: an onnxruntime session of ``model`` already open (optimization ``all``,
    ``threads[0]`` threads), reused instead of building another. ``prepare`` runs on every
    variant (see :func:`candidate_forms`). The chosen candidate's ``session`` is open (``all``,
    ``threads[0]``), so callers can run it without loading the model again.
    """
    candidates = candidate_forms(model, forms, prepare)
    candidates[0].session = given_session
    record: dict = {"given": candidates[0].name, "candidates": [c.name for c in candidates],
                    "threads": list(threads), "rounds": rounds, "cpu_count": os.cpu_count()}
    if len(candidates) == 1:
        record.update(chosen=candidates[0].name, reason="no other exact form to compare")
        return candidates[0], record
    # Compare what actually runs: onnxruntime's fused int8 kernels, not the float simulation of
    # Q/DQ that a lower optimization level executes (they differ by quantization noise).
    for candidate in candidates:  # reused for timing at the first thread count
        if candidate.session is None:
            candidate.session = create_session(candidate.model.to_proto(), providers=providers, optimization="all",
                                               threads=threads[0])
    reference = candidates[0].session.run(None, dict(feeds))
    kept = [candidates[0]]
    for candidate in candidates[1:]:
        values = candidate.session.run(None, dict(feeds))
        if all(_close(a, b) for a, b in zip(reference, values)):
            kept.append(candidate)
        else:
            record.setdefault("rejected", []).append(candidate.name)
    latencies = measure(kept, feeds, threads=threads, rounds=rounds, providers=providers)
    base = latencies[kept[0].name]

    def score(name: str) -> float:
        return sum(latencies[name][k]["median_ms"] / max(base[k]["median_ms"], 1e-9) for k in base)

    best = min(kept, key=lambda c: score(c.name))
    record.update(chosen=best.name, latency=latencies,
                  relative={c.name: round(score(c.name) / len(base), 3) for c in kept})
    for candidate in candidates:
        if candidate is not best:
            candidate.session = None  # free the others now, not when the caller lets go
    return best, record


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    if not a.size:
        return True
    scale = max(float(np.max(np.abs(a))), 1e-6)
    # Same quantized values, but kernels may round accumulations differently (u8s8 saturation),
    # and a sharp output (a sigmoid mask) can flip single elements: bound the mean difference.
    return float(np.mean(np.abs(a - b))) <= 0.01 * scale

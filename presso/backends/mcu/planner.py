"""Static memory plan: every intermediate tensor of a lowered program at a fixed arena offset.

Lifetimes come from the program's fixed op order. Tensors that share bytes form one buffer:
a view (Reshape, Flatten…) shares its input's buffer, an elementwise op whose input dies
there (a lookup table, an Add of same-shaped operands) writes in place, and a Concat input
that dies at the Concat and keeps its quantization is written straight into its block of
the Concat's output (no copy). A buffer holding a
graph input is the caller's input pointer; one holding a single graph output (and no input)
is the caller's output pointer; the rest are packed into one arena greedily (TFLite Micro's
GreedyMemoryPlanner idea: largest first, each at the lowest offset that no buffer alive at the
same time overlaps), in a few orders, first fit and best fit, plus seeded random perturbations
while the arena is above 1.05× the lower bound; the smallest arena is kept.

The lower bound is the largest total size of arena buffers alive at one step: no placement
can be smaller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .lower import Program

ALIGN = 4  # every buffer starts on a word boundary (int32 loads in kernels, DMA-friendly)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Buffer:
    tensors: list[str]
    size: int
    first: int  # step of the op that writes it (-1: a graph input, there before step 0)
    last: int  # step of the last op that reads it (len(ops): a graph output)
    kind: str = "arena"  # "arena", "input", "output" or "const"
    port: int = -1  # input/output index for kind "input"/"output"
    offset: int = 0


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    buffer_of: dict[str, int]  # tensor -> index in buffers
    arena_bytes: int
    lower_bound: int
    copies: list[tuple[str, int]] = field(default_factory=list)  # (tensor, output port) copied at the end
    offset_in: dict[str, int] = field(default_factory=dict)  # tensor -> bytes into its buffer (Concat parts)
    aliased_parts: set[tuple[int, int]] = field(default_factory=set)  # (op index, input index) not copied

    def location(self, tensor: str) -> tuple[str, int, int]:
        """(kind, port, byte offset) of a tensor."""
        b = self.buffers[self.buffer_of[tensor]]
        return b.kind, b.port, b.offset + self.offset_in.get(tensor, 0)


def plan_memory(program: Program) -> MemoryPlan:
    tensors = program.tensors
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    uses = program.uses()
    last_use = {name: max(steps) for name, steps in uses.items()}
    graph_outputs = set(program.outputs)
    graph_inputs = set(program.inputs)

    # views share their input's buffer; in-place ops may take their input's when it dies there
    group: dict[str, list[str]] = {}

    def join(child: str, src: str) -> None:
        r = root(src)
        parent[child] = r
        group.setdefault(r, [r]).append(child)

    for step, op in enumerate(program.ops):
        src = op.inputs[0] if op.inputs else None
        if src is None or tensors[src].data is not None:
            continue
        if op.view:
            join(op.outputs[0], src)
        elif op.inplace and tensors[op.outputs[0]].nbytes == tensors[src].nbytes:
            r = root(src)
            mem = group.get(r, [r])
            dies_here = all(last_use.get(t, -1) <= step for t in mem)
            touches_port = any(t in graph_inputs or t in graph_outputs for t in mem)
            shared = any(root(other) == r for other in op.inputs[1:])
            if dies_here and not touches_port and not shared:
                join(op.outputs[0], src)

    producer = {}
    for step, op in enumerate(program.ops):
        for out in op.outputs:
            producer[out] = step
    groups: dict[str, list[str]] = {}
    for name, t in tensors.items():
        if t.data is not None:
            continue
        groups.setdefault(root(name), []).append(name)

    # a Concat input that dies at the Concat and keeps its quantization is written by its
    # producer straight into its place in the Concat's output (batch-1 channel concats are
    # contiguous blocks): no copy, and no second buffer
    candidates: list[tuple[str, str, int, int, int]] = []  # (group root, concat output, offset, step, input)
    seen: set[str] = set()
    for step, op in enumerate(program.ops):
        if op.kind != "concat" or op.params["outer"] != 1:
            continue
        taken: set[str] = set()
        for index, (src, part) in enumerate(zip(op.inputs, op.params["parts"], strict=True)):
            if not part["copy"] or tensors[src].data is not None:
                continue
            r = root(src)
            members = groups.get(r, [])
            if r in taken or r in seen or r == root(op.outputs[0]) or \
                    any(t in graph_inputs or t in graph_outputs for t in members) or \
                    any(last_use.get(t, -1) > step for t in members) or \
                    any(tensors[t].nbytes != tensors[src].nbytes for t in members):
                continue
            candidates.append((r, op.outputs[0], part["offset"], step, index))
            taken.add(r)
            seen.add(r)

    def build(inside: dict[str, tuple[str, int]]):
        return _buffers(program, groups, inside, root, producer, last_use)

    # each aliasing is kept only if it does not raise the liveness bound: it makes the Concat's
    # buffer live from the input's producer on, which costs where the input lived long
    inside: dict[str, tuple[str, int]] = {}
    aliased_parts: set[tuple[int, int]] = set()
    bound = _lower_bound([b for b in build(inside)[0] if b.kind == "arena"], len(program.ops))
    for r, out, offset, step, index in candidates:
        trial = {**inside, r: (out, offset)}
        trial_bound = _lower_bound([b for b in build(trial)[0] if b.kind == "arena"], len(program.ops))
        if trial_bound <= bound:
            inside, bound = trial, trial_bound
            aliased_parts.add((step, index))

    best = None
    for chosen, parts in ((inside, aliased_parts), ({}, set())) if inside else (({}, set()),):
        buffers, buffer_of, offset_in, copies = build(chosen)
        arena = [b for b in buffers if b.kind == "arena"]
        lower_bound = _lower_bound(arena, len(program.ops))
        offsets, arena_bytes = _pack(arena, lower_bound)
        for b, off in zip(arena, offsets, strict=True):
            b.offset = off
        plan = MemoryPlan(buffers, buffer_of, arena_bytes, lower_bound, copies, offset_in, parts)
        if best is None or plan.arena_bytes < best.arena_bytes:  # packing is a heuristic: keep the smaller
            best = plan
    return best


def _buffers(program: Program, groups: dict[str, list[str]], inside: dict[str, tuple[str, int]], root, producer,
             last_use) -> tuple[list[Buffer], dict[str, int], dict[str, int], list[tuple[str, int]]]:
    """The buffers of a program: each group of byte-sharing tensors, with the groups written
    inside a Concat's output merged into that output's buffer at their offsets."""
    tensors = program.tensors
    graph_inputs, graph_outputs = set(program.inputs), set(program.outputs)

    def container(r: str) -> tuple[str, int]:
        offset = 0
        while r in inside:
            tensor, at = inside[r]
            offset += at
            r = root(tensor)
        return r, offset

    merged: dict[str, list[tuple[str, int]]] = {}
    for r, names in groups.items():
        top, offset = container(r)
        merged.setdefault(top, []).extend((n, offset) for n in names)

    end = len(program.ops)
    buffers: list[Buffer] = []
    buffer_of: dict[str, int] = {}
    offset_in: dict[str, int] = {}
    copies: list[tuple[str, int]] = []
    for r, placed in merged.items():
        names = [n for n, _ in placed]
        first = min(-1 if n in graph_inputs else producer.get(n, -1) for n in names)
        last = max([end if n in graph_outputs else last_use.get(n, first) for n in names] + [first])
        size = max(off + tensors[n].nbytes for n, off in placed)
        buf = Buffer(names, size, first, last)
        ins = [n for n in names if n in graph_inputs]
        outs = [n for n in names if n in graph_outputs]
        if ins:
            buf.kind, buf.port = "input", program.inputs.index(ins[0])
            copies.extend((o, program.outputs.index(o)) for o in outs)
        elif len(outs) >= 1 and all(tensors[o].nbytes == size for o in outs[:1]):
            buf.kind, buf.port = "output", program.outputs.index(outs[0])
            copies.extend((o, program.outputs.index(o)) for o in outs[1:])
        for n, off in placed:
            buffer_of[n] = len(buffers)
            if off:
                offset_in[n] = off
        buffers.append(buf)
    return buffers, buffer_of, offset_in, copies


def _lower_bound(buffers: list[Buffer], end: int) -> int:
    """The largest total (aligned) size of buffers alive at one step."""
    live = np.zeros(end + 3, np.int64)  # steps -1 .. end, and one past
    for b in buffers:
        live[b.first + 1] += _aligned(b.size)
        live[b.last + 2] -= _aligned(b.size)
    return int(np.cumsum(live).max()) if buffers else 0


_ORDERS = (
    lambda b: (-b.size, b.first),  # TFLite Micro's: largest first
    lambda b: (-b.size * (b.last - b.first + 1), b.first),  # most byte-steps first
    lambda b: (-(b.last - b.first), -b.size),  # longest-lived first
    lambda b: (b.first, -b.size),  # in schedule order
)


def _pack(buffers: list[Buffer], lower_bound: int, *, tries: int = 64, seed: int = 0) -> tuple[list[int], int]:
    """Offsets for ``buffers`` and the arena size: greedy placement (first fit and best fit) in
    a few orders; while the best is above 1.05× the lower bound, orders perturbed at random
    (seeded: the plan is reproducible) are tried too. The smallest arena wins."""
    if not buffers:
        return [], 0
    sizes = [_aligned(b.size) for b in buffers]
    conflicts = [[j for j, c in enumerate(buffers) if j != i and not (c.last < b.first or b.last < c.first)]
                 for i, b in enumerate(buffers)]
    best: tuple[list[int], int] | None = None
    orders = [sorted(range(len(buffers)), key=lambda i, k=key: k(buffers[i])) for key in _ORDERS]
    # greedy by breadth (Pisarchyk & Lee, 2020): buffers alive at the busiest steps first
    first = min(b.first for b in buffers)
    live = np.zeros(max(b.last for b in buffers) - first + 1, np.int64)
    for b, size in zip(buffers, sizes, strict=True):
        live[b.first - first:b.last - first + 1] += size
    breadth = [int(live[b.first - first:b.last - first + 1].max()) for b in buffers]
    orders.append(sorted(range(len(buffers)), key=lambda i: (-breadth[i], -sizes[i], buffers[i].first)))
    for order in orders:
        for best_fit in (False, True):
            result = _greedy(order, sizes, conflicts, best_fit)
            if best is None or result[1] < best[1]:
                best = (result[0], result[1], order, best_fit)
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        if best[1] <= 1.05 * lower_bound:
            break
        order = list(best[2])
        for _swap in range(max(1, len(order) // 10)):  # nudge a tenth of the order
            i = int(rng.integers(0, len(order) - 1))
            order[i], order[i + 1] = order[i + 1], order[i]
        result = _greedy(order, sizes, conflicts, best[3])
        if result[1] < best[1]:
            best = (result[0], result[1], order, best[3])
    return best[0], best[1]


def _greedy(order: list[int], sizes: list[int], conflicts: list[list[int]], best_fit: bool) -> tuple[list[int], int]:
    """Place buffers in ``order``, each at the lowest offset (or, with ``best_fit``, in the
    tightest gap) that no already placed buffer alive at the same time overlaps."""
    offsets = [-1] * len(sizes)
    total = 0
    for i in order:
        size = sizes[i]
        busy = sorted((offsets[j], offsets[j] + sizes[j]) for j in conflicts[i] if offsets[j] >= 0)
        chosen, chosen_gap, cursor = None, None, 0
        for lo, hi in busy:
            if lo - cursor >= size:
                if not best_fit:
                    chosen = cursor
                    break
                if chosen_gap is None or lo - cursor < chosen_gap:
                    chosen, chosen_gap = cursor, lo - cursor
            cursor = max(cursor, hi)
        offsets[i] = cursor if chosen is None else chosen
        total = max(total, offsets[i] + size)
    return offsets, total


def check_plan(plan: MemoryPlan) -> None:
    """Assert that no two arena buffers alive at the same step overlap (for tests)."""
    arena = [b for b in plan.buffers if b.kind == "arena"]
    for i, a in enumerate(arena):
        assert a.offset % ALIGN == 0 and a.offset + a.size <= plan.arena_bytes
        for b in arena[i + 1:]:
            if a.last < b.first or b.last < a.first:
                continue
            assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a.tensors, b.tensors)

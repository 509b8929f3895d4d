"""Static memory plan: every intermediate tensor of a lowered program at a fixed arena offset.

Lifetimes come from the program's fixed op order. Tensors that share bytes form one buffer:
a view (Reshape, Flatten…) shares its input's buffer, an elementwise op whose input dies
there (a lookup table, an Add of same-shaped operands) writes in place, and a Concat input
that dies at the Concat and keeps its quantization is written straight into its block of
the Concat's output (no copy). A buffer holding a
graph input is the caller's input pointer; one holding a single graph output (and no input)
is the caller's output pointer; the rest are packed into one arena.

Packing places buffers one at a time, each at the lowest offset (first fit) or in the
tightest gap (best fit) that no buffer alive at the same time overlaps, in several orders:
largest first (TFLite Micro's GreedyMemoryPlanner), most byte-steps first, longest-lived
first, schedule order, and greedy by breadth (Pisarchyk & Lee, 2020). Each start is then
improved by hill climbing on the order (a buffer that ends at the top of the arena moves
ahead of a buffer that pushed it up; TVM's USMP hill climb also reorders around the buffer
at the top, at random), and a seeded random walk from the best start continues while the
arena is above the bound. The smallest arena is kept, so the plan is never larger than the
best single heuristic (:func:`placements`) and is reproducible.

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

    nbytes = {name: t.nbytes for name, t in tensors.items() if t.data is None}  # built into buffers many times

    def build(inside: dict[str, tuple[str, int]]):
        return _buffers(program, groups, inside, root, producer, last_use, nbytes)

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
             last_use, nbytes: dict[str, int]
             ) -> tuple[list[Buffer], dict[str, int], dict[str, int], list[tuple[str, int]]]:
    """The buffers of a program: each group of byte-sharing tensors, with the groups written
    inside a Concat's output merged into that output's buffer at their offsets."""
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
        size = max(off + nbytes[n] for n, off in placed)
        buf = Buffer(names, size, first, last)
        ins = [n for n in names if n in graph_inputs]
        outs = [n for n in names if n in graph_outputs]
        if ins:
            buf.kind, buf.port = "input", program.inputs.index(ins[0])
            copies.extend((o, program.outputs.index(o)) for o in outs)
        elif len(outs) >= 1 and all(nbytes[o] == size for o in outs[:1]):
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
    ("size", lambda b: (-b.size, b.first)),  # TFLite Micro's: largest first
    ("byte-steps", lambda b: (-b.size * (b.last - b.first + 1), b.first)),  # most size × lifetime first
    ("lifetime", lambda b: (-(b.last - b.first), -b.size)),  # longest-lived first
    ("first-use", lambda b: (b.first, -b.size)),  # in schedule order
)


def placements(buffers: list[Buffer]) -> dict[str, tuple[list[int], int]]:
    """Every single heuristic the packing starts from, as ``{name: (offsets, arena bytes)}``:
    greedy placement, first fit and best fit, in each order of :data:`_ORDERS` and by breadth.
    The plan is never larger than the smallest of these."""
    sizes, conflicts = _sizes_and_conflicts(buffers)
    return {f"{name}/{'best' if best_fit else 'first'}-fit": _greedy(order, sizes, conflicts, best_fit)
            for name, order in _orders(buffers, sizes) for best_fit in (False, True)}


def _sizes_and_conflicts(buffers: list[Buffer]) -> tuple[list[int], list[list[int]]]:
    """Aligned sizes, and for each buffer the others alive at one of its steps."""
    sizes = [_aligned(b.size) for b in buffers]
    first = np.array([b.first for b in buffers])
    last = np.array([b.last for b in buffers])
    overlap = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    np.fill_diagonal(overlap, False)
    return sizes, [np.flatnonzero(row).tolist() for row in overlap]


def _orders(buffers: list[Buffer], sizes: list[int]) -> list[tuple[str, list[int]]]:
    orders = [(name, sorted(range(len(buffers)), key=lambda i, k=key: k(buffers[i]))) for name, key in _ORDERS]
    # greedy by breadth (Pisarchyk & Lee, 2020): buffers alive at the busiest steps first
    first = min(b.first for b in buffers)
    live = np.zeros(max(b.last for b in buffers) - first + 1, np.int64)
    for b, size in zip(buffers, sizes, strict=True):
        live[b.first - first:b.last - first + 1] += size
    breadth = [int(live[b.first - first:b.last - first + 1].max()) for b in buffers]
    orders.append(("breadth", sorted(range(len(buffers)), key=lambda i: (-breadth[i], -sizes[i], buffers[i].first))))
    return orders


def _pack(buffers: list[Buffer], lower_bound: int, *, climb_tries: int = 300, walk_steps: int = 64,
          seed: int = 0) -> tuple[list[int], int]:
    """Offsets for ``buffers`` and the arena size. Each start of :func:`placements` is
    improved by :func:`_climb`; then a seeded random walk from the best start: ``walk_steps``
    times, nudge the walk's order, place it, climb from there (briefly). Stops as soon as the
    arena reaches the lower bound; the smallest arena wins, and the same buffers always get
    the same plan."""
    if not buffers:
        return [], 0
    sizes, conflicts = _sizes_and_conflicts(buffers)
    best: tuple[list[int], int] | None = None

    def improve(order: list[int], best_fit: bool, tries: int) -> tuple[int, bool]:
        """Place ``order``, climb from there, keep the result if it is the best so far;
        (arena of the order as given, whether the bound is reached)."""
        nonlocal best
        offsets, total = _greedy(order, sizes, conflicts, best_fit)
        placed = total
        if total > lower_bound:
            _, offsets, total = _climb(order, offsets, total, sizes, conflicts, best_fit, tries)
        if best is None or total < best[1]:
            best = (offsets, total)
        return placed, best[1] <= lower_bound

    walk: tuple[int, list[int], bool] | None = None  # (arena, order, best fit) of the best start
    for _name, order in _orders(buffers, sizes):
        for best_fit in (False, True):
            placed, done = improve(order, best_fit, climb_tries)
            if done:
                return best
            if walk is None or placed < walk[0]:
                walk = (placed, order, best_fit)
    rng = np.random.default_rng(seed)
    for _ in range(walk_steps):
        order = list(walk[1])
        for _swap in range(max(1, len(order) // 10)):  # nudge a tenth of the order
            i = int(rng.integers(0, len(order) - 1))
            order[i], order[i + 1] = order[i + 1], order[i]
        placed, done = improve(order, walk[2], climb_tries // 10)
        if done:
            break
        if placed < walk[0]:
            walk = (placed, order, walk[2])
    return best


def _climb(order: list[int], offsets: list[int], total: int, sizes: list[int], conflicts: list[list[int]],
           best_fit: bool, max_tries: int) -> tuple[list[int], list[int], int]:
    """Hill climbing on the placement order: a buffer that ends at the top of the arena was
    pushed there by buffers placed before it, so move it ahead of one of them (the nearest
    first, then to the front) and place again; keep the move when the arena shrinks, or stays
    the same with fewer buffers reaching its top. Stops at a local optimum or after
    ``max_tries`` placements."""

    def score(offs: list[int], arena: int) -> tuple[int, int]:
        return arena, sum(1 for i, off in enumerate(offs) if off + sizes[i] == arena)

    current = score(offsets, total)
    tries = 0
    while tries < max_tries:
        position = {buffer: k for k, buffer in enumerate(order)}
        tops = sorted((i for i in order if offsets[i] + sizes[i] == total), key=position.__getitem__)
        moved = False
        for top in tops:
            earlier = sorted((position[j] for j in conflicts[top] if position[j] < position[top]), reverse=True)
            for at in [*earlier, 0]:
                if tries >= max_tries:
                    break
                trial = order[:at] + [top] + [b for b in order[at:] if b != top]
                trial_offsets, trial_total = _greedy(trial, sizes, conflicts, best_fit)
                tries += 1
                trial_score = score(trial_offsets, trial_total)
                if trial_score < current:
                    order, offsets, total, current, moved = trial, trial_offsets, trial_total, trial_score, True
                    break
            if moved:
                break
        if not moved:
            break
    return order, offsets, total


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

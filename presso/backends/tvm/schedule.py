"""`CPUFallback`: a dlight schedule rule that makes untuned CPU kernels parallel and vectorized.

TVM 0.27 ships no default CPU schedule for convolutions or element-wise kernels: without
tuning they compile to serial scalar loop nests. This rule gives every such kernel the
classic register-tiled shape instead. It is written for the NHWC layout that
:mod:`.layout` gives convolutions (output channels innermost), and works on any kernel
whose innermost output dimension is contiguous in what it reads:

- reductions (conv, depthwise conv, matmul, GEMV, global pooling): the innermost spatial
  loop (output channels) is split into ``lanes`` (16, 8 or 4 floats: two, one or half an
  AVX2 register) and the next spatial loop (output columns) into ``rows``, giving a
  ``rows × lanes`` accumulator tile that LLVM keeps in registers. The reduction loops
  (kernel rows, kernel columns, input channels) run around the tile, so the inner step
  is one vector load of weights, ``rows`` broadcasts of inputs and ``rows`` vector FMAs.
  The loops outside the tile (output-channel blocks first, so a block of weights stays
  in cache while the pixels stream by) run in parallel. Bias, activation and other
  epilogues are folded into the tile's write-back.
- zero padding stays a separate, parallel and vectorized stage: inlined into the
  convolution it would put a bounds check into the innermost loop (which LLVM then
  cannot vectorize).
- injective kernels (element-wise, transpose, resize, concat): outer loops fused and run
  in parallel, the innermost loop split by the vector width and vectorized.

Tile sizes follow the kernel's shape (lanes divide the channel count, rows divide the
output width), so there are no predicated partial tiles. The rule never changes what a
kernel computes (only loop structure, so results match the unscheduled kernel to float
summation order) and returns ``None`` for kernels it does not recognize, which the next
rule (dlight's ``Reduction``) or TVM's default then takes. Tuning (MetaSchedule)
replaces it kernel by kernel. The same schedules serve aarch64 (8 lanes = two NEON
registers).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

LANES = 8  # float32 lanes of one AVX2 register / two NEON registers
ACCUMULATORS = 12  # vector registers for the accumulator tile (AVX2 and NEON have ≥ 16)
MAX_ROWS = 8
INLINE_COPIED_LOADS = 16  # buffer loads an inlined expression may add by being copied into its reads
L2_BYTES = 512 * 1024  # per core; a smaller L2 only moves the loop-order threshold
# Below this many iterations a kernel runs serially: waking the thread pool costs more than
# splitting saves (PP-OCR cls has dozens of kernels of a few microseconds).
PARALLEL_MIN_WORK = 1 << 16


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _divisor(extent: int, candidates) -> int:
    return next((n for n in candidates if extent % n == 0), 1)


def vector_lanes(channels: int) -> int:
    """Floats per vector for ``channels`` output columns: a full register when it divides them."""
    return _divisor(channels, (LANES, LANES // 2, 2))


def vector_block(channels: int) -> int:
    """Output columns one accumulator-tile row holds (and the block of the packed weights).

    Two vectors when they divide the channels, else three (24 channels: one block instead of
    three), else one. The vectors of a row are separate loop iterations (unrolled): LLVM
    splits a 24-float vector badly.
    """
    lanes = vector_lanes(channels)
    if lanes < LANES:
        return lanes
    return lanes * _divisor(channels // lanes, (2, 3))


class CPUFallback(CPUScheduleRule):
    """Parallel, vectorized, register-tiled loops for kernels no other rule scheduled."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or any("O" in info.dom_kind() for info in infos):
            return None
        try:
            _inline(sch, infos)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            reductions = [info for info in infos if "R" in info.dom_kind()]
            if len(reductions) > 1:
                return None
            if reductions and not _tile_reduction(sch, reductions[0]):
                return None  # a row reduction (sum, softmax): dlight's Reduction rule takes it
            for info in infos:
                if "R" not in info.dom_kind() and _alive(sch, info.block_rv):
                    _injective(sch, info.block_rv)
        except (RuntimeError, ValueError):  # ScheduleError and TVMError derive from RuntimeError
            return None
        return sch


# ---- inlining ---------------------------------------------------------------------------------
def _inline(sch: s_tir.Schedule, infos) -> None:
    """Inline injective blocks (except zero-padding) until nothing more inlines.

    A block whose value its consumers read several times is inlined only when it is small:
    inlining copies the expression into every read, so a chain of such blocks (a GELU through
    a clamped tanh polynomial, with quantize/dequantize between the ops) grows exponentially,
    and LLVM then takes minutes on the kernel.
    """
    blocks = [info.block_rv for info in infos if "R" not in info.dom_kind() and not _is_padding(sch, info.block_rv)]
    changed = True
    while changed:
        changed = False
        for block in list(blocks):
            attempts = []
            if _cheap_to_inline(sch, block):
                attempts.append(sch.compute_inline)
            if _sole_consumer(sch, block):
                attempts.append(sch.reverse_compute_inline)
            for primitive in attempts:
                try:
                    primitive(block)
                except (RuntimeError, ValueError):
                    continue
                blocks.remove(block)
                changed = True
                break


def _sole_consumer(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` is the only reader of its producer's output (apache-tvm 0.27's
    reverse_compute_inline does not check it, and leaves the other readers dangling)."""
    producers = sch.get_producers(block)
    return len(producers) == 1 and len(sch.get_consumers(producers[0])) == 1


def _cheap_to_inline(sch: s_tir.Schedule, block) -> bool:
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return False
    name = stmt.writes[0].source.name + "["
    reads = sum(str(sch.get(consumer).body).count(name) for consumer in sch.get_consumers(block))
    loads = str(getattr(stmt.body, "value", stmt.body)).count("[")  # buffer loads the copy carries
    return reads <= 1 or loads * reads <= INLINE_COPIED_LOADS


def _is_padding(sch: s_tir.Schedule, block) -> bool:
    """A block that copies its input with a bounds check (TOPI's pad): ``if_then_else(...)``."""
    body = sch.get(block).body
    value = getattr(body, "value", None)
    op = getattr(value, "op", None)
    return str(getattr(op, "name", "")).endswith(".if_then_else")


def _alive(sch: s_tir.Schedule, block) -> bool:
    try:
        sch.get(block)
        return True
    except (RuntimeError, ValueError):
        return False


# ---- injective --------------------------------------------------------------------------------
def _injective(sch: s_tir.Schedule, block) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    work = _work(sch, loops)
    inner = loops[-1]
    extent = _extent(sch, inner)
    outer = list(loops[:-1])
    lanes = _divisor(extent, (2 * LANES, LANES, LANES // 2)) if extent else 1
    if lanes > 1:
        if extent > lanes:
            outer_part, inner = sch.split(inner, factors=[None, lanes])
            outer.append(outer_part)
        sch.vectorize(inner)
    else:
        outer = list(loops)
    if outer and work >= PARALLEL_MIN_WORK:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _work(sch: s_tir.Schedule, loops) -> int:
    """Iterations of a loop nest (multiply-adds of a reduction, elements of an injective block)."""
    work = 1
    for loop in loops:
        work *= _extent(sch, loop) or PARALLEL_MIN_WORK
    return work


# ---- reductions: register-tiled -------------------------------------------------------------
def _tile_reduction(sch: s_tir.Schedule, info) -> bool:
    """Register-tile a conv/matmul/GEMV/pooling block; False when its columns are not contiguous."""
    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    s_loops = [lp for lp, k in zip(loops, kinds) if k == "S"]
    r_loops = [lp for lp, k in zip(loops, kinds) if k == "R"]
    s_iters = [it for it in info.iters if it.kind == "S"]
    wide = [(lp, it) for lp, it in zip(s_loops, s_iters) if _extent(sch, lp) != 1]
    if not wide or not r_loops:
        return False
    cols, cols_iter = wide[-1]
    n_cols = _extent(sch, cols)
    if n_cols is None:
        return False
    lanes, block_cols = vector_lanes(n_cols), vector_block(n_cols)
    if not _contiguous(sch, block, cols_iter.var, block_cols):
        return False
    rows = wide[-2][0] if len(wide) >= 2 else None
    n_rows = _extent(sch, rows) if rows is not None else None
    if rows is not None and n_rows is None:
        return False
    work = _work(sch, loops)
    sch.reorder(*s_loops, *r_loops)
    acc = sch.cache_write(block, 0, "local")
    col_outer, col_vectors, col_lanes = sch.split(cols, factors=[None, block_cols // lanes, lanes])
    tile = [col_vectors, col_lanes]
    row_outer = rows
    if rows is not None:
        vectors = max(1, block_cols // LANES)  # accumulator registers per tile row
        n_tile_rows = _divisor(n_rows, range(min(MAX_ROWS, ACCUMULATORS // vectors), 1, -1))
        if n_tile_rows > 1:
            row_outer, row_inner = sch.split(rows, factors=[None, n_tile_rows])
            tile = [row_inner, col_vectors, col_lanes]
    pixels = [row_outer if rows is not None and lp.same_as(rows) else lp for lp in s_loops if not lp.same_as(cols)]
    # Weights (reduction × columns) that fit in half the L2 cache: pixel tiles outermost, each
    # writing whole output rows. Bigger weights: output-channel blocks outermost, so one block
    # of weights stays in cache while the pixels stream by.
    weight_bytes = n_cols * 4
    for loop in r_loops:
        weight_bytes *= _extent(sch, loop) or 1
    outer = [col_outer, *pixels] if weight_bytes > L2_BYTES // 2 else [*pixels, col_outer]
    sch.reorder(*outer, *r_loops, *tile)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    # Parallelize before the write-back moves in: TVM wants compact dataflow under the loop.
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(fused)
    sch.reverse_compute_at(acc, fused)
    for loop in tile[:-1]:
        sch.unroll(loop)
    if lanes > 1:
        sch.vectorize(tile[-1])
    init = sch.decompose_reduction(block, r_loops[0])
    _vectorize_tile(sch, init, lanes)
    # Epilogues (bias, activation) read the tile's write-back elementwise: fold them into it.
    # (a failing primitive raises before it changes the schedule, so stopping is safe)
    while len(consumers := sch.get_consumers(acc)) == 1:
        try:
            sch.reverse_compute_inline(consumers[0])
        except (RuntimeError, ValueError):
            break
    _vectorize_tile(sch, acc, lanes)
    return True


def _vectorize_tile(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Vectorize a tile-shaped block (init or write-back) by ``lanes``, unroll the rest of it."""
    loops = sch.get_loops(block)[1:]  # under the parallel loop
    if not loops:
        return
    inner = loops[-1]
    extent = _extent(sch, inner) or 0
    if extent % lanes or extent > 4 * LANES:
        return
    outer = list(loops[:-1])
    if extent > lanes:
        vectors, inner = sch.split(inner, factors=[None, lanes])
        outer.append(vectors)
    if lanes > 1:
        sch.vectorize(inner)
    for loop in outer:
        if (_extent(sch, loop) or MAX_ROWS + 1) <= MAX_ROWS:
            sch.unroll(loop)


def _contiguous(sch: s_tir.Schedule, block, var, lanes: int) -> bool:
    """Whether moving ``var`` within a block of ``lanes`` moves every buffer access by 0 or 1
    element of its last axis (so the lanes are one contiguous vector or one broadcast value)."""
    stmt = sch.get(block)
    for region in list(stmt.reads) + list(stmt.writes):
        indices = [rng.min for rng in region.region]
        for axis, index in enumerate(indices):
            step = _lane_step(index, var, lanes)
            if step is None or (step != 0 and (axis != len(indices) - 1 or step != 1)):
                return False
    return True


def _lane_step(index, var, lanes: int) -> int | None:
    """How far ``index`` moves when ``var`` moves by one inside an aligned block of ``lanes``."""
    from tvm.sym.pattern import detect_linear_equation

    linear = detect_linear_equation(index, [var])
    if len(linear) == 2:
        return int(linear[0]) if isinstance(linear[0], tirx.IntImm) else None
    # Blocked layouts: x // B and x % B with B a multiple of the lanes (packed weights).
    if isinstance(index, (tirx.FloorDiv, tirx.FloorMod)) and isinstance(index.b, tirx.IntImm) \
            and int(index.b) % lanes == 0:
        inner = detect_linear_equation(index.a, [var])
        if len(inner) == 2 and _is_int(inner[0], 1) and _is_int(inner[1], 0):
            return 0 if isinstance(index, tirx.FloorDiv) else 1
    return None


def _is_int(expr, value: int) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr) == value

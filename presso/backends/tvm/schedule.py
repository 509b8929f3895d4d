"""`CPUFallback`: a dlight schedule rule that makes untuned CPU kernels parallel and vectorized.

TVM 0.27 ships no default CPU schedule for convolutions or element-wise kernels: without
tuning they compile to serial scalar loop nests. This rule gives every such kernel the
classic register-tiled shape instead:

- injective kernels (element-wise, transpose, pad): outer loops fused and run in parallel,
  the innermost loop split by the vector width and vectorized;
- reductions (conv, matmul, pooling): the innermost two spatial loops are tiled into a small
  accumulator tile (``rows × lanes``) held in a local buffer that LLVM keeps in registers,
  the reduction loops run around it, and the outer spatial loops run in parallel.

It never changes what a kernel computes (only loop structure), and skips any kernel it
cannot schedule, leaving TVM's default. Tuning (MetaSchedule) replaces it kernel by kernel.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

LANES = 8  # float32 lanes of an AVX2 / two NEON registers
ROWS = 4  # accumulator rows: LANES x ROWS floats stay in registers


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


class CPUFallback(CPUScheduleRule):
    """Parallel, vectorized, register-tiled loops for kernels no other rule scheduled."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        try:
            reductions = [info for info in infos if "R" in info.dom_kind()]
            if len(reductions) > 1 or any("O" in info.dom_kind() for info in infos):
                return None
            if reductions and not self._reduction(sch, reductions[0]):
                return None  # a plain reduction (sum, softmax): dlight's Reduction rule takes it
            for info in infos:
                if "R" not in info.dom_kind() and _alive(sch, info.block_rv):
                    self._injective(sch, info.block_rv)
        except (RuntimeError, ValueError):  # ScheduleError and TVMError derive from RuntimeError
            return None
        return sch

    @staticmethod
    def _injective(sch: s_tir.Schedule, block) -> None:
        loops = sch.get_loops(block)
        if not loops:
            return
        inner = loops[-1]
        extent = _extent(sch, inner)
        outer = list(loops[:-1])
        if extent is not None and extent >= LANES and extent % LANES == 0:
            outer_part, lanes = sch.split(inner, factors=[None, LANES])
            sch.vectorize(lanes)
            outer.append(outer_part)
        else:
            outer = list(loops)
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])

    @staticmethod
    def _reduction(sch: s_tir.Schedule, info) -> bool:
        """Register-tile a conv/matmul-like block; False when it has no vectorizable spatial loop."""
        block = info.block_rv
        loops = sch.get_loops(block)
        kinds = info.dom_kind()
        s_loops = [lp for lp, k in zip(loops, kinds) if k == "S"]
        r_loops = [lp for lp, k in zip(loops, kinds) if k == "R"]
        wide = [lp for lp in s_loops if _extent(sch, lp) != 1]
        if len(wide) < 2 or (_extent(sch, wide[-1]) or 0) < LANES:
            return False
        sch.reorder(*s_loops, *r_loops)
        acc = sch.cache_write(block, 0, "local")
        cols, rows = wide[-1], wide[-2]
        # A lane count that divides the loop avoids a per-lane predicate (which scalarizes).
        lanes = next((n for n in (LANES, LANES // 2) if _extent(sch, cols) % n == 0), LANES)
        col_outer, col_lanes = sch.split(cols, factors=[None, lanes])
        tile = [col_lanes]
        row_outer = rows
        if (_extent(sch, rows) or 0) % ROWS == 0:
            row_outer, row_inner = sch.split(rows, factors=[None, ROWS])
            tile = [row_inner, col_lanes]
        outer = [row_outer if lp.same_as(rows) else lp for lp in s_loops if not lp.same_as(cols)]
        sch.reorder(*outer, col_outer, *r_loops, *tile)
        # Parallelize before the write-back moves in: TVM wants compact dataflow under the loop.
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        sch.reverse_compute_at(acc, col_outer)
        if len(tile) == 2:
            sch.unroll(tile[0])
        sch.vectorize(tile[-1])
        sch.decompose_reduction(block, r_loops[0])
        # Epilogues (bias, activation) read the tile's write-back elementwise: fold them into it.
        # (a failing primitive raises before it changes the schedule, so stopping is safe)
        while len(consumers := sch.get_consumers(acc)) == 1:
            try:
                sch.reverse_compute_inline(consumers[0])
            except (RuntimeError, ValueError):
                break
        acc_loops = sch.get_loops(acc)
        if acc_loops and _extent(sch, acc_loops[-1]) == lanes:
            sch.vectorize(acc_loops[-1])
        return True


def _alive(sch: s_tir.Schedule, block) -> bool:
    try:
        sch.get(block)
        return True
    except (RuntimeError, ValueError):
        return False

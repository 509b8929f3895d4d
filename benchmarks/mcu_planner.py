"""The Cortex-M static memory planner on the models of ``benchmarks/mcu.py``, without building
or running anything: each model is quantized for ``cortex-m4`` as that benchmark does,
lowered to the integer program, and planned.

Per model: the arena buffers (after views, in-place ops and Concat outputs written in
place), the liveness lower bound (the largest total of buffers alive at one step: no
placement is smaller), Presso's arena and its ratio to the bound (the issue's target:
≤ 1.05×), the same buffers placed by TFLite Micro's rule alone (largest first, lowest offset
that fits: its GreedyMemoryPlanner) and by the best single greedy heuristic, all measured
in the same run; and the time the planner took.

    python benchmarks/mcu_planner.py                         # digits, cls, magika, light models
    python benchmarks/mcu_planner.py --models light --light densenet121,shufflenet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import presso
from presso.ir.errors import PressoError
from presso.ir.table import format_table

sys.path.insert(0, str(Path(__file__).parent))
import mcu  # noqa: E402  (benchmarks/mcu.py: the models and how they are quantized)


def plan_row(case) -> dict:
    from presso.backends.mcu.lower import lower
    from presso.backends.mcu.planner import check_plan, placements, plan_memory

    row = {"model": case.name}
    try:
        quantized = presso.quantize(case.model, case.calibration, target="cortex-m4", method=case.method,
                                    progress=False)
        program = lower(quantized)
    except PressoError as exc:  # an op without an integer kernel: nothing to plan
        row["error"] = str(exc)[:90]
        return row
    start = time.perf_counter()
    plan = plan_memory(program)
    row["plan_s"] = time.perf_counter() - start
    check_plan(plan)
    arena = [b for b in plan.buffers if b.kind == "arena"]
    singles = placements(arena) if arena else {}
    row.update(ops=len(program.ops), buffers=len(arena), bound=plan.lower_bound, arena=plan.arena_bytes,
               tflm=singles["size/first-fit"][1] if singles else 0,
               best_single=min((total for _, total in singles.values()), default=0))
    return row


def render(rows: list[dict]) -> str:
    def ratio(value, bound):
        return f"{value / bound:.3f}×" if bound else "-"

    table = []
    for r in rows:
        if "error" in r:
            table.append([r["model"], "-", "-", "-", "-", "-", f"not lowered: {r['error']}", "", ""])
            continue
        table.append([r["model"], r["ops"], r["buffers"], f"{r['bound']:,}", f"{r['arena']:,}",
                      ratio(r["arena"], r["bound"]), f"{r['tflm']:,} ({ratio(r['tflm'], r['bound'])})",
                      f"{r['best_single']:,} ({ratio(r['best_single'], r['bound'])})", f"{r['plan_s']:.2f}"])
    return format_table(["model", "ops", "buffers", "bound B", "arena B", "arena/bound", "TFLM rule B",
                         "best single B", "plan s"], table, align="lrrrrrrrr")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,cls,magika,light", help="comma list: digits,cls,magika,light")
    parser.add_argument("--light", default="", help="comma list of light models (default: all)")
    parser.add_argument("--epochs", type=int, default=5, help="digits: training epochs (the plan does not depend "
                                                               "on the weights)")
    args = parser.parse_args(argv)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    light = {n.strip() for n in args.light.split(",") if n.strip()}
    rows = []
    for name in wanted:
        cases = {"digits": lambda: [mcu.digits_case(1, args.epochs)], "cls": lambda: [mcu.cls_case(1)],
                 "magika": lambda: [mcu.magika_case(1)], "light": lambda: mcu.light_cases(1)}[name]()
        for case in cases:
            if name == "light" and light and case.name.removeprefix("light-") not in light:
                continue
            rows.append(plan_row(case))
            print(f"[{case.name}] " + (rows[-1].get("error") or f"arena {rows[-1]['arena']:,} B, bound "
                                       f"{rows[-1]['bound']:,} B"), flush=True)
    print()
    print(render(rows))
    print("note: TFLM rule: the same buffers placed by TFLite Micro's GreedyMemoryPlanner rule (largest first, "
          "lowest offset that fits); best single: the smallest of the planner's starting heuristics alone; "
          "both on Presso's buffers, so in-place ops and Concat aliasing count for them too")
    return 0


if __name__ == "__main__":
    sys.exit(main())

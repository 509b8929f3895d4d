"""`presso search` on the dev models: the Pareto front against presso.quantize's default and
against the field's rule of thumb, on one node and on a two-node local Ray cluster.

For each model (magika standard_v3_3 on real files, PP-OCRv4 det and PP-OCR mobile cls on
rendered text) the script

1. runs ``presso.search`` (seed 0, ``--budget`` candidates, the default space restricted by
   ``--space``) on an in-process local Ray (one node, 2 CPUs);
2. with ``--cluster``, runs the same search (same seed and budget) on a two-node cluster it
   starts here (``ray start --head`` + ``ray start --address``, 1 CPU and one ``presso_timer``
   each; stopped by process id afterwards) and compares the fronts: the same recipes
   (pipeline texts) on both, and the wall time of each;
3. measures the rule of thumb's recipes with the same machinery (a one-recipe search each):
   size-limited → quantize (presso.quantize's default), latency-limited → prune 0.5 + distill,
   accuracy-limited → distill first (prune 0.25 + distill 3 epochs, then quantize), and for each
   says what the search found under the same constraint (no larger size / no higher latency /
   no larger drop).

Latency is the median of single-thread runs on this machine, measured alone on its cores.

    python benchmarks/search.py --models cls --budget 20 --cluster cls
    python benchmarks/search.py --models cls,magika,det --budget cls=20,magika=16,det=10 --cluster cls \
        --space onnxruntime-only.yaml --out /tmp/presso-search-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from presso.ir.table import format_table, human_bytes
from presso.search.pareto import beats
from presso.search.runner import search
from presso.search.space import PRESSO_QUANTIZE_DEFAULT
from presso.tools import zoo

RULES = {
    "size-limited → quantize": dict(PRESSO_QUANTIZE_DEFAULT),
    "latency-limited → prune + distill": {"quant": "none", "prune": 0.5, "distill_epochs": 3, "sparsity": 0.0,
                                          "backend": "onnxruntime"},
    "accuracy-limited → distill first": {**PRESSO_QUANTIZE_DEFAULT, "prune": 0.25, "distill_epochs": 3},
}


def model_data(name: str, folder: Path) -> tuple[Path, Path, Path, str]:
    """(model, calibration .npz, evaluation .npz, metric) with disjoint calibration and evaluation data."""
    calib, evaluation = folder / f"{name}-calib.npz", folder / f"{name}-eval.npz"
    if name == "magika":
        features, _ = zoo.magika_dataset(192)
        np.savez(calib, bytes=features[:64])
        np.savez(evaluation, bytes=features[64:])
        return zoo.magika_model(), calib, evaluation, "top1"
    if name == "cls":
        np.savez(calib, x=zoo.ppocr_cls_inputs(64)[0])
        np.savez(evaluation, x=zoo.ppocr_cls_inputs(128, seed=1000)[0])
        return zoo.ppocr_cls_model(), calib, evaluation, "top1"
    if name == "det":
        np.savez(calib, x=zoo.ppocr_det_inputs(8))
        np.savez(evaluation, x=zoo.ppocr_det_inputs(8, seed=1000))
        return zoo.ppocr_det_model(), calib, evaluation, "iou"
    raise SystemExit(f"unknown model {name}: choose magika, cls, det")


# ---- a two-node cluster on this machine -----------------------------------------------------------
class LocalCluster:
    """``ray start --head`` plus one ``ray start --address`` node, 1 CPU and one presso_timer each."""

    def __init__(self):
        self.temp = tempfile.mkdtemp(prefix="presso-ray-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}

    def __enter__(self) -> LocalCluster:
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--num-cpus", "1", "--resources", '{"presso_timer": 1}', "--object-store-memory", "100000000",
                  "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        try:
            subprocess.run([ray, "start", "--head", "--port", str(self.port), "--temp-dir", self.temp,
                            "--include-dashboard", "false", *common], env=self.env, check=True, capture_output=True)
            subprocess.run([ray, "start", "--address", self.address, *common], env=self.env, check=True,
                           capture_output=True)
        except BaseException:
            self.stop()
            raise
        os.environ["RAY_AUTH_MODE"] = "token"
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill this cluster's processes (those naming its temp dir, and their children) by id."""
        for _ in range(3):
            processes = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        continue
                    processes[int(entry)] = (parent, command)
            found = {p for p, (_, c) in processes.items() if self.temp in c and p != os.getpid()}
            grew = True
            while grew:
                grew = False
                for pid, (parent, _) in processes.items():
                    if parent in found and pid not in found and pid != os.getpid():
                        found.add(pid)
                        grew = True
            if not found:
                shutil.rmtree(self.temp, ignore_errors=True)
                return
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)


# ---- measuring ----------------------------------------------------------------------------------
def run_search(model, calib, evaluation, metric, out: Path, *, budget: int, space, address=None, seed=0):
    start = time.perf_counter()
    result = search(model, calib, evaluation, output=out, metric=metric, budget=budget, space=space,
                    ray_address=address, seed=seed, resume=out.exists())
    return result, time.perf_counter() - start


def rule_candidate(model, calib, evaluation, metric, out: Path, recipe: dict):
    space = {"max_drop": [0.0], **{k: [v] for k, v in recipe.items()}}
    result, _ = run_search(model, calib, evaluation, metric, out, budget=1, space=space)
    return result.candidates[0]


def compare_rules(result, rules: dict[str, dict]) -> list[list[str]]:
    rows = []
    ok = [c for c in result.candidates if c["status"] == "ok"]
    for name, rule in rules.items():
        if rule.get("status") != "ok":
            rows.append([name, "failed: " + rule.get("error", "")[:60], "", "", ""])
            continue
        if name.startswith("size"):
            fits = [c for c in ok if c["size_bytes"] <= rule["size_bytes"]]
            best = min(fits, key=lambda c: (c["drop"], c["latency_ms"]), default=None)
        elif name.startswith("latency"):
            fits = [c for c in ok if c["latency_ms"] <= rule["latency_ms"]]
            best = min(fits, key=lambda c: (c["drop"], c["size_bytes"]), default=None)
        else:
            fits = [c for c in ok if c["drop"] <= rule["drop"]]
            best = min(fits, key=lambda c: (c["latency_ms"], c["size_bytes"]), default=None)
        rows.append([name, _short(rule), _short(best) if best else "nothing fits",
                     "yes" if best and beats(best, rule) else "no",
                     "" if not best else f"{best['pipeline']}"])
    return rows


def compare_nodes(name, model, calib, evaluation, metric, root: Path, space, budget: int, one, wall_one) -> dict:
    """The same search (seed, budget, space) on one node and on two; the fronts compared by recipe."""
    if one is None:
        one, wall_one = run_search(model, calib, evaluation, metric, root / f"{name}-cmp-1node", budget=budget,
                                   space=space)
    with LocalCluster() as cluster:
        two, wall_two = run_search(model, calib, evaluation, metric, root / f"{name}-cmp-2node", budget=budget,
                                   space=space, address=cluster.address)
    same_candidates = sorted(c["pipeline"] for c in one.candidates) == sorted(c["pipeline"] for c in two.candidates)
    front_one, front_two = {c["pipeline"] for c in one.front}, {c["pipeline"] for c in two.front}
    print(f"\n=== {name}: budget {budget} on two nodes: {wall_two:.0f} s; on one node: {wall_one:.0f} s; the same "
          f"candidates: {same_candidates}; the same front: {front_one == front_two} ===", flush=True)
    print(two.table(), flush=True)
    if front_one != front_two:
        print("only on one node's front: " + "; ".join(sorted(front_one - front_two)))
        print("only on two nodes' front: " + "; ".join(sorted(front_two - front_one)), flush=True)
    return {"budget": budget, "one_node_wall_s": round(wall_one, 1), "two_node_wall_s": round(wall_two, 1),
            "same_candidates": same_candidates, "same_front": front_one == front_two,
            "front_one_node": sorted(front_one), "front_two_nodes": sorted(front_two),
            "nodes_used": len({c.get("node_id") for c in two.candidates if c.get("node_id")})}


def _short(c: dict) -> str:
    return f"{c['label']}: drop {c['drop']:+.4f}, {c['latency_ms']:.2f} ms, {human_bytes(c['size_bytes'])}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cls", help="comma-separated: magika, cls, det")
    parser.add_argument("--budget", default="20", help="proposals per search: N, or per model, e.g. cls=20,det=10")
    parser.add_argument("--cluster", default="", help="models whose search is repeated on a two-node local "
                        "cluster, e.g. cls (or 'all')")
    parser.add_argument("--compare-budget", type=int, default=None,
                        help="run the one-node vs two-node comparison as a fresh pair of searches of this budget "
                             "(default: the main search is the one-node half)")
    parser.add_argument("--no-rules", action="store_true", help="skip the rule-of-thumb recipes")
    parser.add_argument("--space", help="YAML space file (default: the model's default space)")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "presso-search-bench"))
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    summary = {}
    budgets = dict(item.split("=") for item in args.budget.split(",")) if "=" in args.budget else {}
    for name in args.models.split(","):
        budget = int(budgets.get(name, 20) if budgets else args.budget)
        model, calib, evaluation, metric = model_data(name, root)
        space = args.space
        one, wall_one = run_search(model, calib, evaluation, metric, root / f"{name}-1node", budget=budget,
                                   space=space)
        print(f"\n=== {name}: one node, budget {budget}: {wall_one:.0f} s ===", flush=True)
        print(one.table(), flush=True)
        entry = {"metric": metric, "budget": budget, "one_node_wall_s": round(wall_one, 1),
                 "front": [c["pipeline"] for c in one.front], "default_on_front":
                     any(c["key"] == one.default_key for c in one.front),
                 "beating_default": [c["pipeline"] for c in one.beating_default()]}
        if not args.no_rules:
            rules = {rule: rule_candidate(model, calib, evaluation, metric, root / f"{name}-rule-{i}", recipe)
                     for i, (rule, recipe) in enumerate(RULES.items())}
            rows = compare_rules(one, rules)
            print(f"\n=== {name}: rule of thumb vs the search (the search's best candidate under the rule's own "
                  "size / latency / drop) ===")
            print(format_table(["rule", "rule's recipe", "search's best under the same limit", "beats it",
                                "pipeline"], rows), flush=True)
            entry["rules"] = {row[0]: {"rule": row[1], "search": row[2], "beats": row[3]} for row in rows}
        summary[name] = entry
        (root / "summary.json").write_text(json.dumps(summary, indent=1))
        if name in args.cluster.split(",") or args.cluster == "all":
            entry["cluster"] = compare_nodes(name, model, calib, evaluation, metric, root, space,
                                             args.compare_budget or budget, one if not args.compare_budget else None,
                                             wall_one)
        (root / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nsummary: {root / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

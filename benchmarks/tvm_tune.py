"""What MetaSchedule tuning buys: untuned TVM, tuned TVM and onnxruntime on the same inputs.

    python benchmarks/tvm_tune.py --tune N [--models cls,magika,det] [--tune-dir DIR] [--int8] [--rounds R]
                                  [--threads T]

For each model, compiles it for cpu-x86 once untuned and once with ``--tune trials=N`` (into
DIR/<model>-<kind> when given: a database already there is reused, so a second run tunes
nothing and measures the same kernels again), checks both against onnxruntime, then runs
R interleaved rounds (onnxruntime, untuned, tuned; the median of 10 runs each) and prints the
median of the per-round ratios to onnxruntime. Interleaving keeps the ratios meaningful on a
shared machine whose load changes during the run; the per-round spread is printed too.
Models and int8 quantization are those of ``benchmarks/tvm.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # keep `import tvm` = TVM

import numpy as np

import presso
from presso.backends import compile
from presso.ir import fix_input_shapes


def _tvm_bench():
    """benchmarks/tvm.py (its models, sessions and int8 quantization); its name shadows TVM's."""
    spec = importlib.util.spec_from_file_location("presso_bench_tvm", os.path.join(_HERE, "tvm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cls,magika")
    parser.add_argument("--tune", type=int, required=True, help="MetaSchedule trials per model")
    parser.add_argument("--tune-dir", help="keep the tuned artifacts (and databases) here and reuse them")
    parser.add_argument("--int8", action="store_true", help="also the QDQ int8 models")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of both engines (kernels are tuned for all cores)")
    args = parser.parse_args()
    bench = _tvm_bench()
    threads = args.threads
    print(f"{'model':14s} {'ort ms':>7s} {'untuned':>8s} {'tuned':>7s} {'untuned/ort':>11s} {'tuned/ort':>14s} "
          f"{'trials':>6s} {'tune s':>7s} {'max abs':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model_path, make_feeds = bench.MODELS[name]
            feeds = make_feeds()
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            fixed = presso.load(model_path())
            fix_input_shapes(fixed, shapes)
            float_path = os.path.join(tmp, f"{name}.onnx")
            presso.save(fixed, float_path)
            variants = [("float", float_path)]
            if args.int8:
                variants.append(("int8", bench.quantize(float_path, feeds, os.path.join(tmp, f"{name}.int8.onnx"))))
            for kind, path in variants:
                session = bench.ort_session(path, threads)
                want = session.run(None, feeds)[0]
                untuned = compile(presso.load(path), "cpu-x86", "tvm", shapes=shapes,
                                  output=os.path.join(tmp, f"{name}-{kind}-untuned"), progress=False)
                tuned = compile(presso.load(path), "cpu-x86", "tvm", shapes=shapes, tune_trials=args.tune,
                                output=os.path.join(args.tune_dir or tmp, f"{name}-{kind}"), progress=False)
                bench.set_tvm_threads(threads)
                err = max(float(np.abs(list(a.run(feeds).values())[0] - want).max()) for a in (untuned, tuned))
                rounds = []
                for _ in range(args.rounds):
                    t_ort = bench.median_ms(lambda: session.run(None, feeds))
                    t_untuned = bench.median_ms(lambda: untuned.run(feeds))
                    t_tuned = bench.median_ms(lambda: tuned.run(feeds))
                    rounds.append((t_ort, t_untuned, t_tuned))
                t = np.median(np.array(rounds), axis=0)
                r_untuned = np.array([u / o for o, u, _ in rounds])
                r_tuned = np.array([v / o for o, _, v in rounds])
                tuning = tuned.manifest.get("tuning") or {}
                spread = f"({r_tuned.min():.2f}-{r_tuned.max():.2f})"
                print(f"{name + ' ' + kind:14s} {t[0]:7.2f} {t[1]:8.2f} {t[2]:7.2f} {np.median(r_untuned):11.2f} "
                      f"{np.median(r_tuned):4.2f} {spread:>9s} {tuning.get('trials', 0):6d} "
                      f"{tuning.get('seconds', 0):7.1f} {err:8.1e}", flush=True)
                if tuning.get("tasks_reused"):
                    print(f"{'':14s} ({tuning['tasks_reused']} of {tuning['tasks']} kernels from the database "
                          "of an earlier run; trials and tune s are this run's)", flush=True)


if __name__ == "__main__":
    main()

"""IR hot spots on big real models: the current code against the first version, in one run.

1. fold-batchnorm on DenseNet-121 (after fold-constants; 121 BNs, ~670 nodes): unique names
   from one walk per pass (``edit.batch_names``) and detaching nodes by identity, against a
   ``graph.tensors()`` walk per name and ``list.remove`` (graphsurgeon's ``Node.__eq__``).
2. evaluate() on VGG-19 with folded weights (~550 MB): a session fed the weights as arrays
   (``Model.to_proto_without_large_data`` + onnxruntime external initializers), against
   exporting, serializing and parsing the whole proto.
3. Model.copy() on the same model: graph copy + array copies, against a proto round trip.

Each line prints old and new seconds (best of ``--repeat``) and the speed-up. Outputs are
checked equal between old and new so a faster path cannot be a wrong one.

    python benchmarks/ir_core.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import onnx_graphsurgeon as gs

from presso.ir import Model, evaluate, load
from presso.ir import edit as ir_edit
from presso.ir.evaluate import create_session
from presso.passes import PassManager
from presso.tools import zoo


def _best(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


@contextmanager
def _first_version_naming():
    """unique_name walking graph.tensors() on every call; detach via list.remove."""
    saved = ir_edit._taken_names, ir_edit.batch_names, ir_edit.detach_node

    def taken(model):
        return set(model.graph.tensors().keys()) | {n.name for n in model.graph.nodes}

    def detach(model, node):
        node.inputs.clear()
        node.outputs.clear()
        model.graph.nodes.remove(node)

    ir_edit._taken_names, ir_edit.batch_names = taken, lambda model: nullcontext()
    ir_edit.detach_node = detach
    import presso.passes.cleanup.fold_batchnorm as fb

    fb_saved = fb.batch_names, fb.detach_node
    fb.batch_names, fb.detach_node = ir_edit.batch_names, detach
    try:
        yield
    finally:
        ir_edit._taken_names, ir_edit.batch_names, ir_edit.detach_node = saved
        fb.batch_names, fb.detach_node = fb_saved


def bench_fold_batchnorm(repeat):
    base = load(zoo.light_model("densenet121"))
    PassManager.parse("fold-constants").run(base)
    x = {base.graph.inputs[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}

    def run():
        model = base.copy()
        start = time.perf_counter()
        PassManager.parse("fold-batchnorm").run(model)
        return time.perf_counter() - start, model

    new_t = min(run()[0] for _ in range(repeat))
    with _first_version_naming():
        old_t = min(run()[0] for _ in range(repeat))
        old_model = run()[1]
    new_model = run()[1]
    a, b = evaluate(old_model, x), evaluate(new_model, x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    return old_t, new_t


def bench_vgg(repeat):
    model = load(zoo.light_model("vgg19"))
    PassManager.parse("fold-constants").run(model)
    x = {model.graph.inputs[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}

    def full_session():
        return create_session(model.to_proto()).run(None, x)[0]

    def light_session():
        proto, arrays = model.to_proto_without_large_data()
        return create_session(proto, initializers=arrays).run(None, x)[0]

    old_eval, y_old = _best(full_session, repeat)
    new_eval, y_new = _best(light_session, repeat)
    assert np.array_equal(y_old, y_new)
    old_copy, _ = _best(lambda: Model.from_proto(model.to_proto()), repeat)
    new_copy, clone = _best(model.copy, repeat)
    assert all(isinstance(t, gs.Constant) for t in clone.initializers().values())
    return (old_eval, new_eval), (old_copy, new_copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = [("fold-batchnorm on DenseNet-121", *bench_fold_batchnorm(args.repeat))]
    (e_old, e_new), (c_old, c_new) = bench_vgg(args.repeat)
    rows += [("evaluate() session + 1 run, VGG-19 folded", e_old, e_new),
             ("Model.copy(), VGG-19 folded", c_old, c_new)]
    print(f"{'case':<44} {'old s':>8} {'new s':>8} {'speed-up':>9}")
    for name, old, new in rows:
        print(f"{name:<44} {old:8.2f} {new:8.2f} {old / new:8.1f}x")


if __name__ == "__main__":
    main()

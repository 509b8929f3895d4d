"""Tiny ONNX graphs for the pruning tests, built with onnx.helper and random weights, and the
exact-removal check that several of them share."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from presso.ir import Model, evaluate, load
from presso.passes.prune import channel_groups
from presso.passes.prune.importance import unit_scores
from presso.passes.prune.prune_channels import select_units
from presso.passes.prune.rewrite import remove_channels, zero_channels


class GraphBuilder:
    """Appends nodes with fresh names; ``build()`` returns a validated Presso model."""

    def __init__(self, shape=(1, 8, 8, 8), *, seed: int = 0, opset: int = 17, input_name: str = "x"):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self.input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))
        self.counts: dict[str, int] = {}

    def name(self, base: str) -> str:
        """``conv1``, ``conv2``, … numbered per op (constants have their own counters)."""
        self.counts[base] = self.counts.get(base, 0) + 1
        return f"{base}{self.counts[base]}"

    def const(self, values: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def op(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        name = self.name(op.lower())
        outs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    # ---- layers -------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True,
             stride: int = 1) -> str:
        w = self.const(self.rng.normal(0, 1 / np.sqrt(cin * k * k / group),
                                       (cout, cin // group, k, k)).astype(np.float32), "w")
        inputs = [x, w]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b"))
        return self.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, group=group,
                       strides=[stride, stride])

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c), r.uniform(0.5, 1.5, c)]
        return self.op("BatchNormalization", [x, *(self.const(p.astype(np.float32), "bn") for p in params)])

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def gemm(self, x: str, k: int, n: int) -> str:
        w = self.const(self.rng.normal(0, 1 / np.sqrt(k), (n, k)).astype(np.float32), "fc")
        b = self.const(self.rng.normal(0, 0.1, n).astype(np.float32), "fcb")
        return self.op("Gemm", [x, w, b], transB=1)

    def build(self, *outputs: str) -> Model:
        graph = helper.make_graph(
            self.nodes, "g", [self.input],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        proto = onnx.shape_inference.infer_shapes(proto)
        return load(proto)


def feeds_for(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.normal(size=[int(d) for d in t.shape]).astype(np.float32) for t in model.inputs}


def perturb_weights(model: Model, seed: int = 0) -> None:
    """Scale every float initializer by U(0.5, 1.5): the light models' weights are all 0.02,
    which makes every channel (and every output class) identical."""
    from presso.ir.edit import set_constant

    rng = np.random.default_rng(seed)
    for tensor in model.initializers().values():
        values = np.asarray(tensor.values)
        if values.dtype == np.float32 and values.size > 1:
            set_constant(tensor, (values * rng.uniform(0.5, 1.5, values.shape)).astype(np.float32))
    model.invalidate()


def assert_exact_removal(model: Model, *, ratio: float = 0.5, seed: int = 0, rtol: float = 1e-5,
                         expect_removal: bool = True) -> set[int]:
    """Zero a random ``ratio`` of the units of each layer (weights, biases, BN shifts,
    consumers' columns), then remove them: the outputs must not change, and the model must stay
    valid. Returns the removed units."""
    analysis = channel_groups(model)
    scores, _ = unit_scores(model, analysis, "random", seed=seed)
    removed = select_units(analysis, scores, ratio=ratio, scope="layer", round_to=1, min_channels=1)
    if expect_removal:
        assert removed, "the test graph should have something to remove"
    feeds = feeds_for(model, seed)
    zero_channels(model, analysis, removed)
    model.invalidate()
    reference = evaluate(model, feeds)
    remove_channels(model, analysis, removed)
    onnx.checker.check_model(model.to_proto(), full_check=True)
    result = evaluate(model, feeds)
    for name, ref in reference.items():
        np.testing.assert_allclose(result[name], ref, rtol=rtol, atol=1e-5, err_msg=name)
    return removed

"""Property tests: random valid graphs keep their outputs through every semantics-preserving pass.

Graphs are built layer by layer on an NCHW activation (Conv incl. grouped/depthwise and
ConvTranspose, BatchNormalization, activations, Add, Concat, Transpose, pooling, Identity,
Dropout), then optionally flattened (Reshape) into Gemm/MatMul with BatchNormalization.
Some weights come from Constant / ConstantOfShape nodes so that folding has work to do.
"""

from __future__ import annotations

import numpy as np
from _graphs import assert_close, init, make_proto, reference, vi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from presso.ir import evaluate, load
from presso.passes import PassManager

SEMANTICS_PRESERVING = ("constants-to-initializers,fold-constants,infer-shapes,fold-batchnorm,"
                        "remove-identity,eliminate-dead-code,upgrade-opset{version=17}")


class _Builder:
    def __init__(self, draw, rng):
        self.draw, self.rng = draw, rng
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, base):
        self.count += 1
        return f"{base}{self.count}"

    def weight(self, shape, *, positive=False):
        value = self.rng.uniform(0.5, 1.5, shape) if positive else self.rng.standard_normal(shape) * 0.5
        value = value.astype(np.float32)
        name = self.name("w")
        how = self.draw(st.sampled_from(["init", "init", "constant", "constant_of_shape"]))
        if how == "constant":
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("const"),
                                               value=numpy_helper.from_array(value, name + "_v")))
        elif how == "constant_of_shape":  # a filled tensor, as in the onnx light models
            fill = float(value.flat[0])
            shape_name = self.name("shape")
            self.inits.append(init(shape_name, np.array(shape, np.int64)))
            self.nodes.append(helper.make_node("ConstantOfShape", [shape_name], [name], name=self.name("cos"),
                                               value=helper.make_tensor("v", TensorProto.FLOAT, [1], [fill])))
        else:
            self.inits.append(init(name, value))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name("t")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op.lower()), **attrs))
        return out

    def bn(self, x, channels):
        names = [self.weight((channels,), positive=True), self.weight((channels,)),
                 self.weight((channels,)), self.weight((channels,), positive=True)]
        return self.node("BatchNormalization", [x, *names], epsilon=1e-3)


@st.composite
def random_graphs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    b = _Builder(draw, rng)
    c, size = draw(st.integers(1, 4)), draw(st.integers(4, 7))
    in_channels = c
    x, previous = "x", []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["conv", "conv", "convT", "bn", "act", "add", "concat", "transpose", "pool",
                                     "identity"]))
        if kind == "conv":
            out_c = draw(st.integers(1, 6))
            group = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0 and out_c % g == 0] or [1]))
            k = draw(st.sampled_from([1, 3]))
            inputs = [x, b.weight((out_c, c // group, k, k))]
            if draw(st.booleans()):
                inputs.append(b.weight((out_c,)))
            x, c = b.node("Conv", inputs, group=group, pads=[k // 2] * 4), out_c
        elif kind == "convT":
            out_c = draw(st.integers(1, 4))
            group = c if c > 1 and draw(st.booleans()) else 1
            inputs = [x, b.weight((c, out_c, 2, 2))]  # group>1: C_out = group · out_c
            x = b.node("ConvTranspose", inputs, group=group, strides=[1, 1], pads=[0, 0, 1, 1])
            c = out_c * group
        elif kind == "bn":
            x = b.bn(x, c)
        elif kind == "act":
            op = draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "LeakyRelu"]))
            x = b.node(op, [x])
        elif kind == "add":
            same = [p for p in previous if p[1] == c]
            other = same[-1][0] if same and draw(st.booleans()) else b.weight((1, c, 1, 1))
            x = b.node("Add", [x, other])
        elif kind == "concat":
            other = b.node("Relu", [x])
            x, c = b.node("Concat", [x, other], axis=1), 2 * c
        elif kind == "transpose":  # swap H and W (square maps keep the shape)
            x = b.node("Transpose", [x], perm=[0, 1, 3, 2])
        elif kind == "pool":
            op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
            x = b.node(op, [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        else:
            x = b.node(draw(st.sampled_from(["Identity", "Dropout"])), [x])
        previous.append((x, c))
    out_shape = [1, c, size, size]
    if draw(st.booleans()):  # classifier head: pool → flatten → Gemm/MatMul → BN
        x = b.node("GlobalAveragePool", [x])
        shape_name = b.name("flat")
        b.inits.append(init(shape_name, np.array([1, -1], np.int64)))
        x = b.node("Reshape", [x, shape_name])
        n = draw(st.integers(1, 5))
        if draw(st.booleans()):
            trans_b = draw(st.sampled_from([0, 1]))
            w = b.weight((n, c) if trans_b else (c, n))
            x = b.node("Gemm", [x, w, b.weight((n,))], transB=trans_b)
        else:
            x = b.node("MatMul", [x, b.weight((c, n))])
        if draw(st.booleans()):
            x = b.bn(x, n)
        out_shape = [1, n]
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    proto = make_proto(b.nodes, [vi("x", [1, in_channels, size, size])], [vi("y", out_shape)], b.inits, opset=13)
    return proto, (1, in_channels, size, size)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_graphs(), seed=st.integers(0, 1000))
def test_semantics_preserving_passes_keep_outputs(case, seed):
    proto, shape = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    expected = reference(proto, {"x": x})
    model = load(proto)
    PassManager.parse(SEMANTICS_PRESERVING, verify=True, rtol=1e-4, atol=1e-5).run(model, data=[{"x": x}])
    assert not any(n.op in ("BatchNormalization", "Identity", "Dropout", "Constant", "ConstantOfShape")
                   for n in model.graph.nodes if n.outputs[0].name != "y")
    assert_close(expected, evaluate(model, {"x": x}), rtol=1e-4, atol=1e-5)

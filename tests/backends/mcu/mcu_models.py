"""Small float models and their Cortex-M quantization, for the MCU backend tests."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import presso
from presso.backends.mcu.emulate import per_op_steps, reference_int8  # noqa: F401 (re-exported for tests)
from presso.backends.mcu.scheme import CORTEX_M_FINISH, CORTEX_M_PREPARE, CORTEX_M_SCHEME
from presso.backends.target import Target
from presso.ir import Model

# until the board helper registers "cortex-m4", a Target built from the scheme
MCU_TARGET = Target(name="cortex-m-test", device="mcu", scheme=CORTEX_M_SCHEME, prepare=CORTEX_M_PREPARE,
                    finish=CORTEX_M_FINISH)


def _model(nodes, inputs, outputs, inits, opset=17) -> Model:
    graph = helper.make_graph(nodes, "mcu_test", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return Model.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def conv_net(seed: int = 0) -> Model:
    """Conv+Relu, depthwise Conv+Clip (stride 2), SE gate (GAP, 1×1 Conv, HardSigmoid, Mul),
    residual Add, HardSwish, MaxPool, AveragePool with padding, Concat, Transpose, GAP, Gemm,
    Softmax."""
    rng = np.random.default_rng(seed)
    f = np.float32

    def w(*shape):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(f)

    inits = {
        "w1": w(8, 3, 3, 3), "b1": rng.standard_normal(8).astype(f) * 0.1,
        "wd": w(8, 1, 3, 3), "bd": rng.standard_normal(8).astype(f) * 0.1,
        "wse": w(8, 8, 1, 1), "bse": np.zeros(8, f),
        "wp": w(8, 8, 1, 1), "bp": rng.standard_normal(8).astype(f) * 0.1,
        "fc": w(5, 16), "fcb": rng.standard_normal(5).astype(f) * 0.1,
        "shape": np.array([1, -1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=8),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["se_gap"]),
        helper.make_node("Conv", ["se_gap", "wse", "bse"], ["se_c"]),
        helper.make_node("HardSigmoid", ["se_c"], ["se_g"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["r2", "se_g"], ["se"]),
        helper.make_node("Conv", ["se", "wp", "bp"], ["c3"]),
        helper.make_node("Add", ["c3", "r2"], ["res"]),
        helper.make_node("HardSwish", ["res"], ["hs"]),
        helper.make_node("MaxPool", ["hs"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["hs"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["mp", "ap"], ["cat"], axis=1),
        helper.make_node("Transpose", ["cat"], ["tr"], perm=[0, 1, 3, 2]),
        helper.make_node("Sigmoid", ["tr"], ["sg"]),
        helper.make_node("GlobalAveragePool", ["sg"], ["gap"]),
        helper.make_node("Reshape", ["gap", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inits["zero"] = np.array(0.0, f)
    inits["six"] = np.array(6.0, f)
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 16])],
                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])], inits)


def mlp(seed: int = 0) -> Model:
    """Two inputs: MatMul (3-D) + bias, Gelu, MatMul, Sub by the second input, Tanh, a MatMul
    of two activations, Softmax over the last axis; two outputs."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {"w1": (rng.standard_normal((16, 24)) * 0.3).astype(f), "b1": (rng.standard_normal(24) * 0.1).astype(f),
             "w2": (rng.standard_normal((24, 8)) * 0.3).astype(f), "perm_shape": np.array([1, 8, 4], np.int64)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Gelu", ["a1"], ["g1"], domain=""),
        helper.make_node("MatMul", ["g1", "w2"], ["m2"]),
        helper.make_node("Sub", ["m2", "y"], ["s2"]),
        helper.make_node("Tanh", ["s2"], ["t2"]),
        helper.make_node("Transpose", ["t2"], ["t2t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t2", "t2t"], ["gram"]),
        helper.make_node("Softmax", ["gram"], ["att"], axis=-1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16]),
                          helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])],
                  [helper.make_tensor_value_info("t2", TensorProto.FLOAT, [1, 4, 8]),
                   helper.make_tensor_value_info("att", TensorProto.FLOAT, [1, 4, 4])], inits, opset=20)


def calibration(model: Model, count: int = 24, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = {t.name: [int(d) for d in t.shape] for t in model.inputs}
    return [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()} for _ in range(count)]


def quantize(model: Model, data) -> Model:
    return presso.quantize(model, data, target=MCU_TARGET, progress=False, method="minmax")


def ort_int8(qmodel: Model, program, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """onnxruntime's int8 inputs and outputs of the program (see ``reference_int8``)."""
    return reference_int8(qmodel, program, feeds)


def embed_net(seed: int = 0) -> Model:
    """magika's shape in small: int32 indices → embedding Gather → LayerNormalization →
    MatMul + bias → Gelu → Transpose → GlobalMaxPool → Softmax → Reshape."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {"table": rng.standard_normal((20, 8)).astype(f), "gamma": (1 + 0.3 * rng.standard_normal(8)).astype(f),
             "beta": (0.2 * rng.standard_normal(8)).astype(f), "w": (rng.standard_normal((8, 6)) * 0.5).astype(f),
             "b": (0.1 * rng.standard_normal(6)).astype(f)}
    nodes = [
        helper.make_node("Gather", ["table", "idx"], ["emb"], axis=0),
        helper.make_node("LayerNormalization", ["emb", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["ln", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["mmb"]),
        helper.make_node("Gelu", ["mmb"], ["g"]),
        helper.make_node("Transpose", ["g"], ["gt"], perm=[0, 2, 1]),
        helper.make_node("GlobalMaxPool", ["gt"], ["mx"]),
        helper.make_node("Flatten", ["mx"], ["fl"]),
        helper.make_node("Softmax", ["fl"], ["sm"], axis=-1),
        helper.make_node("Reshape", ["sm", "out_shape"], ["probs"]),  # after the output's DQ: a view
    ]
    inits["out_shape"] = np.array([2, 3], np.int64)
    return _model(nodes, [helper.make_tensor_value_info("idx", TensorProto.INT32, [1, 12])],
                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 3])], inits, opset=20)


def index_calibration(count: int = 24, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"idx": rng.integers(0, 20, size=(1, 12)).astype(np.int32)} for _ in range(count)]


def misc_net(seed: int = 0) -> Model:
    """The less common kernels: a strided Slice, ReduceMean over trailing axes, a broadcast
    Sub, Pow by a scalar (a table), AveragePool counting its padding, Concat of two scales,
    MaxPool with padding, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {"starts": np.array([1], np.int64), "ends": np.array([8], np.int64), "axes": np.array([3], np.int64),
             "steps": np.array([2], np.int64), "two": np.array(2.0, f), "fc": (rng.standard_normal((3, 48)) * 0.2).astype(f)}
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("ReduceMean", ["sl"], ["mean"], axes=[2, 3], keepdims=1),
        helper.make_node("Sub", ["sl", "mean"], ["centered"]),
        helper.make_node("Pow", ["centered", "two"], ["sq"]),
        helper.make_node("AveragePool", ["sq"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("MaxPool", ["centered"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["ap", "mp"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)


def lrn_net(seed: int = 0) -> Model:
    """AlexNet/GoogLeNet-style local response normalisation between convolutions (two window
    sizes, non-default alpha/beta/bias)."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {"w1": (rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(f), "w2": (rng.standard_normal((6, 8, 1, 1)) * 0.4).astype(f)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("LRN", ["r1"], ["n1"], size=5, alpha=0.002, beta=0.75, bias=1.0),
        helper.make_node("Conv", ["n1", "w2"], ["c2"]),
        helper.make_node("LRN", ["c2"], ["y"], size=3, alpha=0.01, beta=0.5, bias=2.0),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 9])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 7, 9])], inits)


def random_conv_chain(seed: int) -> Model:
    """Five convolutions with random kernel sizes, strides, paddings (often asymmetric),
    dilations and groups (plain, grouped, depthwise), each followed by a random activation."""
    rng = np.random.default_rng(seed)
    f = np.float32
    c, h, w = int(rng.integers(1, 6)), int(rng.integers(7, 14)), int(rng.integers(7, 14))
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])
    nodes, inits, prev = [], {}, "x"
    for i in range(5):
        k = int(rng.choice([1, 2, 3, 5]))
        s = int(rng.integers(1, 3))
        d = int(rng.integers(1, 3)) if k > 1 else 1
        pads = [int(v) for v in rng.integers(0, k, size=4)] if rng.random() < 0.7 else [0, 0, 0, 0]
        kind = rng.choice(["plain", "grouped", "depthwise"])
        g = c if kind == "depthwise" else (next((q for q in (2, 3) if c % q == 0), 1) if kind == "grouped" else 1)
        m = c if kind == "depthwise" else int(rng.integers(1, 9)) * g
        oh = (h + pads[0] + pads[2] - d * (k - 1) - 1) // s + 1
        ow = (w + pads[1] + pads[3] - d * (k - 1) - 1) // s + 1
        if oh < 1 or ow < 1:
            k, s, d, pads, oh, ow = 1, 1, 1, [0, 0, 0, 0], h, w
        inits[f"w{i}"] = (rng.standard_normal((m, c // g, k, k)) * np.sqrt(2.0 / (c // g * k * k))).astype(f)
        inits[f"b{i}"] = (0.1 * rng.standard_normal(m)).astype(f)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k], strides=[s, s],
                                      dilations=[d, d], pads=pads, group=g))
        act = str(rng.choice(["Relu", "HardSwish", "Sigmoid", "Identity"]))
        nodes.append(helper.make_node(act, [f"c{i}"], [f"a{i}"]))
        prev, c, h, w = f"a{i}", m, oh, ow
    return _model(nodes, [x_info], [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, c, h, w])], inits)

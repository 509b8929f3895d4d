"""MACs/FLOPs, parameters, size and activation memory checked against hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, rand, vi
from onnx import helper

from presso.ir import compute_cost, load


def _single(node, x_shape, y_shape, weights):
    return load(make_proto([node], [vi("x", x_shape)], [vi("y", y_shape)],
                           [init(name, rand(shape, seed=i)) for i, (name, shape) in enumerate(weights)]))


@pytest.mark.parametrize("node, x, y, weights, macs, extra_flops", [
    # Conv 4→6, 3×3, pad 1 on 8×8: every output element needs 4·3·3 MACs
    (helper.make_node("Conv", ["x", "w", "b"], ["y"], name="n", pads=[1, 1, 1, 1]),
     [1, 4, 8, 8], [1, 6, 8, 8], [("w", [6, 4, 3, 3]), ("b", [6])], 6 * 8 * 8 * 4 * 9, 6 * 8 * 8),
    # grouped Conv (2 groups): each output sees C_in/group = 2 channels
    (helper.make_node("Conv", ["x", "w"], ["y"], name="n", group=2),
     [1, 4, 8, 8], [1, 8, 6, 6], [("w", [8, 2, 3, 3])], 8 * 6 * 6 * 2 * 9, 0),
    # ConvTranspose 4→3, 3×3: every input element is scattered to 3·3·3 outputs
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="n"),
     [1, 4, 5, 5], [1, 3, 7, 7], [("w", [4, 3, 3, 3])], 4 * 5 * 5 * 3 * 9, 0),
    # grouped ConvTranspose: 2 groups, C_out/group = 2
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="n", group=2),
     [1, 4, 5, 5], [1, 4, 7, 7], [("w", [4, 2, 3, 3])], 4 * 5 * 5 * 2 * 9, 0),
    # Gemm [5,16]·[16,7] + bias
    (helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="n"),
     [5, 16], [5, 7], [("w", [16, 7]), ("b", [7])], 5 * 7 * 16, 5 * 7),
    # Gemm with transA, transB
    (helper.make_node("Gemm", ["x", "w"], ["y"], name="n", transA=1, transB=1),
     [16, 5], [5, 7], [("w", [7, 16])], 5 * 7 * 16, 0),
    # batched MatMul [2,3,4,8]·[8,6]
    (helper.make_node("MatMul", ["x", "w"], ["y"], name="n"),
     [2, 3, 4, 8], [2, 3, 4, 6], [("w", [8, 6])], 2 * 3 * 4 * 6 * 8, 0),
])
def test_linear_op_costs(node, x, y, weights, macs, extra_flops):
    report = compute_cost(_single(node, x, y, weights))
    (cost,) = report.nodes
    assert cost.macs == macs
    assert cost.flops == 2 * macs + extra_flops
    n_params = sum(int(__import__("numpy").prod(s)) for _, s in weights)
    assert cost.params == report.params == n_params
    assert report.param_bytes == 4 * n_params
    assert report.macs == macs and report.unknown == []


def test_activation_memory_and_elementwise_flops():
    # x[1,8] -> Relu a -> Sigmoid b -> Add(a, b) y : a stays live until the Add
    proto = make_proto([helper.make_node("Relu", ["x"], ["a"], name="r"),
                        helper.make_node("Sigmoid", ["a"], ["b"], name="s"),
                        helper.make_node("Add", ["a", "b"], ["y"], name="add")],
                       [vi("x", [1, 1000])], [vi("y", [1, 1000])])
    report = compute_cost(load(proto))
    assert [n.flops for n in report.nodes] == [1000, 1000, 1000]
    assert report.macs == 0 and report.params == 0
    assert report.activation_bytes == 3 * 4000  # a, b, y
    # live at once: while the Sigmoid runs: x is dead after Relu, a and b are live (8000);
    # while Add runs: a, b and y (12000)
    assert report.peak_activation_bytes == 12000


def test_unknown_shapes_are_reported_not_guessed():
    proto = make_proto([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                       [vi("x", ["n", 8])], [vi("y", ["n", 4])], [init("w", rand((8, 4)))])
    report = compute_cost(load(proto))
    assert report.nodes[0].macs is None and report.unknown == ["mm"]


def test_cost_is_cached_and_dropped_on_invalidate():
    model = _single(helper.make_node("MatMul", ["x", "w"], ["y"], name="n"), [1, 8], [1, 4], [("w", [8, 4])])
    first = compute_cost(model)
    assert compute_cost(model) is first
    model.invalidate()
    assert compute_cost(model) is not first


def _if_model():
    """If(c): then MatMul x·[8,16] → y; else MatMul x·[8,4] then MatMul ·[4,16] → y."""
    then_branch = helper.make_graph([helper.make_node("MatMul", ["x", "w_big"], ["t"], name="then_mm")],
                                    "then", [], [vi("t", [2, 16])])
    else_branch = helper.make_graph([helper.make_node("MatMul", ["x", "w_a"], ["e1"], name="else_mm1"),
                                     helper.make_node("MatMul", ["e1", "w_b"], ["e"], name="else_mm2")],
                                    "else", [], [vi("e", [2, 16])])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)
    return load(make_proto([node], [vi("x", [2, 8]), vi("c", [], bool)], [vi("y", [2, 16])],
                           [init("w_big", rand([8, 16])), init("w_a", rand([8, 4], seed=1)),
                            init("w_b", rand([4, 16], seed=2))]))


def test_if_costs_its_more_expensive_branch_and_lists_body_nodes():
    cost = compute_cost(_if_model())
    then_macs, else_macs = 2 * 16 * 8, 2 * 4 * 8 + 2 * 16 * 4
    assert cost.macs == max(then_macs, else_macs)
    assert {n.name for n in cost.body_nodes} == {"then_mm", "else_mm1", "else_mm2"}
    assert cost.params == 8 * 16 + 8 * 4 + 4 * 16  # weights read only inside the branches


def test_loop_costs_its_body_times_a_constant_trip_count():
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w"], ["h_out"], name="step"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "body", [vi("i", [], "int64"), vi("cond_in", [], bool), vi("h_in", [1, 8])],
        [vi("cond_out", [], bool), vi("h_out", [1, 8])])
    loop = helper.make_node("Loop", ["trips", "", "h0"], ["h"], name="loop", body=body)
    model = load(make_proto([loop], [vi("h0", [1, 8])], [vi("h", [1, 8])],
                            [init("w", rand([8, 8])), init("trips", np.array(5, np.int64))]))
    assert compute_cost(model).macs == 5 * 8 * 8


def test_a_value_read_inside_a_body_stays_live_until_its_node_runs():
    # big = Tile(x) [1, 1024] is read only inside the If's branches, so it is live while the If
    # writes y [1, 1024]: 8 KiB at once (without counting body reads it would be 5 KiB at most)
    then_branch = helper.make_graph([helper.make_node("Neg", ["big"], ["t"], name="neg")],
                                    "then", [], [vi("t", [1, 1024])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["big"], ["e"], name="abs")],
                                    "else", [], [vi("e", [1, 1024])])
    nodes = [helper.make_node("Tile", ["x", "reps"], ["big"], name="tile"),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    model = load(make_proto(nodes, [vi("x", [1, 256]), vi("c", [], bool)], [vi("y", [1, 1024])],
                            [init("reps", np.array([1, 4], np.int64))], opset=17))
    assert compute_cost(model).peak_activation_bytes == 2 * 1024 * 4 + 1  # big, y and the condition

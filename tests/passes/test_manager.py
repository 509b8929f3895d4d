"""PassManager instrumentation: timing, node counts, dumps, verification and error records."""

from __future__ import annotations

import numpy as np
import pytest
from _graphs import init, make_proto, rand, vi
import onnx_graphsurgeon as gs
from onnx import helper

from presso.ir import PassError, load
from presso.ir.edit import set_constant
from presso.passes import Pass, PassManager, PassResult, register_pass


@register_pass("test-break-weights")
class _BreakWeights(Pass):
    """Claims to preserve semantics but scales every weight: verification must catch it."""

    preserves_semantics = True
    factor: float = 1.5

    def run(self, model, ctx):
        for tensor in model.initializers().values():
            set_constant(tensor, tensor.values * self.factor)
        return PassResult(changed=True)


@register_pass("test-round-weights")
class _RoundWeights(Pass):
    """Lossy on purpose: rounds weights to a grid; the manager measures the error."""

    step: float = 0.25

    def run(self, model, ctx):
        for tensor in model.initializers().values():
            set_constant(tensor, (np.round(tensor.values / self.step) * self.step).astype(tensor.values.dtype))
        return PassResult(changed=True, stats={"step": self.step})


@register_pass("test-crash")
class _Crash(Pass):
    def run(self, model, ctx):
        raise ZeroDivisionError("boom")


@register_pass("test-needs-data")
class _NeedsData(Pass):
    needs_data = True

    def run(self, model, ctx):
        return PassResult(changed=False, stats={"samples": len(list(ctx.data))})


@register_pass("test-dangling-read")
class _DanglingRead(Pass):
    """Rewires a node to read a tensor that nothing produces: the structural check must name it."""

    def run(self, model, ctx):
        model.node("relu").inputs[0] = gs.Variable("ghost", dtype=np.float32, shape=[1, 8])
        return PassResult(changed=True)


@register_pass("test-break-if-body")
class _BreakIfBody(Pass):
    """Drops a body node whose output is still read, as a buggy in-body rewrite would."""

    def run(self, model, ctx):
        body = model.node("branch").attrs["then_branch"]
        del body.nodes[0]
        return PassResult(changed=True)


def _model():
    return load(make_proto([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                            helper.make_node("Identity", ["h"], ["i"], name="id"),
                            helper.make_node("Relu", ["i"], ["y"], name="relu"),
                            helper.make_node("Neg", ["h"], ["dead"], name="unused")],
                           [vi("x", [1, 16])], [vi("y", [1, 8])], [init("w", rand((16, 8), seed=4))]))


def test_report_has_time_node_counts_and_stats(tmp_path):
    model = _model()
    seen = []
    manager = PassManager.parse("remove-identity,eliminate-dead-code", verify=True, dump_dir=tmp_path / "dump",
                                on_pass_end=seen.append)
    report = manager.run(model)
    first, second = report.records
    # after a pass that changed the graph, the manager also drops what no output needs
    assert (first.nodes_before, first.nodes_after, first.changed) == (4, 2, True)
    assert first.result.stats["identity_removed"] == 1
    assert (second.nodes_before, second.nodes_after, second.changed) == (2, 2, False)
    assert all(r.seconds >= 0 for r in report.records) and report.seconds == sum(r.seconds for r in report.records)
    assert first.result.error.max_abs == 0 and second.error_vs_original.max_abs == 0
    assert seen == report.records
    dumps = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumps == ["01-remove-identity.onnx", "02-eliminate-dead-code.onnx"]
    assert len(load(tmp_path / "dump" / dumps[1]).graph.nodes) == 2
    assert [h["pass"] for h in model.annotations.history] == ["remove-identity", "eliminate-dead-code"]
    table = report.table()
    assert "remove-identity" in table and "4 → 2" in table and "exact" in table
    assert report.as_dict()[0]["nodes_after"] == 2


def test_verification_catches_a_broken_semantics_preserving_pass():
    with pytest.raises(PassError, match="test-break-weights.*should preserve semantics.*output 'y'"):
        PassManager.parse("test-break-weights", verify=True).run(_model())


def test_without_verification_the_broken_pass_goes_unnoticed():
    report = PassManager.parse("test-break-weights{factor=1.5}").run(_model())
    assert report.records[0].result.error is None


def test_lossy_pass_error_is_measured_and_recorded():
    model = _model()
    report = PassManager.parse("test-round-weights{step=0.25}", verify=True).run(model)
    error = report.records[0].result.error
    assert 0 < error.max_abs < 16 * 0.125 * 4  # at most 16 terms of |x|·step/2 with |x| < 4
    assert error.sqnr_db > 10 and 0.9 < error.cosine <= 1.0
    finer = PassManager.parse("test-round-weights{step=0.01}", verify=True).run(_model()).records[0].result.error
    assert finer.max_abs < error.max_abs and finer.sqnr_db > error.sqnr_db
    assert "SQNR" in report.table()


def test_verification_uses_given_data():
    # on all-zero inputs the weights do not matter, so even the broken pass verifies clean;
    # random inputs (no data given) catch it, as the test above shows
    feeds = [{"x": np.zeros((1, 16), np.float32)}]
    report = PassManager.parse("test-break-weights", verify=True).run(_model(), data=feeds)
    assert report.records[0].result.error.max_abs == 0


def test_pass_crash_becomes_pass_error():
    with pytest.raises(PassError, match="pass 'test-crash' failed: ZeroDivisionError: boom"):
        PassManager.parse("test-crash").run(_model())


def test_needs_data():
    with pytest.raises(PassError, match="needs data"):
        PassManager.parse("test-needs-data").run(_model())
    report = PassManager.parse("test-needs-data").run(_model(), data=[{"x": rand((1, 16))}] * 3)
    assert report.records[0].result.stats["samples"] == 3


def test_reference_is_an_untouched_copy():
    model = _model()
    PassManager.parse("remove-identity,eliminate-dead-code").run(model)
    ctx_model = _model()
    from presso.passes import PassContext

    ctx = PassContext()
    PassManager.parse("test-break-weights").run(ctx_model, ctx=ctx)
    np.testing.assert_array_equal(ctx.reference.tensor("w").values * 1.5, ctx_model.tensor("w").values)


def test_a_pass_that_breaks_the_graph_is_named_with_the_node():
    with pytest.raises(PassError, match=r"pass 'test-dangling-read' broke the graph.*ghost.*relu"):
        PassManager.parse("remove-identity,test-dangling-read,eliminate-dead-code").run(_model())


def test_a_pass_that_breaks_an_if_body_is_named():
    then_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["t1"], name="neg"),
                                     helper.make_node("Relu", ["t1"], ["t"], name="inner_relu")],
                                    "then", [], [vi("t", [1, 4])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="pass_x")],
                                    "else", [], [vi("e", [1, 4])])
    model = load(make_proto([helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch,
                                              else_branch=else_branch)],
                            [vi("x", [1, 4]), vi("c", [], bool)], [vi("y", [1, 4])]))
    with pytest.raises(PassError, match=r"test-break-if-body.*reads 't1', which nothing defines") as info:
        PassManager.parse("test-break-if-body").run(model)
    assert "then_branch of If node 'branch'" in str(info.value)

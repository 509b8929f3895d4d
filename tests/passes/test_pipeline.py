"""Pipeline text (MLIR style), typed options, and YAML/TOML recipes."""

from __future__ import annotations

from typing import Literal

import pytest

from presso.ir import PipelineError
from presso.passes import Pass, PassManager, available_passes, load_recipe, parse_pipeline, register_pass


@register_pass("test-options")
class _Options(Pass):
    """A pass with one option of every kind the parser handles. Does nothing."""

    count: int = 3
    ratio: float = 0.5
    flag: bool = False
    mode: Literal["fast", "exact"] = "fast"
    names: list[str] = []
    limit: int | None = None

    def run(self, model, ctx):  # pragma: no cover - never run
        raise NotImplementedError


def test_parse_names_options_and_defaults():
    passes = parse_pipeline("fold-constants, fold-batchnorm{eps_check=false}, "
                            "test-options{count=7,ratio=0.25,flag=yes,mode=exact,names=[a:b,c],limit=none}")
    assert [p.name for p in passes] == ["fold-constants", "fold-batchnorm", "test-options"]
    assert passes[1].eps_check is False and passes[1].standalone is True
    opts = passes[2]
    assert (opts.count, opts.ratio, opts.flag, opts.mode, opts.names, opts.limit) == (7, 0.25, True, "exact",
                                                                                     ["a:b", "c"], None)
    assert repr(passes[0]) == "fold-constants{fold_shapes=True,max_size_mb=None}"


def test_upgrade_opset_option():
    (p,) = parse_pipeline("upgrade-opset{version=13}")
    assert p.version == 13


def test_python_construction_validates_the_same_way():
    assert _Options(count="4").count == 4
    with pytest.raises(PipelineError, match="no option"):
        _Options(nope=1)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("fold-constantz", "unknown pass 'fold-constantz'. Did you mean fold-constants"),
    ("fold-batchnorm{epsilon_check=true}", r"no option\(s\) \['epsilon_check'\].*eps_check: bool"),
    ("test-options{count=2.5}", "invalid value '2.5' for option 'count'.*expected int"),
    ("test-options{flag=maybe}", "must be true or false"),
    ("test-options{mode=slow}", "must be one of fast, exact"),
    ("test-options{count}", "key=value"),
    ("test-options{count=1,count=2}", "given twice"),
    ("test-options{count=1", "unbalanced"),
    ("test-options{count=1}}", "unbalanced"),
    ("Fold_Constants", "not a valid pass name"),
    ("fold-constants{fold_shapes=true}x", "must end"),
])
def test_pipeline_errors(text, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_unknown_pass_lists_valid_passes():
    with pytest.raises(PipelineError) as info:
        parse_pipeline("nothing-like-this")
    for name in ("eliminate-dead-code", "fold-batchnorm", "remove-identity", "upgrade-opset",
                 "constants-to-initializers", "infer-shapes"):
        assert name in str(info.value)
        assert name in available_passes()


def test_yaml_recipes(tmp_path):
    listed = tmp_path / "r.yaml"
    listed.write_text("pipeline:\n  - name: fold-constants\n  - name: fold-batchnorm\n"
                      "    options: {eps_check: false}\n  - eliminate-dead-code\n")
    passes = load_recipe(listed)
    assert [p.name for p in passes] == ["fold-constants", "fold-batchnorm", "eliminate-dead-code"]
    assert passes[1].eps_check is False
    text = tmp_path / "t.yml"
    text.write_text('pipeline: "fold-constants,upgrade-opset{version=13}"\n')
    assert [repr(p) for p in PassManager.from_recipe(text).passes][1] == "upgrade-opset{version=13}"


def test_toml_recipe(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pipeline]]\nname = "fold-constants"\n\n[[pipeline]]\nname = "test-options"\n'
                      '[pipeline.options]\ncount = 9\nnames = ["x", "y"]\n')
    passes = load_recipe(recipe)
    assert passes[1].count == 9 and passes[1].names == ["x", "y"]


@pytest.mark.parametrize("content, message", [
    ("pipeline: [", "cannot be parsed"),
    ("pipeline: []", "non-empty"),
    ("pipeline:\n  - options: {a: 1}\n", "needs a 'name'"),
    ("pipeline:\n  - name: fold-batchnorm\n    options: [1, 2]\n", "options"),
    ("pipeline:\n  - name: fold-batchnorm\n    options: {bogus: 1}\n", "bogus"),
])
def test_bad_recipes(tmp_path, content, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    with pytest.raises(PipelineError, match=message):
        load_recipe(recipe)
    with pytest.raises(PipelineError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")

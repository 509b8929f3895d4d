"""The bad-input corpus for pipeline text and recipes (issue 10).

Each case is one class of bad pipeline. ``PassManager.parse`` must raise a one-line
:class:`PipelineError` that names the pass (its position and text) or the column, and says
what is valid; ``presso opt -p TEXT`` must fail the same way before touching the model.
"""

from __future__ import annotations

import onnx
import pytest
from _graphs import make_proto, vi
from _rejects import assert_clean_error, assert_cli_rejects
from onnx import helper

from presso.ir import PipelineError
from presso.passes import PassManager

CASES = {
    "unknown-pass": ("fold-constants,fold-batchnrom", ("unknown pass 'fold-batchnrom'", "did you mean fold-batchnorm",
                                                       "pass 2", "valid passes")),
    "unknown-option": ("fold-batchnorm{epsilon_check=true}", ("no option", "epsilon_check", "eps_check", "pass 1")),
    "bad-value": ("calibrate{method=banana}", ("invalid value 'banana'", "method", "entropy", "pass 1")),
    "bad-number": ("calibrate{samples=many}", ("invalid value 'many'", "samples", "int")),
    "unclosed-brace": ("fold-constants,calibrate{method=entropy", ("unbalanced '{'", "column 25", "never closed")),
    "extra-closing-brace": ("fold-constants}", ("unbalanced '}'", "column 15")),
    "mismatched-brackets": ("insert-qdq{exclude=[a,b}]", ("unbalanced '}'", "column 24", "']'")),
    "empty-pipeline": ("  ", ("empty", "separated by commas")),
    "options-without-name": ("fold-constants,{method=entropy}", ("no pass name", "pass 2")),
    "missing-comma": ("fold-constants fold-batchnorm", ("not a valid pass name", "separate passes with commas")),
    "option-without-value": ("calibrate{entropy}", ("'entropy'", "key=value", "pass 1")),
    "option-given-twice": ("calibrate{samples=8,samples=16}", ("'samples'", "twice", "pass 1")),
}


@pytest.mark.parametrize("name", CASES)
def test_parse_rejects(name):
    text, needles = CASES[name]
    with pytest.raises(PipelineError) as info:
        PassManager.parse(text)
    assert_clean_error(info.value, *needles, kind=PipelineError)


@pytest.mark.parametrize("name", ["unknown-pass", "unknown-option", "bad-value", "unclosed-brace",
                                  "mismatched-brackets", "missing-comma"])
def test_cli_rejects(tmp_path, capfd, name):
    text, needles = CASES[name]
    model = tmp_path / "m.onnx"
    onnx.save(make_proto([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])]), str(model))
    out = tmp_path / "o.onnx"
    assert_cli_rejects(capfd, ["opt", str(model), "-p", text, "-o", str(out)], *needles, watch=[tmp_path],
                       must_not_exist=[out])


@pytest.mark.parametrize("content, needles", [
    ("pipeline:\n  - name: fold-constants\n  - name: fold-batchnrom\n", ("unknown pass", "step 1", "recipe")),
    ("pipeline:\n  - name: calibrate\n    options: {method: banana}\n", ("invalid value 'banana'", "step 0")),
    ("pipeline: [fold-constants\n", ("cannot be parsed", "YAML")),
])
def test_bad_recipes(tmp_path, capfd, content, needles):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(content)
    with pytest.raises(PipelineError) as info:
        PassManager.from_recipe(recipe)
    assert_clean_error(info.value, *needles, kind=PipelineError)
    model = tmp_path / "m.onnx"
    onnx.save(make_proto([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])]), str(model))
    assert_cli_rejects(capfd, ["opt", str(model), "--recipe", str(recipe), "-o", str(tmp_path / "o.onnx")],
                       *needles, watch=[tmp_path], must_not_exist=[tmp_path / "o.onnx"])

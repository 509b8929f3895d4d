"""Every example under `presso COMMAND --help` runs as written, in a folder that `presso zoo`
filled (the examples say so); the slow ones (TVM, the demo) run with `-m slow`, and one that
ends with `# needs presso[EXTRA]` skips, with that reason, when the extra is not installed."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from presso.tools.main import SUBCOMMANDS, build_parser, main

_SLOW = ("--backend tvm", "presso demo", "--budget")  # --budget: a presso search


def _examples():
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"presso.tools.{name}_cmd")
        for example in module.EXAMPLES:
            marks = [pytest.mark.slow] if any(s in example for s in _SLOW) else []
            yield pytest.param(example, marks=marks, id=example[:60])


def _missing_extra(example: str) -> str | None:
    """The extra an example says it needs (``# needs presso[npu]``) when it is not installed."""
    match = re.search(r"#.*needs presso\[([\w-]+)\]", example)
    if not match:
        return None
    extra = match.group(1)
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    requirements = project.get("optional-dependencies", {}).get(extra)
    if requirements is None:
        return extra
    for requirement in requirements:
        try:
            importlib.metadata.version(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        except importlib.metadata.PackageNotFoundError:
            return extra
    return None


@pytest.fixture(scope="module")
def zoo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["zoo", "--out", "zoo", "--samples", "8"]) == 0
    return folder


def test_every_subcommand_help_shows_its_examples():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name in SUBCOMMANDS:
        text = subparsers[name].format_help()
        examples = importlib.import_module(f"presso.tools.{name}_cmd").EXAMPLES
        assert examples and all(f"  {e}\n" in text for e in examples), name  # one per line, unwrapped


@pytest.mark.parametrize("example", list(_examples()))
def test_help_example_runs_as_written(example, zoo_folder, monkeypatch, capsys):
    extra = _missing_extra(example)
    if extra:
        pytest.skip(f"the example needs presso[{extra}], which is not installed")
    monkeypatch.chdir(zoo_folder)
    argv = shlex.split(example, comments=True)
    assert argv[0] == "presso"
    assert main(argv[1:]) == 0, capsys.readouterr().err

"""Checks shared by the bad-input corpus: a rejection is one clean line and leaves no trace.

A clean rejection (issue 10) is a :class:`PressoError` subclass whose message says what went
wrong, where (``(at ...)``) and what to do (a hint after it), printed by the command line as
exactly one line on stderr with no traceback and a non-zero exit code, with every input file
byte-identical afterwards and no output or temporary file left behind.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from presso.ir.errors import PressoError
from presso.tools.main import main

# "<what> (at <where>). <hint>" or "<what> (at <where>)? <hint>": PressoError._format's shape.
_WHAT_WHERE_HINT = re.compile(r"^(?P<what>.+?) \(at (?P<where>.+)\)[.?!] (?P<hint>\S.*)$")


def snapshot(*folders: Path) -> dict[str, str]:
    """Path → sha256 of every file under ``folders`` (hidden files included)."""
    state = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_symlink():
                state[str(path)] = f"-> {path.readlink()}"
    return state


def assert_clean_error(error: PressoError, *needles: str, kind: type[PressoError] = PressoError) -> None:
    """``error`` is a ``kind`` whose one-line message has what, where and hint and names ``needles``."""
    assert isinstance(error, kind), f"{type(error).__name__} is not a {kind.__name__}: {error}"
    text = str(error)
    assert "\n" not in text, text
    assert error.where, f"no 'where' in: {text}"
    assert error.hint, f"no hint in: {text}"
    assert _WHAT_WHERE_HINT.match(text), f"not 'what (at where). hint': {text}"
    for needle in needles:
        assert needle.lower() in text.lower(), f"{needle!r} not in: {text}"


def assert_cli_rejects(capfd, argv: Sequence[str], *needles: str, watch: Sequence[Path],
                       must_not_exist: Sequence[Path] = ()) -> str:
    """Run ``presso`` with ``argv`` and check that it fails cleanly; returns the stderr line.

    ``watch``: folders whose files must be unchanged afterwards (the input's folder, the
    output's folder), no file added or removed, hidden temporary files included.
    """
    capfd.readouterr()
    before = snapshot(*watch)
    code = main(list(argv))
    out, err = capfd.readouterr()
    # What a terminal shows: a progress bar redraws itself with '\r' and clears itself on exit.
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert code != 0, f"exit code 0 for {argv}; stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    line = lines[0]
    assert "Traceback" not in err, err
    prefix = f"presso {argv[0]}: error: "
    assert line.startswith(prefix), line
    assert _WHAT_WHERE_HINT.match(line[len(prefix):]), f"not 'what (at where). hint': {line}"
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in: {line}"
    assert snapshot(*watch) == before, "files changed, appeared or disappeared"
    for path in must_not_exist:
        assert not Path(path).exists(), f"{path} was created"
    return line

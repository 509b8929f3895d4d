"""The HTML report: what compression did to a model, in one self-contained file.

``presso.report(before, after, data, "report.html")`` (and ``presso report``, ``presso opt
--report``, ``presso compile --report``) measures the two models on ``data`` and writes one
HTML file that opens offline: the pipeline (passes, time, what each changed), per-layer error
(SQNR of every layer's output against the float model), sensitivity (when given or asked
for), the precision of every layer, size and latency before and after, and the graph coloured
by precision or error. Imports ``ir``, ``passes`` and ``backends`` (for ``bench``); plotly
comes with the ``report`` extra.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..ir import Model
from ..ir.errors import PressoError
from ..ir.io import atomic_write_bytes
from ..passes import PipelineReport
from .collect import collect

__all__ = ["check_report_path", "collect", "report", "write_html"]


def report(
    before: Model | str | os.PathLike,
    after: Any,
    data: Any,
    path: str | os.PathLike,
    *,
    pipeline: PipelineReport | Sequence[Mapping[str, Any]] | None = None,
    sensitivity: Any = None,
    metric: Any = None,
    reasons: Mapping[str, str] | None = None,
    samples: int = 16,
    runs: int = 10,
    threads: Sequence[int | str] = (1,),
    shapes: Mapping[str, Sequence[int]] | None = None,
    names: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Measure ``before`` (the float model) against ``after`` and write the HTML report to ``path``.

    ``before`` is a :class:`Model` or an .onnx path; ``after`` a Model, an .onnx path, an
    artifact or an artifact folder (``presso compile``'s output). ``data``: real inputs (a .npz
    file, a folder of .npy/.npz, a dict or an iterable of feeds); the report uses up to
    ``samples`` of them for output agreement and per-layer error, and the first for latency
    (``runs`` interleaved runs per model at each of ``threads``). ``pipeline``: the
    ``PipelineReport`` of the run that made ``after`` (else the pass history saved in the model
    is listed). ``sensitivity``: per-layer sensitivity results to chart, or ``True`` to compute
    them with ``presso.analyze.sensitivity`` on ``before`` (``metric`` picks its task metric).
    ``reasons``: layer name → why it got its precision. ``shapes`` fixes dynamic inputs;
    ``names`` labels the two models (default: their file names).

    Returns the measured numbers (the dict the page is drawn from). Raises
    :class:`PressoError` for missing data, models that are not two versions of one model, and
    an output path that cannot be written (checked before measuring). Written atomically.
    """
    target = check_report_path(path)
    html_module = _html()
    if sensitivity is True:
        sensitivity = compute_sensitivity(before, data, metric=metric, shapes=shapes)
    numbers = collect(before, after, data, pipeline=pipeline, sensitivity=sensitivity, reasons=reasons,
                      samples=samples, runs=runs, threads=threads, shapes=shapes, names=names)
    write_html(numbers, target, html_module)
    return numbers


def write_html(numbers: dict[str, Any], path: str | os.PathLike, html_module: Any = None) -> Path:
    """Render ``numbers`` (from :func:`collect`) and write them to ``path`` atomically."""
    html_module = html_module or _html()
    target = Path(path)
    atomic_write_bytes(target, html_module.render(numbers).encode("utf-8"))
    return target


def _html():
    from . import html

    html.require_plotly()  # fail before measuring when plotly is missing
    return html


def check_report_path(path: str | os.PathLike) -> Path:
    """Raise :class:`PressoError` unless an HTML file can be written at ``path`` (nothing is written)."""
    target = Path(path)
    where = str(target)
    if target.name in ("", ".", "..") or target.is_dir():
        raise PressoError("the report path names a folder, not a file", where=where,
                          hint=f"give a file name, e.g. {target / 'report.html'}")
    if target.exists() and not target.is_file():
        raise PressoError("the report path exists and is not a regular file", where=where,
                          hint="write the report to a regular .html file")
    if not target.parent.is_dir():
        raise PressoError(f"the report's folder '{target.parent}' does not exist", where=where,
                          hint=f"create it first (mkdir -p {target.parent}) or choose another path")
    try:  # a probe file: permission bits say nothing to root, and read-only mounts fail only on write
        handle, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
    except OSError as exc:
        raise PressoError(f"cannot write in '{target.parent}': {exc.strerror or exc}", where=where,
                          hint="choose a writable folder or fix its permissions") from exc
    os.close(handle)
    os.unlink(probe)
    return target


def compute_sensitivity(model: Any, data: Any, *, metric: Any = None,
                        shapes: Mapping[str, Sequence[int]] | None = None) -> Any:
    """Per-layer sensitivity of ``model`` from ``presso.analyze.sensitivity``."""
    try:
        from ..analyze import sensitivity  # the public name
    except ImportError:
        try:
            from ..passes.quant.sensitivity import sensitivity
        except ImportError:
            raise PressoError("sensitivity analysis is not available in this version of Presso",
                              hint="leave out --sensitivity") from None
    from ..ir import load
    from ..ir.analysis.shapes import fix_input_shapes

    if not isinstance(model, Model):
        model = load(model)
    elif shapes:
        model = model.copy()
    if shapes:
        fix_input_shapes(model, shapes)
    options = {} if metric is None else {"metric": metric}
    return sensitivity(model, data, progress=False, **options)

"""ONNX Runtime's QNN execution provider (Qualcomm Hexagon NPU): sessions and op validation.

The provider is the plugin package ``onnxruntime-qnn`` (the ``npu`` extra). On x86 it runs
QNN's real graph preparation (op validation, graph finalization, context binaries) and
simulates the HTP. Every session here disables the CPU fallback: a node the HTP cannot run
is an error, never a silent CPU kernel.

:func:`qnn_support` answers "which nodes would not run on the NPU, and why": it opens a
session with verbose logs and reads QNN's own per-node-unit validation verdicts.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ...ir.errors import BackendError

EP_NAME = "QNNExecutionProvider"
INSTALL_HINT = ('install the QNN execution provider: pip install "presso[npu]" '
                "(or pip install onnxruntime-qnn==2.7.0)")

_registered: dict[str, Any] = {}


def qnn_available() -> bool:
    """Whether ``onnxruntime-qnn`` is installed (does not load it)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime_qnn") is not None


def qnn_device():
    """The QNN EP device, registering the plugin library once; BackendError when missing."""
    if "device" in _registered:
        return _registered["device"]
    try:
        import onnxruntime_qnn
    except ImportError as exc:
        raise BackendError("the qnn-htp target needs onnxruntime-qnn, which is not installed",
                           hint=INSTALL_HINT) from exc
    import onnxruntime as ort

    try:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
    except Exception as exc:  # already registered by someone else in this process is fine
        if "already" not in str(exc).lower():
            raise BackendError(f"onnxruntime cannot register the QNN execution provider: {exc}",
                               hint="onnxruntime-qnn 2.7 needs onnxruntime >= 1.24.2") from exc
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise BackendError("the QNN execution provider offers no device", hint=INSTALL_HINT)
    _registered["device"] = devices[0]
    _registered["htp_path"] = onnxruntime_qnn.get_qnn_htp_path()
    return devices[0]


def session_options(*, fallback: bool = False, severity: int = 3, context_path: str | None = None,
                    embed: bool = True, provider_options: Mapping[str, str] | None = None):
    """SessionOptions for the HTP backend. ``context_path``: also write an EPContext model there."""
    import onnxruntime as ort

    device = qnn_device()
    so = ort.SessionOptions()
    so.log_severity_level = severity
    if not fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_path:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", str(context_path))
        so.add_session_config_entry("ep.context_embed_mode", "1" if embed else "0")
    options = {"backend_path": _registered["htp_path"], **dict(provider_options or {})}
    so.add_provider_for_devices([device], options)
    return so


def open_qnn_session(source: onnx.ModelProto | str | Path, *, fallback: bool = False,
                     context_path: str | None = None, where: str | None = None):
    """A session on the HTP with CPU fallback off; failures become a BackendError."""
    import onnxruntime as ort

    so = session_options(fallback=fallback, context_path=context_path)
    data = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    try:
        with captured_output() as _text:
            return ort.InferenceSession(data, so)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"the QNN HTP cannot run the model: {message}", where=where,
                           hint="run `presso inspect MODEL --target qnn-htp` to list the nodes and QNN's reasons") \
            from exc


# ---- validation: which nodes run on the HTP --------------------------------------------------
@dataclass
class NodeVerdict:
    name: str
    op: str
    reason: str


@dataclass
class QnnSupport:
    """QNN's verdict on a model: nodes it takes, nodes it rejects (with reasons), load error."""

    supported: list[tuple[str, str]] = field(default_factory=list)  # (node name, op)
    unsupported: list[NodeVerdict] = field(default_factory=list)
    error: str | None = None  # session creation failed for another reason (graph finalization…)
    rejected: int = 0  # ONNX nodes rejected, the Q/DQ nodes of rejected units included

    @property
    def total(self) -> int:
        return len(self.supported) + max(self.rejected, len(self.unsupported))

    @property
    def fraction(self) -> float:
        return len(self.supported) / self.total if self.total else 0.0

    @property
    def ok(self) -> bool:
        return not self.unsupported and self.error is None and self.total > 0

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": self.total, "on_npu": len(self.supported), "fraction_on_npu": round(self.fraction, 6),
                "unsupported": [vars(v) for v in self.unsupported], "error": self.error}

    def describe(self, limit: int = 8) -> str:
        """The rejected nodes with QNN's reasons, one phrase each (at most ``limit``)."""
        items = [f"'{v.name}' ({v.op}): {v.reason}" for v in self.unsupported[:limit]]
        if len(self.unsupported) > limit:
            items.append(f"and {len(self.unsupported) - limit} more")
        return "; ".join(items)


_UNIT = re.compile(r"Validation (PASSED|FAILED) for \d+ nodes in (?:Ort)?NodeUnit \(([^)]*)\) :")
_MEMBER = re.compile(r"Operator type: (\S+) Node name: (.*?) Node index: \d+")
_REASON = re.compile(r"REASON\s*:\s*(.*)")
_VALIDATE = re.compile(r"backendValidateOpConfig\(\) failed for node `([^`]*)` of type `([^`]*)` with error code (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_Q_OPS = ("QuantizeLinear", "DequantizeLinear")


def qnn_support(source: onnx.ModelProto | str | Path) -> QnnSupport:
    """Open ``source`` on the HTP (fallback off, verbose logs) and read QNN's per-node verdicts.

    Every ONNX node that QNN's op validation saw is listed once, as supported or with the
    reason QNN gave (Q/DQ nodes of a rejected node unit are attributed to its compute node).
    ``error`` holds the session's failure when the nodes validate but the graph does not
    finalize (an out-of-memory or compose error inside QNN).
    """
    import onnxruntime as ort

    so = session_options(fallback=False, severity=0)
    data = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    error = None
    with captured_output() as text:
        try:
            session = ort.InferenceSession(data, so)
            del session
        except Exception as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _parse_verdicts(text(), error)


def _parse_verdicts(log: str, error: str | None) -> QnnSupport:
    # name -> (op, PASSED/FAILED, reason, reported): Q/DQ nodes of a rejected unit that holds a
    # compute node are not reported on their own (the compute node carries the reason).
    status: dict[str, tuple[str, str, str | None, bool]] = {}
    validate_codes: dict[str, str] = {}
    lines = _ANSI.sub("", log).splitlines()
    i = 0
    while i < len(lines):
        hit = _VALIDATE.search(lines[i])
        if hit:
            validate_codes[hit.group(1)] = f"QNN op validation failed for {hit.group(2)} (error code {hit.group(3)})"
        unit = _UNIT.search(lines[i])
        i += 1
        if not unit:
            continue
        verdict, members, reason = unit.group(1), [], None
        while i < len(lines) and not re.search(r"\[[VWEIF]:", lines[i]):
            member = _MEMBER.search(lines[i])
            if member:
                members.append((member.group(2).strip(), member.group(1)))
            found = _REASON.search(lines[i])
            if found:
                reason = found.group(1).strip()
            i += 1
        has_compute = any(op not in _Q_OPS for _, op in members)
        for name, op in members:
            previous = status.get(name)
            if previous and previous[1] == "FAILED" and verdict == "PASSED":
                continue  # a node rejected in one partitioning pass stays rejected
            status[name] = (op, verdict, reason, not (has_compute and op in _Q_OPS))
    result = QnnSupport()
    for name, (op, verdict, reason, reported) in status.items():
        if verdict == "PASSED":
            result.supported.append((name, op))
        else:
            result.rejected += 1
        if verdict != "PASSED" and reported:
            why = re.sub(r"EP\.(?=[A-Z])", "EP; ", (reason or "rejected by QNN").rstrip("."))
            detail = validate_codes.get(name)
            if detail and detail not in why:
                why = f"{why} ({detail})"
            result.unsupported.append(NodeVerdict(name, op, why))
    if error and result.unsupported and ("CPU" in error or "fallback" in error.lower()):
        error = None  # the fallback error only repeats the unsupported list
    result.error = error
    return result


@contextlib.contextmanager
def captured_output() -> Iterator[Any]:
    """Capture file descriptors 2 and 1 inside the block (onnxruntime's C++ logger writes to 2,
    QNN's libraries print banners on 1); yields a callable that returns the captured text once
    the block has ended."""
    box = {"text": ""}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError):
        yield lambda: box["text"]
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            yield lambda: box["text"]
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            capture.seek(0)
            box["text"] = capture.read().decode("utf-8", errors="replace")

def npu_report(model) -> dict[str, Any]:
    """QNN's verdict on a Presso :class:`~presso.ir.Model` as a dict (``presso inspect --target``):
    nodes, the share on the NPU, and each rejected node with QNN's reason. Dynamic inputs make
    QNN reject every node ("Dynamic shape is not supported"), so fix them first (``--shape``)."""
    support = qnn_support(model.to_proto())
    return support.as_dict()


def render_npu_report(report: Mapping[str, Any], target: str = "qnn-htp") -> list[str]:
    """Text lines for :func:`npu_report`: the fraction, then one line per rejected node."""
    lines = [f"{target}: {report['on_npu']} of {report['nodes']} nodes run on the NPU "
             f"({report['fraction_on_npu']:.1%}, CPU fallback off)"]
    for item in report["unsupported"]:
        lines.append(f"  not on the NPU: '{item['name']}' ({item['op']}): {item['reason']}")
    if report.get("error"):
        lines.append(f"  QNN cannot prepare the graph: {report['error']}")
        lines.append(f"  (quantize for the NPU first: presso.quantize(model, data, target=\"{target}\") or "
                     f"presso opt MODEL --target {target} -p \"insert-qdq,calibrate,fold-qdq\" --data DATA)")
    return lines

"""Presso's error hierarchy.

Every error says what went wrong, where (node, op, tensor, file) and what the user can do.
The command-line tools print them without a traceback and exit non-zero.
"""

from __future__ import annotations


class PressoError(Exception):
    """Base class of every error Presso raises on purpose."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None):
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        text = self.what
        if self.where:
            text = text.rstrip(".") + f" (at {self.where})"
        if self.hint:
            text += (" " if text.endswith((".", "?", "!")) else ". ") + self.hint
        return text


class ModelLoadError(PressoError):
    """A model file or proto could not be loaded or failed validation."""


class UnsupportedOpError(PressoError):
    """An operator that a pass, analysis or backend cannot handle."""


class PipelineError(PressoError):
    """A pipeline text or recipe that names an unknown pass or option, or a bad value."""


class PassError(PressoError):
    """A pass that could not run, or whose result failed verification."""


class CalibrationError(PressoError):
    """Calibration or evaluation data that is missing, empty, malformed or non-finite."""


class InvalidModelError(PressoError):
    """A model that Presso was about to write fails ``onnx.checker`` or its engine's load."""


class BackendError(PressoError):
    """A backend that cannot lower, compile or run a model for a target."""

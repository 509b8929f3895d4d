"""Presso's cache folder: built models, sensitivity results and other things worth keeping."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$PRESSO_CACHE``, else ``$XDG_CACHE_HOME/presso`` (~/.cache/presso)."""
    if os.environ.get("PRESSO_CACHE"):
        return Path(os.environ["PRESSO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "presso"

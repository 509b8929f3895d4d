"""Shared pytest fixtures. Other areas may add theirs here."""

from __future__ import annotations

import gc

import pytest


@pytest.fixture
def free_memory():
    """Collect garbage after a test that held big models (VGG-19 folds to ~550 MB)."""
    yield
    gc.collect()

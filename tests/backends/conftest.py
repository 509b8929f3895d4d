"""Fixtures for the onnxruntime backend and bench tests."""

import numpy as np
import pytest


@pytest.fixture
def x_batch():
    return np.random.default_rng(7).standard_normal((3, 3, 8, 8)).astype(np.float32)

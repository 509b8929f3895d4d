"""Fixtures for the quantization tests (the graph builders live in quant_graphs.py)."""

import numpy as np
import pytest
from quant_graphs import conv_net, matmul_net


@pytest.fixture
def conv_model():
    return conv_net()


@pytest.fixture
def conv_data():
    rng = np.random.default_rng(2)
    return {"x": rng.standard_normal((32, 3, 16, 16)).astype(np.float32)}


@pytest.fixture
def matmul_model():
    return matmul_net()


@pytest.fixture
def matmul_data():
    rng = np.random.default_rng(3)
    return {"x": rng.standard_normal((16, 16, 64)).astype(np.float32)}

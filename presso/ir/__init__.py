"""Presso's IR: the model, loading/saving, graph editing, analyses and reference evaluation.

This layer imports nothing else of Presso.
"""

from .analysis.cost import CostReport, NodeCost, compute_cost
from .analysis.graphview import node_graph
from .analysis.shapes import TensorInfo, dynamic_inputs, fix_input_shapes, infer_tensor_infos
from .annotations import Annotations, PruneRecord, QuantSpec, SparsitySpec
from .data import DataSource, check_finite, random_feeds
from .errors import (
    BackendError,
    CalibrationError,
    InvalidModelError,
    ModelLoadError,
    PassError,
    PipelineError,
    PressoError,
    UnsupportedOpError,
)
from .evaluate import create_session, evaluate
from .io import load, save
from .model import Model

__all__ = [
    "Annotations", "BackendError", "CalibrationError", "CostReport", "DataSource", "InvalidModelError", "Model",
    "ModelLoadError", "NodeCost", "PassError", "PipelineError", "PressoError", "PruneRecord",
    "QuantSpec", "SparsitySpec", "TensorInfo", "UnsupportedOpError", "check_finite",
    "compute_cost", "create_session", "dynamic_inputs", "evaluate", "fix_input_shapes",
    "infer_tensor_infos", "load", "node_graph", "random_feeds", "save",
]

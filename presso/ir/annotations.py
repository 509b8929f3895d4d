"""Typed annotations that Presso keeps beside the graph and saves in `metadata_props`.

Annotations record decisions that the ONNX graph alone cannot express or that later passes
must respect: the quantization spec of a tensor, the sparsity pattern of an initializer,
the channels a pruning pass removed. They round-trip through save → load as JSON under the
metadata key ``presso.annotations``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

METADATA_KEY = "presso.annotations"
FORMAT_VERSION = 1


@dataclass
class QuantSpec:
    """How one tensor is (or will be) quantized."""

    dtype: str  # int8, uint8, int16, uint16, int4, uint4, int32
    symmetric: bool = False
    axis: int | None = None  # None: per-tensor
    scale: list[float] | None = None
    zero_point: list[int] | None = None
    method: str | None = None  # calibration method that produced scale/zero_point
    reduce_range: bool = False  # one bit less than the type (7-bit int8: no u8·s8 overflow on AVX2)


@dataclass
class SparsitySpec:
    """The sparsity pattern an initializer must keep (e.g. through fine-tuning)."""

    pattern: str  # "unstructured", "2:4", "4:8", ...
    ratio: float  # fraction of zeros
    axis: int | None = None  # axis along which N:M groups run


@dataclass
class PruneRecord:
    """What a channel-pruning pass removed from one layer."""

    layer: str
    channels_before: int
    channels_after: int
    removed: list[int] = field(default_factory=list)
    criterion: str | None = None


@dataclass
class Annotations:
    """All of Presso's annotations on a model."""

    quant: dict[str, QuantSpec] = field(default_factory=dict)
    sparsity: dict[str, SparsitySpec] = field(default_factory=dict)
    pruning: list[PruneRecord] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # passes that ran, in order

    def is_empty(self) -> bool:
        return not (self.quant or self.sparsity or self.pruning or self.history)

    def to_json(self) -> str:
        payload = {"version": FORMAT_VERSION, **dataclasses.asdict(self)}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Annotations:
        payload = json.loads(text)
        return cls(
            quant={k: QuantSpec(**v) for k, v in payload.get("quant", {}).items()},
            sparsity={k: SparsitySpec(**v) for k, v in payload.get("sparsity", {}).items()},
            pruning=[PruneRecord(**r) for r in payload.get("pruning", [])],
            history=list(payload.get("history", [])),
        )

    def rename_tensor(self, old: str, new: str) -> None:
        for table in (self.quant, self.sparsity):
            if old in table:
                table[new] = table.pop(old)

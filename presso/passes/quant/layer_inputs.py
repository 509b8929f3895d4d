"""Statistics of the inputs of weight layers, for data-aware weight quantization (GPTQ, AWQ).

For each requested activation tensor x (the input of one or more MatMuls, [..., K]) one pass
over the calibration data accumulates, over every row of x (every token, every sample):
``XᵀX`` in float64 (GPTQ's Hessian, up to the factor 2/rows), the mean |x| per channel (AWQ's
activation scale) and, when asked, the first ``keep_rows`` rows themselves (AWQ's search data).

Padding rows carry no information: when the feed holds an integer input whose name contains
``mask`` and whose shape is the activation's leading shape (e.g. a transformer's
``attention_mask`` [batch, seq] for x [batch, seq, K]), rows where it is 0 are skipped.
Memory: K² per tensor plus the kept rows, whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ...ir import DataSource, Model, check_finite, evaluate
from ...ir.errors import CalibrationError


@dataclass
class InputStats:
    """What one pass over the data measured of one activation tensor."""

    channels: int
    rows: int = 0
    gram: np.ndarray | None = None  # float64 [K, K]: Σ xᵀx over all rows
    abs_sum: np.ndarray | None = None  # float64 [K]: Σ |x|
    kept: list[np.ndarray] = field(default_factory=list)
    keep_rows: int = 0

    @property
    def hessian(self) -> np.ndarray:
        """GPTQ's H = 2 XᵀX / rows (float64 [K, K])."""
        return 2.0 * self.gram / max(self.rows, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / max(self.rows, 1)

    @property
    def sample(self) -> np.ndarray:
        """The kept rows, float32 [R, K]."""
        return np.concatenate(self.kept) if self.kept else np.zeros((0, self.channels), np.float32)

    def add(self, rows: np.ndarray) -> None:
        rows64 = rows.astype(np.float64)
        self.gram = rows64.T @ rows64 + (self.gram if self.gram is not None else 0.0)
        self.abs_sum = np.abs(rows64).sum(axis=0) + (self.abs_sum if self.abs_sum is not None else 0.0)
        self.rows += len(rows)
        room = self.keep_rows - sum(len(r) for r in self.kept)
        if room > 0:
            self.kept.append(np.array(rows[:room], dtype=np.float32))


def calibration_feeds(model: Model, data, *, samples: int | None, batch: int) -> list[dict[str, np.ndarray]]:
    """The calibration feeds, read once and kept (sequential GPTQ runs over them per layer)."""
    source = DataSource.open(data, model)
    feeds = []
    for index, feed in enumerate(source.feeds(batch=source.model_batch or batch, limit=samples)):
        check_finite(feed, where=f"calibration batch {index}")
        feeds.append(feed)
    return feeds


def collect(model: Model, names: Iterable[str], feeds: Iterable[Mapping[str, np.ndarray]], *,
            keep_rows: int = 0) -> dict[str, InputStats]:
    """:class:`InputStats` of each tensor in ``names`` over ``feeds`` (one model run per feed)."""
    names = list(dict.fromkeys(names))
    stats: dict[str, InputStats] = {}
    for feed in feeds:
        values = evaluate(model, feed, outputs=names)
        for name in names:
            value = np.asarray(values[name])
            if value.dtype.kind != "f" or value.ndim < 1:
                raise CalibrationError(f"tensor '{name}' is not a float activation", where=f"tensor '{name}'")
            rows = _valid_rows(value, feed)
            if not np.all(np.isfinite(rows)):
                raise CalibrationError(f"tensor '{name}' holds NaN/Inf on the calibration data", where=f"tensor '{name}'",
                                       hint="check the input data's range; the float model overflows on it")
            entry = stats.setdefault(name, InputStats(channels=value.shape[-1], keep_rows=keep_rows))
            entry.add(rows)
    missing = [n for n in names if n not in stats or stats[n].rows == 0]
    if missing:
        raise CalibrationError(f"the calibration data gave no rows for tensor(s) {missing[:3]}",
                               hint="give at least one sample whose mask is not all zeros")
    return stats


def _valid_rows(value: np.ndarray, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """``value`` as rows [R, K], without the rows a padding mask in ``feed`` marks 0."""
    rows = value.reshape(-1, value.shape[-1])
    lead = value.shape[:-1]
    for name, array in feed.items():
        array = np.asarray(array)
        if "mask" in name.lower() and array.dtype.kind in "iub" and array.shape == lead:
            return rows[array.reshape(-1) != 0]
    return rows


"""The search folder: ``results.json`` (every candidate, its recipe and its measurements),
rewritten atomically after each finished candidate, so an interrupted search loses nothing
it finished and ``--resume`` knows what not to redo.

Layout of DIR::

    results.json      {"search": {...what was searched}, "reference": {...}, "candidates": [...], "front": [keys]}
    front.txt         the Pareto front as a table
    front.png         the front plotted (matplotlib)
    front.html        the same, interactive and offline (plotly)
    front/KEY/        the artifact of each candidate on the front
    candidates/KEY/   artifacts of finished candidates until the front is known (scratch)
    ray/              Ray Tune's own experiment records

A candidate's key is a hash of its pipeline text and backend: the same recipe always has the
same key, which is how a resumed search recognizes work it has done.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from ..ir.errors import PressoError
from ..ir.io import atomic_write_bytes

RESULTS = "results.json"


def candidate_key(pipeline: str, backend: str) -> str:
    return hashlib.sha1(f"{pipeline}\n{backend}".encode()).hexdigest()[:12]


class SearchStore:
    """``results.json`` of one search folder; safe to record from several threads."""

    def __init__(self, folder: str | Path, search: dict[str, Any], *, resume: bool):
        self.folder = Path(folder)
        self.path = self.folder / RESULTS
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            previous = self._read()
            if not resume:
                raise PressoError("the output folder already holds a search", where=str(self.path),
                                  hint="continue it with --resume, or give another -o folder")
            _check_same_search(previous.get("search", {}), search, self.path)
            self.data = previous
            self.data["search"] = {**previous.get("search", {}), **{k: search[k] for k in ("budget",) if k in search}}
        else:
            self.data = {"search": search, "reference": {}, "proposals": 0, "candidates": [], "front": []}

    def __getstate__(self) -> dict[str, Any]:  # Ray Tune pickles its callbacks with the experiment
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise PressoError(f"cannot read the search results: {exc}", where=str(self.path),
                              hint="give another -o folder, or delete the damaged results.json") from None
        if not isinstance(data, dict) or not isinstance(data.get("candidates"), list):
            raise PressoError("results.json is not a search result", where=str(self.path),
                              hint="give another -o folder")
        return data

    # ---- candidates -----------------------------------------------------------------------------
    @property
    def candidates(self) -> list[dict[str, Any]]:
        return self.data["candidates"]

    def finished(self) -> dict[str, dict[str, Any]]:
        """Key → record of every candidate recorded (measured or failed)."""
        return {c["key"]: c for c in self.candidates}

    @property
    def proposals(self) -> int:
        """Candidates proposed so far, repeats of a recorded recipe included (the budget counts them)."""
        return int(self.data.get("proposals", len(self.candidates)))

    def record(self, candidate: dict[str, Any] | None) -> bool:
        """Count one proposal and add its candidate (None: a repeat), writing the file at once;
        False when nothing new was added."""
        with self._lock:
            self.data["proposals"] = self.proposals + 1
            new = candidate is not None and all(c["key"] != candidate["key"] for c in self.candidates)
            if new:
                self.candidates.append(candidate)
            self.save()
            return new

    def set(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            self.save()

    def save(self) -> None:
        atomic_write_bytes(self.path, (json.dumps(self.data, indent=1, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _check_same_search(previous: dict[str, Any], search: dict[str, Any], path: Path) -> None:
    for key in ("model_sha1", "target", "metric", "calib_sha1", "eval_sha1"):
        if key in previous and key in search and previous[key] != search[key]:
            raise PressoError(f"--resume with another {key.replace('_sha1', '')} than the search in this folder "
                              f"({previous[key]} there, {search[key]} now)", where=str(path),
                              hint="resume with the same model, data, target and metric, or give another -o folder")


def read_results(folder: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a search folder."""
    path = Path(folder) / RESULTS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PressoError(f"no readable search results: {exc}", where=str(path),
                          hint="run `presso search ... -o DIR` first") from None

"""Latency without competition: one timing per machine at a time, and no compression running
beside it.

Two guards work together. Ray schedules the timing step as a task that needs one unit of the
custom resource ``presso_timer`` on the candidate's own node (every node of a search cluster
offers exactly one: ``ray start ... --resources '{"presso_timer": 1}'``), so two timings never
overlap on a node. And :class:`MachineLock` keeps the cores quiet: compressing a candidate
holds the machine's lock *shared*, timing holds it *exclusive*, so a timing waits until the
compressions under way on the machine finish and new ones wait until it is done (a writer-
preferring reader/writer lock on two ``flock`` files: several Ray nodes on one machine, as in
the tests, share it too). The kernel releases a lock whose holder dies.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMER_RESOURCE = "presso_timer"


class MachineLock:
    """A reader/writer lock shared by every process of this machine (a folder in /tmp)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder or tempfile.gettempdir()) / f"presso-search-{os.getuid()}"
        self.folder.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        with open(self.folder / name, "a+") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held while compressing: many at once, none while a timing runs or waits."""
        with self._flock("gate.lock", fcntl.LOCK_EX):  # a waiting timing holds the gate: queue behind it
            handle = open(self.folder / "cores.lock", "a+")
            fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held while timing: alone on the machine's cores."""
        with self._flock("gate.lock", fcntl.LOCK_EX), self._flock("cores.lock", fcntl.LOCK_EX):
            yield

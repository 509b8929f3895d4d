"""Legalization passes: rewrite patterns an engine rejects or runs badly into forms it runs.

Every pass here preserves semantics (to float tolerance) and is target-neutral; the target's
legalization pipeline (``backends/target.py``) picks the ones its engine needs. The QNN HTP
(``qnn-htp``) is the first user: it validates every op as a quantized unit and runs no
dynamic shapes, so decomposed activations, normalisations and broadcasts become single ops.
"""

from . import activations, broadcast, normalization, shapes  # noqa: F401  (importing registers the passes)

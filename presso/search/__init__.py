"""Recipe search: the compression recipes that trade task accuracy, latency and size best for
a model on a target, run on Ray Tune with Optuna's multi-objective sampler (the ``search``
extra). ``search`` imports ``passes`` and ``backends``; Ray and Optuna are imported when a
search runs.
"""

from .pareto import OBJECTIVES, dominates, pareto_front
from .runner import SearchError, SearchResult, search
from .space import SearchSpace, SpaceError
from .store import read_results

__all__ = ["OBJECTIVES", "SearchError", "SearchResult", "SearchSpace", "SpaceError", "dominates", "pareto_front",
           "read_results", "search"]

"""Training passes over the IR: `finetune`, `distill`, `qat`, and the differentiable executor.

The passes register without PyTorch (their options can be listed and validated); running one
needs the `train` extra (``pip install 'presso[train]'``). The executor
(:class:`presso.passes.train.executor.GraphExecutor`) imports torch and is loaded on demand.
"""

from . import distill, finetune, qat  # noqa: F401  (importing registers the passes)

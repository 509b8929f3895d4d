"""`TrainingPass`: the options every training pass shares, and the torch requirement.

This module does not import torch, so that the training passes are registered (and listed,
and their options validated) even where torch is missing; running one then fails with a
clear :class:`~presso.ir.errors.PassError` that says how to install it.
"""

from __future__ import annotations

from typing import Literal

from ...ir.errors import PassError
from ..base import Pass


def require_torch(pass_name: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise PassError(f"pass '{pass_name}' needs PyTorch, which is not installed",
                        hint="pip install 'presso[train]'") from None


class TrainingPass(Pass):
    """Options shared by `finetune`, `distill` and `qat`.

    ``epochs``, ``lr``, ``batch``: the schedule (Adam or SGD with momentum, cosine decay).
    ``samples``: use only the first N samples. ``output``: the graph output trained (default:
    the first); ``logits``: the tensor holding its logits (default: the input of a final
    softmax, else the output itself). ``freeze``: initializer names or regular expressions
    that stay fixed. Weights whose sparsity is annotated (``sparsify``) keep their zeros.
    ``threads``: torch's CPU threads while training (restored afterwards); 1 by default because
    small models train many times faster on one thread than with OpenMP threads competing for
    busy cores; raise it for large models on an idle machine (0 keeps torch's setting).
    """

    needs_data = True
    epochs: int = 3
    lr: float = 1e-3
    batch: int = 32
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    samples: int | None = None
    output: str | None = None
    logits: str | None = None
    freeze: list[str] = []
    threads: int = 1

    def _check_schedule(self) -> None:
        if self.epochs < 0 or self.batch < 1 or not self.lr > 0:
            raise PassError(f"pass '{self.name}' needs epochs >= 0, batch >= 1 and lr > 0 "
                            f"(got epochs={self.epochs}, batch={self.batch}, lr={self.lr})")

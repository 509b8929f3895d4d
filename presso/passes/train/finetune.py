"""`finetune`: train the model's weights on labelled data.

Needs: training data with labels (see :mod:`.dataset` for how labels are given) and PyTorch.
Trains the float initializers of the model (weights, biases, normalization parameters)
through the differentiable executor and writes them back. Shapes never change, so removed
channels stay removed; weights with a sparsity annotation keep their zeros. Does not preserve
semantics (that is the point); the per-epoch loss is in the result's log.
"""

from __future__ import annotations

from typing import Literal

from ...ir import Model
from ...ir.errors import CalibrationError
from ..base import PassContext, PassResult
from ..registry import register_pass
from .base import TrainingPass, require_torch


@register_pass("finetune")
class Finetune(TrainingPass):
    """Supervised fine-tuning: ``loss=auto`` is cross-entropy for integer labels, MSE for float."""

    loss: Literal["auto", "cross_entropy", "mse", "l1", "bce"] = "auto"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        require_torch(self.name)
        self._check_schedule()
        from .losses import resolve_task_loss, task_loss
        from .trainer import finish, fit, mask_summary, prepare

        session = prepare(self, model, ctx)
        if session.data.labels is None:
            raise CalibrationError(
                "finetune needs labels and none were given",
                hint="put a 'labels' array in the .npz beside the inputs, set PassContext.labels, "
                     "or use distill (teacher=original) to train without labels")
        kind = resolve_task_loss(self.loss, session.data.labels)
        target = session.logits if kind in ("cross_entropy", "bce") else session.output

        def step(index):
            z = session.executor(session.feeds(index), [target])[target]
            return task_loss(kind, z, session.labels(index))

        history = fit(self, session, ctx, step)
        written = finish(session)
        stats = {"epochs": self.epochs, "samples": len(session.data), "loss": kind,
                 "trained_tensors": len(written), "loss_per_epoch": history}
        if history:
            stats.update(loss_first=history[0], loss_last=history[-1])
        sparsity = mask_summary(model)
        if sparsity:
            stats["sparsity_kept"] = sparsity
        return PassResult(changed=bool(history), stats=stats, log=session.log)

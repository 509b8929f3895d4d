"""The shared training loop of `finetune`, `distill` and `qat` (needs torch).

``prepare`` builds the executor over the model (keeping sparsity masks), ``fit`` runs epochs
of mini-batch gradient descent with a progress bar and a per-epoch loss log, and ``finish``
writes the trained values back into the model's initializers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
import torch

from ...ir import Model, evaluate
from ...ir.analysis.batch import feed_batch
from ...ir.errors import PassError
from ..progress import progress_bar
from .dataset import TrainingSet, load_training_set
from .executor import GraphExecutor
from .losses import find_logits
from .ops import to_torch


@dataclass
class Session:
    """Everything one training run works on."""

    model: Model
    executor: GraphExecutor
    data: TrainingSet
    output: str
    logits: str
    batch: int
    log: list[str] = field(default_factory=list)

    def feeds(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: to_torch(v, self.executor.env) for k, v in self.data.take(index).items()}

    def labels(self, index: np.ndarray) -> torch.Tensor | None:
        if self.data.labels is None:
            return None
        return to_torch(self.data.labels[index], self.executor.env)


def prepare(p, model: Model, ctx, *, learn_scales: bool = False) -> Session:
    """Load data, build the executor with ``p``'s options, keep the sparsity masks."""
    torch.manual_seed(ctx.seed)
    data = load_training_set(ctx.data, ctx.labels, model, samples=p.samples, pass_name=p.name)
    output = p.output or model.output_names()[0]
    if output not in model.output_names() and output not in model.tensors():
        raise PassError(f"pass '{p.name}': there is no tensor '{output}' to train",
                        hint=f"the model's outputs are {model.output_names()}")
    logits = p.logits or find_logits(model, output)[0]
    if logits not in model.tensors():
        raise PassError(f"pass '{p.name}': there is no tensor '{logits}' to use as logits",
                        hint="name an existing tensor with logits=..., or leave it out")
    executor = GraphExecutor(model, learn_scales=learn_scales, freeze=p.freeze)
    masks = {name: np.asarray(t.values) != 0 for name, t in model.initializers().items()
             if name in model.annotations.sparsity}
    executor.set_masks(masks)
    if not executor.trainable():
        raise PassError(f"pass '{p.name}' found no trainable weights in the model",
                        hint="training updates float initializers of Conv/Gemm/MatMul/normalization "
                             "ops; check the freeze option")
    session = Session(model, executor, data, output, logits, p.batch)
    fixed = feed_batch(model, p.batch)  # a dynamic batch axis takes p.batch; a static one may not
    if fixed != p.batch and not _batch_agnostic(session):
        session.batch = fixed
        session.log.append(f"the model's graph is built for batches of {fixed}; training uses that size")
    return session


def _batch_agnostic(session: Session) -> bool:
    """Whether the graph computes per-sample results for a batch of 2 although its inputs
    declare a fixed batch size (graphs that bake the batch into a Reshape do not)."""
    if len(session.data) < 2:
        return False
    try:
        with torch.no_grad():
            out = session.executor(session.feeds(np.arange(2)), [session.output])[session.output]
        return out.dim() > 0 and out.shape[0] == 2
    except Exception:
        return False


def fit(p, session: Session, ctx, step_loss: Callable[[np.ndarray], torch.Tensor],
        extra_params: Iterable[torch.nn.Parameter] = ()) -> list[float]:
    """Train for ``p.epochs`` epochs; returns the mean loss of each epoch."""
    executor = session.executor
    trainable = executor.trainable()
    params = [*trainable.values(), *extra_params]
    scale_params = [trainable[n] for n in executor.scale_names if n in trainable]
    scale_ids = {id(s) for s in scale_params}
    groups = [{"params": [q for q in params if id(q) not in scale_ids]}]
    if scale_params:
        groups.append({"params": scale_params, "weight_decay": 0.0})
    if p.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    else:
        optimizer = torch.optim.Adam(groups, lr=p.lr, weight_decay=p.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, p.epochs * math.ceil(len(session.data) / session.batch)))
    rng = np.random.default_rng(ctx.seed)
    history: list[float] = []
    with torch_threads(p.threads):
        _epochs(p, session, ctx, step_loss, optimizer, schedule, rng, history)
    return history


@contextlib.contextmanager
def torch_threads(count: int):
    """Run with ``count`` torch CPU threads (0: unchanged), restoring the previous setting."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _epochs(p, session: Session, ctx, step_loss, optimizer, schedule, rng, history: list[float]) -> None:
    executor = session.executor
    # One bar over every sample of every epoch: total, percentage and time left are known.
    bar = progress_bar(ctx.progress, p.epochs * len(session.data), p.name)
    try:
        for epoch in range(p.epochs):
            total, count = 0.0, 0
            if bar is not None:
                bar.set_postfix_str(f"epoch {epoch + 1}/{p.epochs}" + (f", loss {history[-1]:.4g}" if history else ""))
            for index in session.data.batches(session.batch, rng=rng):
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss(index)
                if not torch.isfinite(loss):
                    raise PassError(f"pass '{p.name}': the loss became {loss.item()} in epoch {epoch + 1}",
                                    hint="lower the learning rate (lr=...) or check the data and labels")
                loss.backward()
                optimizer.step()
                schedule.step()
                executor.apply_constraints()
                total += float(loss.detach()) * len(index)
                count += len(index)
                if bar is not None:
                    bar.update(len(index))
            history.append(total / max(count, 1))
            session.log.append(f"epoch {epoch + 1}/{p.epochs}: loss {history[-1]:.6g}")
    finally:
        if bar is not None:
            bar.close()


def finish(session: Session) -> list[str]:
    """Write trained values back into the model and drop its cached analyses and sessions."""
    written = session.executor.write_back()
    session.model.invalidate()
    return written


def teacher_outputs(teacher: Model, data: TrainingSet, names: Sequence[str], batch: int = 256) -> dict[str, np.ndarray]:
    """The teacher's tensors ``names`` on every sample, computed once with onnxruntime."""
    step = feed_batch(teacher, batch)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for index in data.batches(step):
        result = evaluate(teacher, data.take(index), list(names))
        for n in names:
            parts[n].append(result[n])
    return {n: np.concatenate(v) for n, v in parts.items()}


def mask_summary(model: Model) -> dict[str, float]:
    """Fraction of zeros of each annotated sparse initializer (to report that masks held)."""
    result = {}
    for name, t in model.initializers().items():
        if name in model.annotations.sparsity and isinstance(t, gs.Constant):
            values = np.asarray(t.values)
            result[name] = float(np.mean(values == 0)) if values.size else 0.0
    return result


def as_numpy(values: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in values.items()}

"""`distill`: knowledge distillation from a teacher model into the model being compiled.

Loss = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(y, z_s) when labels exist (pure
soft-label distillation, α = 1, when they do not), plus β·Σ‖f_s − f_t‖² over the named
intermediate tensor pairs ``features=[student:teacher,...]`` (β is ``beta``). A feature whose channel count
(axis 1) differs, e.g. after channel pruning, goes through a learned 1×1 projection that is
discarded after training. For outputs that are not class scores (rank > 2 with spatial axes,
such as a detection map) ``objective=auto`` matches outputs with MSE instead (``kl``/``mse``
force one).

The teacher is ``teacher=original`` (the model as it entered the pipeline, ``ctx.reference``)
or the path of an ONNX file; ``teacher_output`` names its output when the names differ. It runs in onnxruntime once over the training data; its outputs
are cached for every epoch, since the data is fixed. Needs data and PyTorch. Does not preserve
semantics; stats report the KL to the teacher before and after.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ...ir import Model, load
from ...ir.errors import PassError
from ..base import PassContext, PassResult
from ..registry import register_pass
from .base import TrainingPass, require_torch


@register_pass("distill")
class Distill(TrainingPass):
    """Knowledge distillation (Hinton et al. 2015) with optional feature matching (FitNets)."""

    teacher: str = "original"
    temperature: float = 4.0
    alpha: float = 0.7
    features: list[str] = []
    beta: float = 1.0
    objective: Literal["auto", "kl", "mse"] = "auto"
    teacher_output: str | None = None
    epochs: int = 5

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return self._train(model, ctx, learn_scales=False)

    def _train(self, model: Model, ctx: PassContext, *, learn_scales: bool) -> PassResult:
        require_torch(self.name)
        self._check_schedule()
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise PassError(f"pass '{self.name}' needs 0 <= alpha <= 1 and temperature > 0 "
                            f"(got alpha={self.alpha}, temperature={self.temperature})")
        from .trainer import finish, fit, prepare, torch_threads

        teacher = self._teacher(ctx)
        session = prepare(self, model, ctx, learn_scales=learn_scales)
        objective = DistillObjective(self, session, teacher)
        with torch_threads(self.threads):
            kl_before = objective.measure_kl()
        history = fit(self, session, ctx, objective.step, extra_params=objective.projection_params())
        written = finish(session)
        with torch_threads(self.threads):
            kl_after = objective.measure_kl()
        stats = {"epochs": self.epochs, "samples": len(session.data), "teacher": self.teacher,
                 "objective": objective.kind,
                 "labels": session.data.labels is not None, "trained_tensors": len(written),
                 "loss_per_epoch": history, "features": len(objective.pairs)}
        if kl_before is not None:
            stats.update(kl_before=kl_before, kl_after=kl_after)
        if history:
            stats.update(loss_first=history[0], loss_last=history[-1])
        return PassResult(changed=bool(history), stats=stats, log=session.log)

    def _teacher(self, ctx: PassContext) -> Model:
        return resolve_teacher(self.teacher, ctx, self.name)


def resolve_teacher(spec: str, ctx: PassContext, pass_name: str) -> Model:
    if spec == "original":
        if ctx.reference is None:
            raise PassError(f"pass '{pass_name}' has no original model to distill from",
                            hint="run it through PassManager (which records the input model), or give "
                                 "teacher=PATH.onnx")
        return ctx.reference
    return load(spec)


class DistillObjective:
    """The distillation loss of one run, with the teacher's cached outputs and projections."""

    def __init__(self, p: Distill, session, teacher: Model):
        import torch

        from .losses import Projection, find_logits
        from .trainer import teacher_outputs

        self.p = p
        self.session = session
        student = session.model
        t_output = p.teacher_output or (session.output if session.output in teacher.output_names()
                                        else teacher.output_names()[0])
        tensors = {"student": student.tensors(), "teacher": teacher.tensors()}  # scanned once
        if t_output not in tensors["teacher"]:
            raise PassError(f"the teacher has no tensor '{t_output}'",
                            hint=f"the teacher's outputs are {teacher.output_names()}")
        t_logits, is_softmax = find_logits(teacher, t_output)
        self.pairs: list[tuple[str, str]] = []
        for item in p.features:
            if ":" not in item:
                raise PassError(f"distill feature '{item}' must be 'student_tensor:teacher_tensor'")
            s_name, t_name = (x.strip() for x in item.split(":", 1))
            for name, who in ((s_name, "student"), (t_name, "teacher")):
                if name not in tensors[who]:
                    raise PassError(f"distill feature: the {who} has no tensor '{name}'",
                                    hint="use `presso inspect --layers` to list tensor names")
            self.pairs.append((s_name, t_name))
        names = [t_logits, t_output, *[t for _, t in self.pairs]]
        self.cache = teacher_outputs(teacher, session.data, list(dict.fromkeys(names)))
        self.kind = p.objective
        if self.kind == "auto":
            shape = self.cache[t_logits].shape
            classifier = is_softmax or len(shape) == 2 or (len(shape) > 2 and all(d == 1 for d in shape[2:]))
            self.kind = "kl" if classifier else "mse"
        self.t_logits = t_logits if self.kind == "kl" else t_output
        self.s_target = session.logits if self.kind == "kl" else session.output
        env = session.executor.env
        self.projections = torch.nn.ModuleDict()
        if self.pairs:
            with torch.no_grad():
                probe = session.executor(session.feeds(np.arange(min(2, len(session.data)))),
                                         [s for s, _ in self.pairs])
            for i, (s_name, t_name) in enumerate(self.pairs):
                s_shape, t_shape = probe[s_name].shape, self.cache[t_name].shape
                if s_shape[1:] == t_shape[1:]:
                    continue
                if len(s_shape) != len(t_shape) or s_shape[2:] != t_shape[2:]:
                    raise PassError(f"distill feature '{s_name}:{t_name}': shapes {list(s_shape)} and "
                                    f"{list(t_shape)} differ beyond the channel axis",
                                    hint="pair tensors with the same spatial size")
                self.projections[str(i)] = Projection(s_shape[1], t_shape[1], env.float_dtype)

    def projection_params(self):
        return list(self.projections.parameters())

    def step(self, index: np.ndarray):
        import torch

        from .losses import feature_l2, kd_kl, task_loss

        session, p = self.session, self.p
        env = session.executor.env
        wanted = [self.s_target, *[s for s, _ in self.pairs]]
        out = session.executor(session.feeds(index), list(dict.fromkeys(wanted)))
        zs = out[self.s_target]
        zt = torch.as_tensor(self.cache[self.t_logits][index], dtype=env.float_dtype)
        labels = session.labels(index)
        if self.kind == "mse":
            soft = torch.nn.functional.mse_loss(zs, zt.reshape(zs.shape))
            loss = soft if labels is None else p.alpha * soft + (1 - p.alpha) * task_loss("mse", zs, labels)
        else:
            soft = kd_kl(zs, zt, p.temperature)
            if labels is None:
                loss = soft
            else:
                kind = "mse" if labels.is_floating_point() else "cross_entropy"
                loss = p.alpha * soft + (1 - p.alpha) * task_loss(kind, zs, labels)
        for i, (s_name, t_name) in enumerate(self.pairs):
            fs = out[s_name]
            if str(i) in self.projections:
                fs = self.projections[str(i)](fs)
            ft = torch.as_tensor(self.cache[t_name][index], dtype=env.float_dtype)
            loss = loss + p.beta * feature_l2(fs, ft)
        return loss

    def measure_kl(self) -> float | None:
        """Mean KL(teacher ‖ student) at T = 1 over the training data (None for mse)."""
        import torch

        from .losses import kd_kl

        if self.kind != "kl":
            return None
        session = self.session
        total, count = 0.0, 0
        with torch.no_grad():
            for index in session.data.batches(max(session.batch, 1)):
                zs = session.executor(session.feeds(index), [self.s_target])[self.s_target]
                zt = torch.as_tensor(self.cache[self.t_logits][index], dtype=zs.dtype)
                total += float(kd_kl(zs, zt, 1.0)) * len(index)
                count += len(index)
        return total / max(count, 1)

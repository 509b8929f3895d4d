"""Losses for training passes, and finding the logits behind a model's probability output.

Classifiers often end in a softmax (a ``Softmax`` node, or exporters' ``Exp``/``ReduceSum``/
``Div`` spelling of it, as in magika). Cross-entropy and temperature-scaled distillation need
the logits before it, so :func:`find_logits` walks back from the output to find them.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
import torch
import torch.nn.functional as F

from ...ir import Model
from ...ir.errors import CalibrationError, PressoError


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def find_logits(model: Model, output: str) -> tuple[str, bool]:
    """(tensor holding the logits, whether ``output`` is a softmax of them).

    Recognizes ``Softmax(z)`` on the last axis (or axis 1 of a rank-2 tensor) and the
    decomposed ``Div(Exp(Sub(z, ·)), ·)`` / ``Div(Exp(z), ·)``. Otherwise the output itself is
    taken as the logits.
    """
    tensor = model.tensor(output)
    node = _producer(tensor)
    if node is not None and node.op == "Softmax":
        return node.inputs[0].name, True
    if node is not None and node.op == "Div":
        exp = _producer(node.inputs[0])
        if exp is not None and exp.op == "Exp":
            inner = _producer(exp.inputs[0])
            if inner is not None and inner.op == "Sub":
                return inner.inputs[0].name, True
            return exp.inputs[0].name, True
    return output, False


def class_logits(z: torch.Tensor) -> torch.Tensor:
    """Logits as [samples, classes]: class axis 1, trailing singleton axes dropped."""
    if z.dim() > 2:
        if all(d == 1 for d in z.shape[2:]):
            return z.reshape(z.shape[0], z.shape[1])
        # dense predictions (segmentation): every position is a sample
        return z.movedim(1, -1).reshape(-1, z.shape[1])
    return z if z.dim() == 2 else z.reshape(z.shape[0], -1)


def task_loss(kind: str, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The supervised loss of ``kind`` between model logits/outputs ``z`` and ``labels``."""
    if kind == "cross_entropy":
        logits = class_logits(z)
        target = labels.long().reshape(-1)
        if target.shape[0] != logits.shape[0]:
            raise CalibrationError(f"{target.shape[0]} labels for {logits.shape[0]} predictions",
                                   where="training labels",
                                   hint="give one class index per sample (or per position for dense outputs)")
        if int(target.min()) < 0 or int(target.max()) >= logits.shape[1]:
            raise CalibrationError(f"class labels must lie in [0, {logits.shape[1] - 1}], got "
                                   f"[{int(target.min())}, {int(target.max())}]", where="training labels")
        return F.cross_entropy(logits, target)
    target = labels.to(z.dtype).reshape(z.shape) if labels.numel() == z.numel() else None
    if target is None:
        raise CalibrationError(f"labels of shape {list(labels.shape)} do not match the output's "
                               f"shape {list(z.shape)}", where="training labels",
                               hint="regression labels need the output's shape; class labels must be integers")
    if kind == "mse":
        return F.mse_loss(z, target)
    if kind == "l1":
        return F.l1_loss(z, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(z, target)
    raise PressoError(f"unknown loss '{kind}'")


def resolve_task_loss(kind: str, labels) -> str:
    """``auto``: integer labels → cross_entropy, float labels → mse."""
    if kind != "auto":
        return kind
    return "cross_entropy" if labels.dtype.kind in "iub" else "mse"


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), averaged over samples (Hinton et al. 2015)."""
    zs, zt = class_logits(student), class_logits(teacher)
    log_ps = F.log_softmax(zs / temperature, dim=1)
    log_pt = F.log_softmax(zt / temperature, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    return kl * temperature**2


def feature_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between two feature maps of the same shape."""
    return F.mse_loss(student, teacher)


class Projection(torch.nn.Module):
    """A learned 1×1 map from the student's channels to the teacher's (axis 1).

    Needed when pruning removed channels of a distilled feature; discarded after training.
    """

    def __init__(self, student_channels: int, teacher_channels: int, dtype: torch.dtype):
        super().__init__()
        self.linear = torch.nn.Linear(student_channels, teacher_channels, bias=False, dtype=dtype)
        with torch.no_grad():  # start as "keep the shared channels" rather than random noise
            eye = torch.zeros(teacher_channels, student_channels, dtype=dtype)
            n = min(teacher_channels, student_channels)
            eye[range(n), range(n)] = 1.0
            self.linear.weight.copy_(eye)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)

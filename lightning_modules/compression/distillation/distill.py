"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    method=kd method.teacher=<run name | run directory | model.pt path>

The student is trained on

    loss = alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) CE(z_s, y)

(z_t, z_s the teacher's and the student's logits; T^2 keeps the soft term's gradient scale
independent of T, Sec. 2). The student is evaluated and exported at T = 1: its own logits.

The teacher is a built, frozen net handed over by the harness: the app finds the earlier run
(lightning_modules/earlier_runs.py) and rebuilds it from what that run left behind; this package
never reads results folders or configs. The teacher is moved to the logits' device on first use
and held by the method, never by the student: its parameters are not in the optimizer, the
parameter count, the checkpoint or the exported file. The paper's optional separate transfer set is not implemented (the student's own
training batches are the transfer set).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..method import Method


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """alpha T^2 KL(p_t || p_s) + (1 - alpha) CE(z_s, y), p = softmax(z / T); KL summed over the
    classes and averaged over the batch, like the cross-entropy. Computed in float32."""
    s, t = student.float(), teacher.detach().float()
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    soft = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
    return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(s, target)


class KnowledgeDistillation(Method):
    """`method=kd` (and the `kd` part of quantized / differentiable quantization): the student (the
    run's model) trained on the distillation loss of a frozen `teacher` (an nn.Module the harness
    builds from an earlier run). `teacher=None` is only for loading a file (no training)."""

    def __init__(self, teacher: nn.Module | None = None, alpha: float = 0.9, temperature: float = 4.0,
                 key: str = "method", name: str = "kd"):
        super().__init__(name)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"{key}.alpha={alpha}: must be a number in [0, 1] (weight of the soft term)")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"{key}.temperature={temperature}: must be a number > 0")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ConfigError(f"{key}.teacher={teacher!r}: not a model (the harness builds it from a run)")
        self.alpha, self.temperature, self.key = float(alpha), float(temperature), key
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)

    def apply(self, model: nn.Module) -> nn.Module:
        if self.teacher is None:
            raise ConfigError(f"{self.key}.teacher=null: {self.name} needs a teacher; valid: the run name, "
                              "run directory or model file of a trained run")
        return model

    def teacher_logits(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits for x, on the device of `like` (moved there once)."""
        p = next(self.teacher.parameters(), None)
        if p is not None and p.device != like.device:
            self.teacher.to(like.device)
        if self.teacher.training:  # nothing should switch it, but dropout must stay off
            self.teacher.eval()
        with torch.no_grad():
            return self.teacher(x)

    def loss(self, logits, target, batch):
        if self.teacher is None:
            return None
        z_t = self.teacher_logits(batch[0], logits)
        if z_t.shape != logits.shape:
            raise ConfigError(f"{self.key}.teacher: teacher logits {tuple(z_t.shape)}, student logits "
                              f"{tuple(logits.shape)}; valid: a teacher for the student's classes")
        return kd_loss(logits, z_t, target, self.alpha, self.temperature)

    def __repr__(self) -> str:
        t = None if self.teacher is None else type(self.teacher).__name__
        return f"{type(self).__name__}(teacher={t}, alpha={self.alpha}, T={self.temperature})"

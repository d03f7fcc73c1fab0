"""The combined distillation criterion: optional projection, optional L2-normalisation, weighted terms.

The projection (``nn.Linear(student_dim, teacher_dim, bias=False)``) is trained
with the student. It lives in this module, so it is saved in checkpoints under
``"loss"``; at export either discard it (evaluate the student in its own space,
which is what verification needs) or keep it with :meth:`DistillLoss.export_head`
to emit embeddings in the teacher's space.

Example::

    crit = DistillLoss(mse=1.0, cosine=0.5, student_dim=64, teacher_dim=128, normalize=True)
    total, parts = crit(student_emb, teacher_emb)   # parts: {"mse": ..., "cosine": ...} (floats)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cosine import cosine_loss
from .embedding import squared_l2_loss
from .relational import relational_loss

#: term name -> pure function (student, teacher) -> scalar
TERMS = {"mse": squared_l2_loss, "cosine": cosine_loss, "relational": relational_loss}


class DistillLoss(nn.Module):
    """Weighted sum of :data:`TERMS` after an optional projection and optional normalisation."""

    def __init__(self, *, mse: float = 1.0, cosine: float = 0.0, relational: float = 0.0,
                 normalize: bool = False, student_dim: int | None = None, teacher_dim: int | None = None,
                 projection: bool | None = None) -> None:
        super().__init__()
        self.weights = {k: float(w) for k, w in (("mse", mse), ("cosine", cosine), ("relational", relational))
                        if w > 0}
        if not self.weights:
            raise ValueError("train.loss: every term weight is 0; set at least one of mse, cosine, relational > 0")
        self.normalize = normalize
        if projection is None:
            projection = student_dim is not None and teacher_dim is not None and student_dim != teacher_dim
        if projection and (student_dim is None or teacher_dim is None):
            raise ValueError("a projection needs student_dim and teacher_dim")
        self.projection = nn.Linear(student_dim, teacher_dim, bias=False) if projection else None
        self.student_dim, self.teacher_dim = student_dim, teacher_dim

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.project(student.float())
        t = teacher.detach().float()
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        total = s.new_zeros(())
        parts: dict[str, float] = {}
        for name, w in self.weights.items():
            value = TERMS[name](s, t)
            parts[name] = float(value.detach())
            total = total + w * value
        return total, parts

    def project(self, student: torch.Tensor) -> torch.Tensor:
        return student if self.projection is None else self.projection(student)

    def export_head(self) -> nn.Module | None:
        """The trained projection (student -> teacher space) to append at export, or None."""
        return self.projection

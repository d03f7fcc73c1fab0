"""Distillation losses: one pure function + ``nn.Module`` per file, combined by :class:`DistillLoss`.

Example::

    from distill.losses import build_loss
    crit = build_loss(cfg.train.loss, student_dim=128, teacher_dim=128, teacher_normalized=False)
"""
from __future__ import annotations

from distill.config import LossSettings

from .cosine import CosineLoss, cosine_loss
from .distill_loss import TERMS, DistillLoss
from .embedding import SquaredL2Loss, squared_l2_loss
from .relational import RelationalLoss, pairwise_distances, relational_loss


def build_loss(settings: LossSettings, *, student_dim: int, teacher_dim: int,
               teacher_normalized: bool) -> DistillLoss:
    """LossSettings -> :class:`DistillLoss`. ``normalize=None`` follows the teacher; ``projection=None``
    adds one only when the dims differ (``projection=False`` with differing dims is an error)."""
    if settings.projection is False and student_dim != teacher_dim:
        raise ValueError(f"train.loss.projection=false but the student embeds to {student_dim} dims and the "
                         f"teacher to {teacher_dim}; set student.embedding_dim={teacher_dim} or allow a projection")
    normalize = teacher_normalized if settings.normalize is None else settings.normalize
    return DistillLoss(mse=settings.mse, cosine=settings.cosine, relational=settings.relational,
                       normalize=normalize, student_dim=student_dim, teacher_dim=teacher_dim,
                       projection=settings.projection)


__all__ = ["build_loss", "DistillLoss", "TERMS", "squared_l2_loss", "SquaredL2Loss", "cosine_loss", "CosineLoss",
           "relational_loss", "RelationalLoss", "pairwise_distances"]

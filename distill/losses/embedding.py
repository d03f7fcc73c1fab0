"""The paper's distillation loss (MobileNets section 4.7): squared L2 distance to the teacher.

``sum_d (s_d - t_d)^2`` per sample, averaged over the batch. The teacher side is
always detached: gradients reach the student (and a projection) only.

Example::

    loss = squared_l2_loss(student_emb, teacher_emb)      # scalar
    crit = SquaredL2Loss(); crit(student_emb, teacher_emb)
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import LOSS_TERMS


def squared_l2_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared L2 difference summed over the embedding dimension."""
    _check(student, teacher)
    return (student - teacher.detach()).pow(2).sum(dim=1).mean()


@LOSS_TERMS.register("mse", description="the paper's squared L2 difference to the teacher (sec. 4.7)")
class SquaredL2Loss(nn.Module):
    """Module form of :func:`squared_l2_loss` (config name ``mse``)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``(B, D), (B, D) -> ()``."""
        return squared_l2_loss(student, teacher)


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(f"student and teacher embeddings must both be (B, D) with the same shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)} (use a projection when dims differ)")

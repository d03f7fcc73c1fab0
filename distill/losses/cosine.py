"""A ``1 - cos(student, teacher)`` term: matches directions, which is what verification scores use.

Example::

    loss = cosine_loss(student_emb, teacher_emb)     # 0 for parallel rows, 2 for opposite rows
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embedding import _check
from .registry import LOSS_TERMS


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of ``1 - cos(s_i, t_i)``."""
    _check(student, teacher)
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=1, eps=eps)).mean()


@LOSS_TERMS.register("cosine", description="1 - cosine to the teacher: matches directions")
class CosineLoss(nn.Module):
    """Module form of :func:`cosine_loss` (config name ``cosine``)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``(B, D), (B, D) -> ()``."""
        return cosine_loss(student, teacher)

"""The combined distillation criterion: optional projection, optional L2-normalisation, a weighted sum of terms.

Terms are registered modules (:data:`~distill.losses.registry.LOSS_TERMS`) passed in as objects;
configs name them (``train.loss.<name>: weight``) and :func:`distill.resolve.loss_from_config`
builds this module. The projection (``nn.Linear(student_dim, teacher_dim, bias=False)``) is trained
with the student and saved in checkpoints under ``"loss"``; at export either discard it (evaluate
the student in its own space) or keep it with :meth:`DistillLoss.export_head` to emit embeddings in
the teacher's space.

Example::

    crit = DistillLoss({"mse": SquaredL2Loss(), "cosine": CosineLoss()}, weights={"cosine": 0.5},
                       student_dim=64, teacher_dim=128, normalize=True)
    total, parts = crit(student_emb, teacher_emb)   # parts: {"mse": tensor, "cosine": tensor} (detached)
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embedding import SquaredL2Loss


class DistillLoss(nn.Module):
    """Sum of ``weights[name] * terms[name](student, teacher)`` after an optional projection and normalisation.

    Args:
        terms: name -> term module (default: the paper's ``{"mse": SquaredL2Loss()}``).
        weights: name -> weight (default 1.0 for every term); terms of weight 0 are dropped.
        normalize: L2-normalise both sides before the terms.
        student_dim, teacher_dim: embedding dims; a projection is added when they differ
            (``projection=None``), always (``True``) or never (``False``).

    Raises:
        ValueError: every weight is 0, a weight names no term, or a projection is asked without dims.
    """

    def __init__(self, terms: Mapping[str, nn.Module] | None = None, weights: Mapping[str, float] | None = None,
                 *, normalize: bool = False, student_dim: int | None = None, teacher_dim: int | None = None,
                 projection: bool | None = None) -> None:
        super().__init__()
        terms = dict(terms) if terms is not None else {"mse": SquaredL2Loss()}
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"loss weights name terms that were not given: {', '.join(unknown)}")
        kept = {k: float(weights.get(k, 1.0)) for k in terms if float(weights.get(k, 1.0)) > 0}
        if not kept:
            raise ValueError("train.loss: every term weight is 0; set at least one term (e.g. train.loss.mse) > 0")
        self.terms = nn.ModuleDict({k: terms[k] for k in kept})
        self.weights = kept
        self.normalize = normalize
        if projection is None:
            projection = student_dim is not None and teacher_dim is not None and student_dim != teacher_dim
        if projection and (student_dim is None or teacher_dim is None):
            raise ValueError("a projection needs student_dim and teacher_dim")
        self.projection = nn.Linear(student_dim, teacher_dim, bias=False) if projection else None
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        # targets are compared as (t - shift) / scale (identity until set_target_scale); in the loss state, so a
        # resumed run uses the same standardisation
        self.register_buffer("target_shift", torch.zeros(teacher_dim or 0))
        self.register_buffer("target_scale", torch.ones(()))

    def set_target_scale(self, shift: torch.Tensor, scale: float) -> None:
        """Compare the student with ``(teacher - shift) / scale``: shift ``(D,)`` in teacher units, scale > 0.

        One global scale keeps the geometry: every squared distance is divided by ``scale**2``.
        """
        if self.projection is not None:
            raise ValueError("target scaling works in the student's own space; it cannot be combined with a "
                             "projection (set train.target_scale=false or student.embedding_dim to the teacher's)")
        if not scale > 0:
            raise ValueError(f"target scale must be > 0, got {scale}")
        self.target_shift = shift.detach().float().reshape(-1).clone()
        self.target_scale = torch.tensor(float(scale))

    @property
    def target_scaled(self) -> bool:
        """Whether targets are standardised (the student learns ``(t - shift) / scale``)."""
        return bool(self.target_shift.numel()) and (bool(self.target_shift.abs().sum() > 0)
                                                    or float(self.target_scale) != 1.0)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(B, Ds), (B, Dt) -> (total, {term: detached scalar tensor})``; the teacher side is detached.

        Parts stay tensors so a training step needs no host synchronisation; read them with ``float()``.
        """
        s = self.project(student.float())
        t = teacher.detach().float()
        if self.target_shift.numel():
            t = (t - self.target_shift) / self.target_scale
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        total = s.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            value = term(s, t)
            parts[name] = value.detach()
            total = total + self.weights[name] * value
        return total, parts

    def project(self, student: torch.Tensor) -> torch.Tensor:
        """The student's embedding in the teacher's dimension (identity without a projection)."""
        return student if self.projection is None else self.projection(student)

    def export_head(self) -> nn.Module | None:
        """The trained projection (student -> teacher space) to append at export, or None."""
        return self.projection

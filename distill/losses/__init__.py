"""Distillation losses: one file per term (a pure function + its registered module), summed by :class:`DistillLoss`.

Terms: ``mse`` (the paper's squared L2 difference), ``cosine``, ``relational``, ``similarity`` (the
similarity distribution over a bank of teacher embeddings: the low-FAR tail); see
:mod:`distill.losses.registry` for adding one. Configs name terms with weights
(``train.loss.cosine: 0.5``); :func:`distill.resolve.loss_from_config` builds the criterion.

Example::

    from distill.losses import CosineLoss, DistillLoss, SquaredL2Loss
    crit = DistillLoss({"mse": SquaredL2Loss(), "cosine": CosineLoss()}, student_dim=128, teacher_dim=128)
"""
from __future__ import annotations

from .cosine import CosineLoss, cosine_loss
from .distill_loss import DistillLoss
from .embedding import SquaredL2Loss, squared_l2_loss
from .registry import LOSS_TERMS
from .relational import RelationalLoss, pairwise_distances, relational_loss
from .similarity import SimilarityLoss, similarity_loss

__all__ = ["LOSS_TERMS", "DistillLoss", "squared_l2_loss", "SquaredL2Loss", "cosine_loss", "CosineLoss",
           "relational_loss", "RelationalLoss", "pairwise_distances", "similarity_loss", "SimilarityLoss"]

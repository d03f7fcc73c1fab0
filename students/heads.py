"""Heads shared by every student backbone."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class EmbeddingHead(nn.Module):
    """Pooled features -> linear -> optional BatchNorm1d -> optional L2 normalisation.

    Example::

        head = EmbeddingHead(1024, 128, normalize=True)
        emb = head(torch.randn(8, 1024))      # (8, 128), unit rows
    """

    def __init__(self, in_features: int, embedding_dim: int, *, bn: bool = True,
                 normalize: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, embedding_dim, bias=not bn)
        self.bn = nn.BatchNorm1d(embedding_dim) if bn else nn.Identity()
        self.normalize = normalize
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.fc(self.dropout(x)))
        return F.normalize(x, dim=1) if self.normalize else x


class ClassifierHead(nn.Module):
    """The paper's ImageNet head (linear to ``num_classes`` logits); used to check Table 6/7 costs."""

    def __init__(self, in_features: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def make_head(in_features: int, *, embedding_dim: int | None, num_classes: int | None,
              normalize: bool, head_bn: bool, dropout: float) -> nn.Module:
    """Build exactly one head: an embedding head (default) or the classifier head."""
    if num_classes is not None and embedding_dim is not None:
        raise ValueError("give either embedding_dim (face embedding head) or num_classes (classifier head), not both")
    if num_classes is not None:
        return ClassifierHead(in_features, num_classes)
    return EmbeddingHead(in_features, embedding_dim or 128, bn=head_bn, normalize=normalize, dropout=dropout)

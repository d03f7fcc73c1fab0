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

    @torch.no_grad()
    def fold_output_affine(self, scale: float, shift: torch.Tensor) -> None:
        """Make the head emit ``scale * y + shift`` instead of ``y`` (eval mode exactly): folded into the
        BatchNorm's affine (or the linear layer without BatchNorm). ``shift`` is ``(D,)``.

        Raises:
            ValueError: the head L2-normalises its output (an affine before it is not an output affine).
        """
        if self.normalize:
            raise ValueError("cannot fold an output affine into a head that L2-normalises its output")
        layer = self.bn if isinstance(self.bn, nn.BatchNorm1d) else self.fc
        if layer.weight is not None:
            layer.weight.mul_(scale)
        if layer.bias is None:
            raise ValueError("the head's last affine layer has no bias to fold the shift into")
        layer.bias.mul_(scale).add_(shift.to(layer.bias))


class ClassifierHead(nn.Module):
    """The paper's ImageNet head (linear to ``num_classes`` logits); used to check Table 6/7 costs."""

    def __init__(self, in_features: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class HeadContract:
    """Mixin for students with a ``head``: the output contract a student file records (no probing needed)."""

    head: nn.Module

    @property
    def embedding_dim(self) -> int | None:
        """Output dimension D of the embedding head (None with the classifier head)."""
        return getattr(self.head, "embedding_dim", None)

    @property
    def normalized(self) -> bool:
        """Whether the output rows are L2-normalised (cosine scores) or raw (Euclidean)."""
        return bool(getattr(self.head, "normalize", False))


def make_head(in_features: int, *, embedding_dim: int | None, num_classes: int | None,
              normalize: bool, head_bn: bool, dropout: float) -> nn.Module:
    """Build exactly one head: an embedding head (default) or the classifier head."""
    if num_classes is not None and embedding_dim is not None:
        raise ValueError("give either embedding_dim (face embedding head) or num_classes (classifier head), not both")
    if num_classes is not None:
        return ClassifierHead(in_features, num_classes)
    return EmbeddingHead(in_features, embedding_dim or 128, bn=head_bn, normalize=normalize, dropout=dropout)

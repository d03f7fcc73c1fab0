"""Any timm model as a student backbone, with the same embedding head as MobileNet."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from .heads import HeadContract, make_head


class TimmStudent(HeadContract, nn.Module):
    """A timm backbone (``num_classes=0``: pooled pre-logits features) plus our head.

    Weights are never downloaded here: ``pretrained`` is off, and ``checkpoint``
    may name a local timm state dict for the backbone.

    Example::

        net = TimmStudent("mobilenetv3_small_100", input_size=112, embedding_dim=128)
        emb = net(torch.randn(2, 3, 112, 112))
    """

    def __init__(self, model_name: str = "mobilenetv3_small_100", input_size: int = 160,
                 embedding_dim: int | None = 128, num_classes: int | None = None, normalize: bool = True,
                 head_bn: bool = True, dropout: float = 0.0, checkpoint: str | Path | None = None) -> None:
        super().__init__()
        if model_name not in timm.list_models():
            raise ValueError(f"timm has no model {model_name!r} (see timm.list_models())")
        self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0)
        if checkpoint is not None:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            # a classifier in the file is fine (we replace it); a missing backbone weight is not
            missing = self.backbone.load_state_dict(state, strict=False).missing_keys
            if missing:
                raise ValueError(f"{checkpoint}: not a {model_name} state dict; missing {missing[:5]}")
        self.model_name, self.input_size = model_name, input_size
        # pooled feature width: timm >= 1.0 exposes head_hidden_size where a pre-logits layer widens it
        self.num_features = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.head = make_head(self.num_features, embedding_dim=None if num_classes else embedding_dim,
                              num_classes=num_classes, normalize=normalize, head_bn=head_bn, dropout=dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_head(x, pre_logits=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

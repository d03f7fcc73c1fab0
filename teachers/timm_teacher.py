"""Any timm model as a teacher: backbone (pooled pre-logits features) + optional embedding head.

Example::

    from teachers import TEACHERS
    # a face model trained elsewhere: a file holding backbone.* and head.* (see TimmTeacher.state_dict())
    t = TEACHERS.build("timm", model_name="resnet50", weights="runs/arcface_r50.pt", embedding_dim=512)
    # or plain pooled features of timm's own pretrained weights (downloaded by timm), no head
    t = TEACHERS.build("timm", model_name="convnext_tiny", weights="pretrained", embedding_dim=None)
    emb = t.embed(faces_uint8)            # arcface_112 crops -> (B, D)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.io import safe_torch_load
from distill.preprocess import Preprocessing
from students.heads import EmbeddingHead

from .base import Teacher


class TimmTeacher(Teacher):
    """timm backbone (``num_classes=0``) + :class:`~students.heads.EmbeddingHead`, or no head
    (``embedding_dim=None``: the pooled features, optionally L2-normalised, are the embedding)."""

    def __init__(self, model_name: str, *, embedding_dim: int | None, preprocessing: Preprocessing,
                 normalize: bool = True, head_bn: bool = False, pretrained: bool = False,
                 precision: str = "fp32") -> None:
        if model_name not in timm.list_models():
            raise ValueError(f"timm has no model {model_name!r} (see timm.list_models())")
        try:
            backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
        except Exception as e:  # noqa: BLE001 - timm/HF hub raise many kinds when offline
            raise FileNotFoundError(f"timm could not fetch pretrained weights for {model_name!r} "
                                    f"({type(e).__name__}: {e}). Set teacher.weights to a local checkpoint "
                                    "file instead.") from None
        features = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        super().__init__(name=f"timm_{model_name}", preprocessing=preprocessing,
                         embedding_dim=embedding_dim or features, normalized=normalize, precision=precision)
        self.model_name = model_name
        self.backbone = backbone
        self.head: nn.Module | None = (EmbeddingHead(features, embedding_dim, bn=head_bn, normalize=normalize)
                                       if embedding_dim else None)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if self.head is not None:
            return self.head(feats)
        return F.normalize(feats, dim=1) if self.normalized else feats

    def load_checkpoint(self, path: str | Path) -> "TimmTeacher":
        """Load a file holding this teacher's state dict (``backbone.*`` + ``head.*``), or a bare timm
        backbone state dict when there is no head (classifier weights in it are ignored)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"timm teacher checkpoint {path} does not exist (teacher.weights)")
        state = safe_torch_load(path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if any(k.startswith("backbone.") for k in state):
            result = self.load_state_dict(state, strict=False)
            missing, unexpected = result.missing_keys, result.unexpected_keys
        else:
            if self.head is not None:
                raise ValueError(f"{path} holds only a {self.model_name} backbone, but this teacher has a "
                                 f"{self.embedding_dim}-D embedding head that would stay random. Save the "
                                 "whole teacher (backbone.* and head.*), or use embedding_dim=None.")
            result = self.backbone.load_state_dict(state, strict=False)
            missing = result.missing_keys
            unexpected = [k for k in result.unexpected_keys if not _is_classifier(self.backbone, k)]
        if missing or unexpected:
            raise ValueError(f"{path}: does not fit timm {self.model_name!r} with embedding_dim="
                             f"{self.embedding_dim if self.head else None}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return self


def check_timm_weights(weights: str | None) -> list[str]:
    """Problems that would stop :func:`timm_teacher` loading ``weights`` ("pretrained"/None: timm's download)."""
    if weights in (None, "pretrained") or Path(weights).is_file():
        return []
    return [f"timm teacher weights {weights} do not exist (teacher.weights)"]


def _is_classifier(backbone: nn.Module, key: str) -> bool:
    names = getattr(backbone, "pretrained_cfg", {}).get("classifier", "fc")
    names = names if isinstance(names, (list, tuple)) else [names]
    return any(key.startswith(f"{n}.") for n in names)


def timm_teacher(model_name: str = "resnet50", weights: str | Path | None = "pretrained", *,
                 embedding_dim: int | None = None, input_size: int = 112,
                 mean: Sequence[float] = (127.5, 127.5, 127.5), std: Sequence[float] = (127.5, 127.5, 127.5),
                 alignment: str = "arcface_112", normalize: bool = True, head_bn: bool = False,
                 precision: str = "fp32") -> TimmTeacher:
    """A timm teacher.

    Args:
        model_name: any ``timm.list_models()`` name.
        weights: ``"pretrained"`` (timm's own weights, downloaded by timm; only with ``embedding_dim=None``),
            a local checkpoint path, or ``None`` (random init, architecture only).
        embedding_dim: size of a linear embedding head (its weights must be in the checkpoint);
            ``None`` = the pooled backbone features are the embedding.
        input_size, mean, std, alignment: the input contract (mean/std in 0..255 units).
    """
    pre = Preprocessing(input_size, mean=tuple(mean), std=tuple(std), alignment=alignment)  # type: ignore[arg-type]
    if weights == "pretrained" and embedding_dim is not None:
        raise ValueError("timm's pretrained weights have no face embedding head: use embedding_dim=None, or a "
                         "local checkpoint holding backbone.* and head.* as teacher.weights")
    teacher = TimmTeacher(model_name, embedding_dim=embedding_dim, preprocessing=pre, normalize=normalize,
                          head_bn=head_bn, pretrained=weights == "pretrained", precision=precision)
    if weights not in (None, "pretrained"):
        teacher.load_checkpoint(weights)  # type: ignore[arg-type]
    return teacher

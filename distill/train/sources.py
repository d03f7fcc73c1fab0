"""Where training targets come from: an online teacher, or a cache of teacher embeddings.

Example::

    source = OnlineTeacher(teacher)                      # the teacher embeds each batch as drawn
    targets = source.targets(faces_uint8, indices, view_ids)   # (B, D) float32
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn as nn


class TeacherSource(Protocol):
    """``targets(uint8 faces (B,S,S,3), face indices (B,), view ids (B,)) -> (B, D)`` float32.

    ``num_views`` is None for an online teacher (a fresh view every epoch) or K for a cache.
    """

    num_views: int | None

    def targets(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        """Teacher embeddings of the given views."""
        ...


class OnlineTeacher:
    """The teacher embeds each augmented batch as drawn, in its own precision (``teacher.precision``)."""

    num_views = None

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher

    def to(self, device: torch.device) -> "OnlineTeacher":
        """Move the teacher (when it is a module) to ``device``."""
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(device)
        return self

    @torch.no_grad()
    def targets(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` float32 embeddings of ``faces`` (indices and view ids are not needed online)."""
        params = next(self.teacher.parameters(), None) if isinstance(self.teacher, nn.Module) else None
        device = params.device if params is not None else faces.device
        return self.teacher.embed(faces.to(device)).float()


def as_source(teacher_source: Any) -> Any:
    """A target source (has ``.targets``) as is; a bare teacher (has ``.embed``) as an :class:`OnlineTeacher`.

    Raises:
        TypeError: neither.
    """
    if hasattr(teacher_source, "targets"):
        return teacher_source
    if hasattr(teacher_source, "embed"):
        return OnlineTeacher(teacher_source)
    raise TypeError(f"teacher_source must be a teacher (.embed) or a target source (.targets), "
                    f"got {type(teacher_source).__name__}")

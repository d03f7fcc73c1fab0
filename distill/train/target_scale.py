"""Start the student at the teacher's output scale: standardised targets, folded back at the end.

A fresh student's BatchNorm head emits about unit variance per dimension; dlib's raw descriptors
are ~20x smaller, so a plain run first spends hundreds of steps shrinking its outputs. Here the
targets become ``(t - shift) / scale`` (``shift``: the teacher's per-dimension mean, ``scale``: one
global RMS, so every squared distance is divided by the same ``scale**2`` and the geometry the
loss matches is unchanged), and after training the inverse is folded into the student's head
(:meth:`students.heads.EmbeddingHead.fold_output_affine`): the saved student emits teacher units.

Example::

    ts = measure_target_scale(cache)                      # or an online source + views
    loss.set_target_scale(ts.shift, ts.scale)
    ... fit(...) ...
    fold_target_scale(student, ts)                        # outputs in the teacher's units again
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from distill.data.views import FaceViews


@dataclass(frozen=True)
class TargetScale:
    """``shift`` ``(D,)`` float32 in teacher units and the global ``scale`` (> 0) of the teacher's outputs."""

    shift: torch.Tensor
    scale: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the run record."""
        return {"scale": self.scale, "shift_norm": float(self.shift.norm())}


def _from_samples(t: np.ndarray) -> TargetScale:
    t = np.asarray(t, np.float64).reshape(-1, t.shape[-1])
    t = t[np.isfinite(t).all(1)]  # a broken teacher's NaN rows are the non-finite policy's business, not ours
    if not len(t):
        raise ValueError("no finite teacher output to measure the target scale on; check the teacher, or set "
                         "train.target_scale=false")
    mean = t.mean(0)
    rms = float(np.sqrt(((t - mean) ** 2).mean()))
    return TargetScale(torch.from_numpy(mean.astype(np.float32)), max(rms, 1e-12))


def measure_target_scale(source: Any, views: FaceViews | None = None, *, samples: int = 2048,
                         batch_size: int = 128, seed: int = 0) -> TargetScale:
    """The teacher's output mean and global RMS, from a teacher cache (all its rows, no teacher passes)
    or from an online source's targets of ``samples`` seeded views of ``views``."""
    embeddings = getattr(source, "embeddings", None)
    if embeddings is not None:  # a TeacherCache: (N, K, D) memmap
        return _from_samples(np.asarray(embeddings))
    if views is None:
        raise ValueError("an online teacher needs the training views to measure its output scale")
    rng = np.random.default_rng([seed, 31337])
    pos = rng.choice(len(views), min(samples, len(views)), replace=False)
    out = []
    for i in range(0, len(pos), batch_size):
        items = [views[(int(p), 0)] for p in pos[i:i + batch_size]]
        faces = torch.stack([f for f, _, _ in items])
        idx = torch.tensor([j for _, j, _ in items])
        with torch.no_grad():
            out.append(source.targets(faces, idx, torch.zeros_like(idx)).float().cpu().numpy())
    return _from_samples(np.concatenate(out))


def can_fold(student: nn.Module) -> bool:
    """Whether ``student`` has an embedding head that can absorb an output affine (raw, not normalised)."""
    head = getattr(student, "head", None)
    return hasattr(head, "fold_output_affine") and not getattr(head, "normalize", True)


def fold_target_scale(student: nn.Module, ts: TargetScale) -> nn.Module:
    """Fold the inverse standardisation into ``student``'s head (in place): outputs in teacher units again.

    Raises:
        ValueError: the student has no foldable head (see :func:`can_fold`).
    """
    if not can_fold(student):
        raise ValueError(f"{type(student).__name__} has no raw embedding head to fold the target scale into")
    student.head.fold_output_affine(ts.scale, ts.shift)
    return student


def target_scale_for(setting: bool | None, student: nn.Module, loss: Any, source: Any, views: FaceViews, *,
                     seed: int = 0) -> TargetScale | None:
    """The :class:`TargetScale` a run uses (``train.target_scale``), or None.

    ``None`` (auto): on when the loss compares raw embeddings (no normalisation), without a
    projection, and the student's head can absorb it. ``True`` where that is impossible is an error.

    Raises:
        ConfigError: ``train.target_scale=true`` but the targets are normalised, a projection is used, or
            the student has no raw embedding head.
    """
    if not target_scale_applies(setting, student, loss):
        return None
    return measure_target_scale(source, views, seed=seed)


def target_scale_applies(setting: bool | None, student: nn.Module, loss: Any) -> bool:
    """Whether :func:`target_scale_for` will standardise the targets (cheap: no data; call it before any).

    Raises:
        ConfigError: ``train.target_scale=true`` where it cannot apply (names the keys to change).
    """
    from distill.config import ConfigError

    possible = not loss.normalize and loss.projection is None and can_fold(student)
    if setting is False or (setting is None and not possible):
        return False
    if not possible:
        raise ConfigError("train.target_scale=true needs raw targets (train.loss.normalize false), no projection "
                          "(student.embedding_dim = the teacher's) and a student with a raw embedding head "
                          "(student.normalize false); set those, or train.target_scale=false or null")
    return True

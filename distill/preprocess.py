"""The one place where an aligned face becomes a model's input tensor.

Teacher and student both receive the *same* aligned face (uint8, RGB, in the
alignment template the teacher declares) and each applies its own declared
:class:`Preprocessing`: resize to its input size, then ``(x - mean) / std``.
Declaring this next to the model, and checking the template name where data
meets model (:func:`check_alignment`), is what keeps alignment and
normalisation mismatches from passing silently.

Example::

    pre = Preprocessing(input_size=112, mean=(127.5,) * 3, std=(128.0,) * 3, alignment="dlib_150")
    x = pre(faces_uint8_nhwc)          # (B, 3, 112, 112) float32
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from distill.errors import InputError

#: alignment templates the data pipeline knows how to produce (see distill.data.align)
ALIGNMENTS = ("dlib_150", "facenet_160", "arcface_112")


class AlignmentMismatchError(InputError, ValueError):
    """Data aligned for one template was about to be fed to a model expecting another."""


@dataclass(frozen=True)
class Preprocessing:
    """A model's input contract.

    Attributes:
        input_size: square side in pixels the model is fed.
        mean, std: per-channel RGB normalisation in 0..255 pixel units.
        alignment: name of the face-alignment template the model expects.
    """

    input_size: int
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    alignment: str = "dlib_150"

    def __post_init__(self) -> None:
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment template {self.alignment!r}; known: {', '.join(ALIGNMENTS)}")
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16, got {self.input_size}")

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        """uint8 or float faces, (B, H, W, 3) or (B, 3, H, W), 0..255 -> normalised (B, 3, S, S) float32."""
        if faces.ndim != 4:
            raise ValueError(f"expected a batch of images (B,H,W,3) or (B,3,H,W), got shape {tuple(faces.shape)}")
        if faces.shape[-1] == 3 and faces.shape[1] != 3:
            faces = faces.permute(0, 3, 1, 2)
        x = faces.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def with_size(self, input_size: int) -> "Preprocessing":
        """The same contract at another input size."""
        return replace(self, input_size=input_size)

    def to_dict(self) -> dict:
        """Plain-JSON form (stored in student files and exported metadata)."""
        return asdict(self)

    def fingerprint(self) -> str:
        """Stable short hash, used in cache keys."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def student_preprocessing(input_size: int, alignment: str) -> Preprocessing:
    """A student's input contract: the teacher's aligned view resized to ``input_size``, ``(x - 127.5) / 128``."""
    return Preprocessing(input_size=input_size, mean=(127.5,) * 3, std=(128.0,) * 3, alignment=alignment)


def check_alignment(data_alignment: str, model_pre: Preprocessing, who: str) -> None:
    """Raise :class:`AlignmentMismatchError` unless the data was aligned the way ``who`` expects."""
    if data_alignment != model_pre.alignment:
        raise AlignmentMismatchError(
            f"{who} expects faces aligned with template {model_pre.alignment!r} but the data was aligned "
            f"with {data_alignment!r}. Set data.alignment to {model_pre.alignment!r} (or pick a model "
            f"that expects {data_alignment!r})."
        )

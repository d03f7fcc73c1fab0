"""What a teacher is.

A teacher embeds a batch of aligned faces into ``(B, D)`` vectors, under
``torch.no_grad()`` and always in eval mode, and declares everything needed
to feed it correctly: input size, pixel normalisation and alignment template
(one :class:`~distill.preprocess.Preprocessing`), embedding dimension, and
whether its embeddings are L2-normalised.

Example: a custom teacher from any module or callable::

    from distill.preprocess import Preprocessing
    from teachers import CallableTeacher

    teacher = CallableTeacher(
        my_net,                      # (B,3,S,S) normalised float -> (B,D)
        name="my_arcface",
        preprocessing=Preprocessing(112, mean=(127.5,) * 3, std=(127.5,) * 3, alignment="arcface_112"),
        embedding_dim=512,
        normalized=True,
    )
    emb = teacher.embed(faces_uint8)  # (B,112,112,3) or any size: resized by its preprocessing
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.fingerprint import state_digest
from distill.hardware import resolve_precision
from distill.preprocess import Preprocessing

#: teacher inference precisions: bf16 = CPU autocast + channels_last (much faster on AMX CPUs, slower
#: without AMX); auto = bf16 where AMX is (distill.hardware)
PRECISIONS = ("auto", "fp32", "bf16")


class Teacher(nn.Module):
    """Base class of every teacher. Subclasses implement :meth:`forward` on preprocessed input."""

    name: str = "teacher"
    preprocessing: Preprocessing
    embedding_dim: int
    normalized: bool
    #: False for black-box teachers (precomputed embeddings) that cannot embed pixels
    can_embed: bool = True
    #: run :meth:`embed` channels_last (False where the forward may reshape its input with ``view``)
    channels_last: bool = True

    def __init__(self, *, name: str, preprocessing: Preprocessing, embedding_dim: int, normalized: bool,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.name = name
        self.preprocessing = preprocessing
        self.embedding_dim = embedding_dim
        self.normalized = normalized
        self.precision = precision

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"`` (bf16 autocast + channels_last in :meth:`embed`); ``"auto"`` set here becomes
        bf16 on AMX CPUs, else fp32 (:func:`distill.hardware.resolve_precision`)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"teacher precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
        self._precision = resolve_precision(value)
        self._channels_last = False  # the weights are converted lazily, on the first embed

    # A teacher never trains: a surrounding module's .train() must not switch on
    # dropout or batch-norm updates (FaceNet's Dropout(0.6) would ruin targets).
    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)

    @torch.no_grad()
    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned faces (uint8/float 0..255, NHWC or NCHW, any size) -> (B, D) float32 embeddings.

        Runs channels_last where :attr:`channels_last` (the weights are converted on the first call), with bf16
        autocast when :attr:`precision` is bf16."""
        self.eval()
        x = self.preprocessing(faces)
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
        if x.dim() == 4 and self.channels_last:
            # channels_last in fp32 too: 1.41x (dlib) and 1.29x (FaceNet) the NCHW rate here (BENCHMARKS.md
            # section 1, fp32 vs fp32_cl), outputs equal to fp32 NCHW within float rounding
            if not self._channels_last:
                self.to(memory_format=torch.channels_last)
                self._channels_last = True
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = x.contiguous()  # NHWC input arrives as a permuted view
        if self.precision == "bf16":
            ctx = torch.autocast(x.device.type, dtype=torch.bfloat16)
        with ctx:
            out = self(x)
        out = out.float()
        # re-normalise in fp32: a bf16 normalisation leaves norms ~1e-3 off 1
        return F.normalize(out, dim=1) if self.normalized and self.precision != "fp32" else out

    def weights_fingerprint(self) -> str:
        """Digest of the weights (cache keys must change when weights change)."""
        return state_digest(self.state_dict())

    def fingerprint(self) -> str:
        """Name + weights + preprocessing (+ precision unless fp32): what a cache of its outputs is keyed by."""
        suffix = "" if self.precision == "fp32" else f"-{self.precision}"
        return f"{self.name}-{self.weights_fingerprint()}-{self.preprocessing.fingerprint()}{suffix}"


class CallableTeacher(Teacher):
    """Wrap any ``nn.Module`` or callable that maps preprocessed (B,3,S,S) input to (B,D)."""

    channels_last = False  # the user's code may ``view`` its input: it gets plain NCHW tensors

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, name: str, preprocessing: Preprocessing,
                 embedding_dim: int, normalized: bool, precision: str = "fp32") -> None:
        super().__init__(name=name, preprocessing=preprocessing, embedding_dim=embedding_dim, normalized=normalized,
                         precision=precision)
        self.fn = fn  # registered as a submodule when it is an nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def weights_fingerprint(self) -> str:
        """Digest of the wrapped module's weights, or of the callable's repr."""
        if isinstance(self.fn, nn.Module):
            return super().weights_fingerprint()
        return hashlib.sha256(repr(self.fn).encode()).hexdigest()[:16]

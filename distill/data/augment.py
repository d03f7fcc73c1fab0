"""Seeded augmentation of aligned faces (albumentations), plugged into :class:`~distill.data.views.FaceViews`.

``build_augmentation(settings)`` returns ``augment(image_uint8_hwc, seed) -> uint8 image`` of
the same size, a pure function of ``(image, seed)``, or None when every option is off.
A horizontal flip mirrors the whole aligned crop: the alignment templates are
left/right symmetric, so a flipped face is still a face in the same template.

Example::

    augment = build_augmentation(cfg.data.augment)
    views = FaceViews(aligned, augment=augment, seed=cfg.seed)
    out = augment(face, 1234)            # same seed -> same pixels
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import albumentations as A
import cv2
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from distill.config import AugmentSettings
    from distill.data.views import Mix


class Augment:
    """A deterministic albumentations pipeline: ``augment(image, seed)``.

    Not thread-safe (the pipeline's generator is reseeded per call); each
    DataLoader worker process holds its own copy, which is fine.
    """

    def __init__(self, transforms: list[A.BasicTransform], description: dict[str, float]) -> None:
        self.compose = A.Compose(transforms, seed=0)
        self.description = description

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"augment expects a uint8 (H,W,3) image, got {image.dtype} {image.shape}")
        self.compose.set_random_seed(int(seed) & 0xFFFFFFFF)
        out = self.compose(image=np.ascontiguousarray(image))["image"]
        return np.ascontiguousarray(out, dtype=np.uint8)

    def __repr__(self) -> str:
        return f"Augment({self.description})"


def build_augmentation(settings: "AugmentSettings") -> Augment | None:
    """An :class:`Augment` for the non-zero options of ``settings``; None when all are zero.

    Options (see ``distill.config.AugmentSettings``): magnitudes ``shift_scale``,
    ``rotate`` (degrees), ``brightness_contrast``; probabilities ``hflip``,
    ``hue_saturation``, ``grayscale``, ``blur``, ``noise``, ``jpeg``, ``cutout``.
    """
    s = settings
    t: list[A.BasicTransform] = []
    if s.hflip > 0:
        t.append(A.HorizontalFlip(p=s.hflip))
    if s.shift_scale > 0 or s.rotate > 0:
        # reflect the border: a black wedge would be a cue the teacher never saw in real crops
        t.append(A.Affine(scale=(1 - s.shift_scale, 1 + s.shift_scale),
                          translate_percent=(-s.shift_scale, s.shift_scale),
                          rotate=(-s.rotate, s.rotate), border_mode=cv2.BORDER_REFLECT_101, p=1.0))
    if s.brightness_contrast > 0:
        t.append(A.RandomBrightnessContrast(brightness_limit=s.brightness_contrast,
                                            contrast_limit=s.brightness_contrast, p=1.0))
    if s.hue_saturation > 0:
        t.append(A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=10,
                                      p=s.hue_saturation))
    if s.grayscale > 0:
        t.append(A.ToGray(num_output_channels=3, p=s.grayscale))
    if s.blur > 0:
        t.append(A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0), A.MotionBlur(blur_limit=(3, 7), p=1.0)],
                         p=s.blur))
    if s.noise > 0:
        t.append(A.GaussNoise(std_range=(0.01, 0.05), p=s.noise))
    if s.jpeg > 0:
        t.append(A.ImageCompression(quality_range=(40, 90), p=s.jpeg))
    if s.cutout > 0:
        t.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, 0.3),
                                 hole_width_range=(0.1, 0.3), fill=0, p=s.cutout))
    if not t:
        return None
    # the description keys teacher caches: only what draws pixels (clean_view0 is keyed by the views themselves)
    return Augment(t, {k: float(v) for k, v in s.model_dump(exclude={"clean_view0"}).items()})


def build_mix(settings: "AugmentSettings") -> "Mix | None":
    """The :class:`~distill.data.views.Mix` of ``settings.mixup`` / ``settings.cutmix``, or None when both are 0."""
    from distill.data.views import Mix

    mix = Mix(mixup=settings.mixup, cutmix=settings.cutmix)
    return mix if mix.active else None

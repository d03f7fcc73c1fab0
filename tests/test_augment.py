"""Seeded augmentation: deterministic per seed, shape/dtype kept, whole-image flips, off means off."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from distill.config import AugmentSettings
from distill.data.augment import build_augmentation
from distill.data.views import FaceViews

OFF = dict(hflip=0, shift_scale=0, rotate=0, brightness_contrast=0, hue_saturation=0, grayscale=0, blur=0,
           noise=0, jpeg=0, cutout=0)
ALL_ON = dict(hflip=0.5, shift_scale=0.1, rotate=10, brightness_contrast=0.3, hue_saturation=0.5, grayscale=0.3,
              blur=0.5, noise=0.5, jpeg=0.5, cutout=0.5)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    img[30:50, 20:45] = (220, 40, 40)  # an asymmetric patch so flips are visible
    return img


def test_deterministic_per_seed_and_varies_across_seeds(face: np.ndarray) -> None:
    aug = build_augmentation(AugmentSettings(**ALL_ON))
    assert aug is not None
    a, b = aug(face, 17), aug(face, 17)
    assert np.array_equal(a, b)
    outs = [aug(face, s) for s in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    assert np.array_equal(aug(face, 17), a)  # other calls in between do not change seed 17's output
    clone = pickle.loads(pickle.dumps(aug))  # DataLoader workers get a copy
    assert np.array_equal(clone(face, 17), a)
    assert np.array_equal(face, FaceViews(face[None].copy())[(0, 0)][0].numpy())  # input not modified


@pytest.mark.parametrize("size", [112, 150, 160])
def test_shape_and_dtype_kept(size: int) -> None:
    img = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    aug = build_augmentation(AugmentSettings(**ALL_ON))
    for seed in range(6):
        out = aug(img, seed)
        assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous


def test_all_off_is_none_and_views_return_the_face(face: np.ndarray) -> None:
    assert build_augmentation(AugmentSettings(**OFF)) is None
    views = FaceViews(face[None].copy(), augment=build_augmentation(AugmentSettings(**OFF)))
    assert np.array_equal(views[(0, 5)][0].numpy(), face)


def test_probability_zero_options_do_nothing(face: np.ndarray) -> None:
    # only a zero-probability option besides a certain flip: output is exactly the flip
    aug = build_augmentation(AugmentSettings(**{**OFF, "hflip": 1.0}))
    for seed in range(3):
        assert np.array_equal(aug(face, seed), face[:, ::-1])


def test_flip_mirrors_the_whole_image(face: np.ndarray) -> None:
    aug = build_augmentation(AugmentSettings(**{**OFF, "hflip": 0.5}))
    outs = [aug(face, s) for s in range(20)]
    flipped = [np.array_equal(o, face[:, ::-1]) for o in outs]
    kept = [np.array_equal(o, face) for o in outs]
    assert all(f or k for f, k in zip(flipped, kept)) and 3 <= sum(flipped) <= 17


def test_rejects_wrong_input(face: np.ndarray) -> None:
    aug = build_augmentation(AugmentSettings())
    with pytest.raises(ValueError, match="uint8"):
        aug(face.astype(np.float32), 0)


def test_works_inside_face_views(face: np.ndarray) -> None:
    faces = np.stack([face, face[::-1]])
    views = FaceViews(faces, augment=build_augmentation(AugmentSettings()), seed=3, clean_view0=True)
    assert np.array_equal(views[(1, 0)][0].numpy(), faces[1])
    v1, v1b = views[(1, 1)][0].numpy(), views[(1, 1)][0].numpy()
    assert np.array_equal(v1, v1b) and not np.array_equal(v1, faces[1])


def test_mixed_views_are_deterministic_two_face_blends() -> None:
    import numpy as np

    from distill.data.views import FaceViews, Mix

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    views = FaceViews(faces, None, seed=3, mix=Mix(mixup=0.5, cutmix=0.5))
    a = [views.view(i, v) for i in range(6) for v in range(4)]
    b = [FaceViews(faces, None, seed=3, mix=Mix(mixup=0.5, cutmix=0.5)).view(i, v) for i in range(6) for v in range(4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # a pure function of (seed, face, view)
    mixed = sum(not np.array_equal(views.view(i, v), faces[i]) for i in range(6) for v in range(4))
    assert mixed == 24  # every view mixes at probability 1
    only = FaceViews(faces, None, seed=3, mix=Mix(cutmix=1.0))
    out = only.view(0, 1)
    assert np.array_equal(out, faces[0]) is False and ((out == faces[0]).all(-1)).mean() >= 0.2  # a pasted box
    assert FaceViews(faces, None, seed=3, mix=Mix()).mix is None

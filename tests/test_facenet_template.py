"""facenet_160 geometry: Sandberg's align_dataset_mtcnn crop (margin in original-image pixels)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distill.data import templates as tpl
from distill.data.templates import (FACENET_160_MARGIN, TEMPLATE_VERSION, Face, chip_matrix, crop_face,
                                    sandberg_crop, sandberg_crop_box)
from distill.preprocess import ALIGNMENTS


def _ramp(h: int, w: int) -> np.ndarray:
    """Red = column, green = row: a pixel's value says where it came from."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    img[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
    return img


def _mtcnn_face(box: np.ndarray) -> Face:
    x1, y1, x2, y2 = box
    pts = np.array([[x1 + 0.3 * (x2 - x1), y1 + 0.4 * (y2 - y1)], [x1 + 0.7 * (x2 - x1), y1 + 0.4 * (y2 - y1)],
                    [(x1 + x2) / 2, y1 + 0.6 * (y2 - y1)], [x1 + 0.35 * (x2 - x1), y1 + 0.8 * (y2 - y1)],
                    [x1 + 0.65 * (x2 - x1), y1 + 0.8 * (y2 - y1)]])
    return Face("mtcnn5", pts, np.asarray(box, np.float64))


def test_crop_box_is_sandbergs():
    assert FACENET_160_MARGIN == 32
    # bb = box -/+ margin/2, truncated to int as np.int32 does
    assert sandberg_crop_box(np.array([50.4, 60.7, 150.2, 190.9]), (250, 250, 3)) == (34, 44, 166, 206)
    # clipped to the image
    assert sandberg_crop_box(np.array([5.0, 3.0, 240.0, 249.0]), (250, 300, 3)) == (0, 0, 256, 250)
    with pytest.raises(ValueError, match="outside the 250x250 image"):
        sandberg_crop_box(np.array([300.0, 300.0, 400.0, 400.0]), (250, 250, 3))


def test_margin_is_in_original_pixels():
    """The same face in a 2x larger image gets twice the box but the same 32 px of margin."""
    box = np.array([60.0, 50.0, 160.0, 180.0])
    x1, y1, x2, y2 = sandberg_crop_box(box, (250, 250, 3))
    X1, Y1, X2, Y2 = sandberg_crop_box(2 * box, (500, 500, 3))
    assert (x2 - x1, y2 - y1) == (100 + 32, 130 + 32)
    assert (X2 - X1, Y2 - Y1) == (200 + 32, 260 + 32)


def test_crop_is_pil_bilinear_of_the_box_and_matches_chip_matrix():
    img = _ramp(250, 250)
    box = np.array([70.2, 40.9, 180.6, 200.1])  # 110 x 159 px: stretched onto 160 x 160, as Sandberg does
    face = _mtcnn_face(box)
    chip = crop_face(img, face, "facenet_160")
    assert chip.shape == (160, 160, 3) and chip.dtype == np.uint8 and chip.flags.writeable
    assert np.array_equal(chip, sandberg_crop(img, box))
    x1, y1, x2, y2 = sandberg_crop_box(box, img.shape)
    ref = np.asarray(Image.fromarray(img[y1:y2, x1:x2]).resize((160, 160), Image.BILINEAR))
    assert np.array_equal(chip, ref)
    # chip_matrix maps image coordinates to chip pixels: chip pixel (u, v) shows image (x, y) = M^-1 (u, v)
    inv = tpl.invert_affine(chip_matrix(face, "facenet_160", img.shape))
    u = np.arange(4, 156)
    xy = tpl.apply_affine(inv, np.stack([u, u], 1))
    assert np.abs(chip[80, 4:156, 0] - xy[:, 0]).max() <= 1.0   # red = image column
    assert np.abs(chip[4:156, 80, 1] - xy[:, 1]).max() <= 1.0   # green = image row
    # the landmarks land where the matrix says
    pts = tpl.apply_affine(chip_matrix(face, "facenet_160", img.shape), face.points)
    assert np.all((pts > 0) & (pts < 160))


def test_template_versions_cover_every_template():
    assert set(TEMPLATE_VERSION) == set(ALIGNMENTS)
    assert TEMPLATE_VERSION["facenet_160"] == 2 and TEMPLATE_VERSION["dlib_150"] == TEMPLATE_VERSION["arcface_112"] == 1


def test_real_lfw_face_is_centred_in_the_chip(lfw_root):
    """On a real LFW image, MTCNN's eyes land in the upper half of the chip, the mouth below them."""
    from distill.data.align import MTCNNLandmarker
    from distill.data.imageio import load_rgb

    img = load_rgb(lfw_root / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    face = MTCNNLandmarker().detect([img])[0].face
    pts = tpl.apply_affine(chip_matrix(face, "facenet_160", img.shape), face.points)
    assert 40 < pts[0, 0] < 80 < pts[1, 0] < 120           # eyes either side of the centre
    assert 40 < pts[0, 1] < 80 and pts[3, 1] > pts[2, 1] > pts[0, 1] + 15
    assert crop_face(img, face, "facenet_160").shape == (160, 160, 3)

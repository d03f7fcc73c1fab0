"""Alignment benchmark and the derivation of the cross-backend constants in distill.data.align.

Subcommands::

    # align all of LFW with one backend (resumable via the cache), report images/s and fallbacks
    .venv/bin/python -m benchmarks.alignment run --backend mtcnn --template dlib_150
    # ... and compare dlib's ResNet on pairsDevTest.txt with MTCNN-made vs dlib-made dlib_150 chips
    .venv/bin/python -m benchmarks.alignment run --backend mtcnn --teacher-check
    # re-derive MTCNN_IN_DLIB150 / MTCNN_BOX_IN_DLIB150 / LFW_MTCNN_* (prints Python constants)
    .venv/bin/python -m benchmarks.alignment derive --n 400 --seed 0
    # large photos (1500-3000 px scenes made from LFW): reference vs today's detection, 1 process vs workers;
    # the BENCHMARKS.md section `alignment` (python -m benchmarks --sections alignment) runs the same
    .venv/bin/python -m benchmarks.alignment large --n 200 --repeats 2

LFW is read in place from ../shared/data/lfw (or --lfw). The large-photo set is generated once (seeded,
~0.5 s an image) into .cache/facedistill/bench/ and re-used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_LFW = Path(os.environ.get("FACEDISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "lfw"


# --------------------------------------------------------------------------- LFW helpers
def lfw_images(lfw: Path) -> list[str]:
    """All LFW image paths relative to lfw-deepfunneled/, sorted."""
    base = lfw / "lfw-deepfunneled"
    return sorted(str(p.relative_to(base)) for p in base.glob("*/*.jpg"))


def read_pairs(path: Path) -> list[tuple[str, str, bool]]:
    """LFW pairs file -> (rel_path_a, rel_path_b, same) with paths relative to lfw-deepfunneled/."""
    def rel(name: str, i: str) -> str:
        return f"{name}/{name}_{int(i):04d}.jpg"

    out = []
    for line in Path(path).read_text().splitlines()[1:]:
        f = line.split()
        if len(f) == 3:
            out.append((rel(f[0], f[1]), rel(f[0], f[2]), True))
        elif len(f) == 4:
            out.append((rel(f[0], f[1]), rel(f[2], f[3]), False))
    return out


def sample_pairs(pairs: list[tuple[str, str, bool]], n: int, seed: int) -> list[tuple[str, str, bool]]:
    """A seeded, balanced sample of ``n`` pairs (half same, half different)."""
    rng = np.random.default_rng(seed)
    same = [p for p in pairs if p[2]]
    diff = [p for p in pairs if not p[2]]
    pick = lambda xs, k: [xs[i] for i in sorted(rng.choice(len(xs), min(k, len(xs)), replace=False))]  # noqa: E731
    return pick(same, n // 2) + pick(diff, n - n // 2)


def cv_accuracy(dist: np.ndarray, same: np.ndarray, folds: int = 10, seed: int = 0) -> tuple[float, float]:
    """Verification accuracy with the distance threshold chosen on the other folds: (mean, std) in %."""
    dist, same = np.asarray(dist, np.float64), np.asarray(same, bool)
    order = np.random.default_rng(seed).permutation(len(dist))
    parts = np.array_split(order, folds)
    accs = []
    for k in range(folds):
        test = parts[k]
        train = np.concatenate([parts[j] for j in range(folds) if j != k])
        cands = np.unique(dist[train])
        acc_train = [((dist[train] <= t) == same[train]).mean() for t in cands]
        t = cands[int(np.argmax(acc_train))]
        accs.append(((dist[test] <= t) == same[test]).mean())
    return 100 * float(np.mean(accs)), 100 * float(np.std(accs))


def threshold_accuracy(dist: np.ndarray, same: np.ndarray, threshold: float = 0.6) -> float:
    """Accuracy (%) of the fixed rule ``same iff distance <= threshold`` (dlib's 0.6)."""
    return 100 * float(((np.asarray(dist) <= threshold) == np.asarray(same, bool)).mean())


def dlib_embedder(precision: str = "fp32"):
    """The dlib face ResNet: ``teachers`` registry if it builds, else dlib itself. Returns (fn, name)."""
    try:
        import torch
        from teachers import TEACHERS

        teacher = TEACHERS.build("dlib_resnet", precision=precision)

        def embed(faces: np.ndarray) -> np.ndarray:
            out = [teacher.embed(torch.from_numpy(np.array(faces[a:a + 64])))  # copy: memmaps are read-only
                   for a in range(0, len(faces), 64)]
            return torch.cat(out).numpy() if out else np.zeros((0, teacher.embedding_dim), np.float32)

        return embed, f"teachers.dlib_resnet ({precision})"
    except Exception as e:  # noqa: BLE001 - fall back to the same network through dlib
        print(f"(teachers.dlib_resnet unavailable: {type(e).__name__}: {e}; using dlib directly)", file=sys.stderr)
        import dlib
        import face_recognition_models as frm

        net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

        def embed(faces: np.ndarray) -> np.ndarray:
            return np.array(net.compute_face_descriptor([np.ascontiguousarray(f) for f in faces]), np.float64)

        return embed, "dlib.face_recognition_model_v1"


def pair_distances(emb: dict[str, np.ndarray], pairs: Sequence[tuple[str, str, bool]]) -> np.ndarray:
    return np.array([np.linalg.norm(emb[a] - emb[b]) for a, b, _ in pairs])


def teacher_comparison(lfw: Path, pairs: Sequence[tuple[str, str, bool]], cache_dir: Path,
                       progress: bool = True) -> dict:
    """dlib ResNet accuracy on ``pairs`` with dlib_150 chips from dlib landmarks vs from MTCNN landmarks.

    Only pairs where both backends found both faces are scored (the comparison is about the
    landmark mapping, not detection); the count of such pairs is reported.
    """
    from distill.data.align import align_images

    root = lfw / "lfw-deepfunneled"
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    embed, name = dlib_embedder()
    res: dict = {"embedder": name, "pairs": len(pairs)}
    embs, found = {}, {}
    for backend in ("dlib", "mtcnn"):
        af = align_images(root, paths, template="dlib_150", backend=backend, cache_dir=cache_dir,
                          no_face="skip", progress=progress)
        e = embed(np.asarray(af.faces))
        embs[backend] = dict(zip(af.rel_paths, e))
        found[backend] = set(af.rel_paths)
        res[f"{backend}_skipped"] = len(af.record.skipped)
    both = [p for p in pairs if all(x in found["dlib"] and x in found["mtcnn"] for x in p[:2])]
    same = np.array([p[2] for p in both])
    res["pairs_scored"] = len(both)
    for backend in ("dlib", "mtcnn"):
        d = pair_distances(embs[backend], both)
        m, s = cv_accuracy(d, same)
        res[backend] = {"cv_accuracy": m, "cv_std": s, "accuracy_at_0.6": threshold_accuracy(d, same)}
    return res


# --------------------------------------------------------------------------- large photos
#: the large-photo set: seeded scenes of 1500-3000 px (longer side) holding one upscaled LFW image
#: (sometimes a second, smaller one), JPEG quality 90: 150-400 KB files like a user's own photos
LARGE_SIDES = (1500, 3000)
LARGE_QUALITY = 90
LARGE_VERSION = 1  # bump when the generator's output changes (regenerates the cached set)


def _noise_field(rng: np.random.Generator, h: int, w: int, cell: int, amp: float) -> np.ndarray:
    """Smooth random texture ``(h, w, 3)`` float32: normal noise on a ``cell``-px grid, cubic-upscaled."""
    import cv2

    small = rng.normal(0, 1, (max(2, h // cell), max(2, w // cell), 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * amp


def large_scene(tiles: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One scene: a textured background with ``tiles`` (250x250 LFW images) upscaled and pasted in.

    The first tile is the main face (1.2-6x, anywhere in the frame); a second one, if given, is
    0.4-0.9x its size and does not overlap it. Returns the uint8 ``(H, W, 3)`` scene and, per tile,
    ``{"scale", "x", "y", "side"}`` (a tile pixel ``p`` lands at ``p * scale + (x, y)``; ``side`` px square).
    """
    import cv2

    long = int(rng.integers(LARGE_SIDES[0], LARGE_SIDES[1] + 1))
    w, h = long, int(round(long / float(rng.choice([4 / 3, 3 / 2, 16 / 9]))))
    if rng.random() < 0.3:  # portrait orientation
        w, h = h, w
    # low-, mid- and fine-frequency texture; fine detail is what sets the JPEG size (less on big scenes)
    img = (rng.uniform(40, 200, 3).astype(np.float32) + _noise_field(rng, h, w, 400, 40)
           + _noise_field(rng, h, w, 60, 15) + _noise_field(rng, h, w, 12, 4 * min(1.0, 2000 / long)))
    placed: list[dict] = []
    for k, tile in enumerate(tiles):
        if k == 0:
            hi = min(6.0, 0.9 * min(w, h) / tile.shape[0])
            scale = float(np.exp(rng.uniform(np.log(1.2), np.log(hi))))
        else:
            scale = placed[0]["scale"] * float(rng.uniform(0.4, 0.9))
        s = int(round(tile.shape[0] * scale))
        for _ in range(20):  # a free spot for the second tile (the first always fits)
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if all(x + s <= p["x"] or p["x"] + p["side"] <= x or y + s <= p["y"] or p["y"] + p["side"] <= y
                   for p in placed):
                break
        else:
            continue
        img[y:y + s, x:x + s] = cv2.resize(tile, (s, s), interpolation=cv2.INTER_CUBIC)
        placed.append({"scale": s / tile.shape[0], "x": x, "y": y, "side": s})
    img += _noise_field(rng, h, w, 2, 1.0)  # sensor-like grain over everything
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), placed


def make_large_photos(lfw: Path, out_dir: Path, n: int, seed: int = 0, progress: bool = True) -> Path:
    """The first ``n`` scenes of the seeded large-photo set, generated into ``out_dir`` once.

    Scene ``i`` depends only on ``(seed, i)`` and the LFW list, so a bigger ``n`` extends a smaller
    set. Files: ``<folder>/NNNNN.jpg`` plus ``manifest.json`` (per scene: size, bytes, LFW sources and
    placements). Written atomically, one by one: an interrupted call resumes. Returns the folder.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from distill.io import atomic_write, atomic_write_json

    folder = Path(out_dir) / f"large_photos-v{LARGE_VERSION}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    man_path = folder / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {"scenes": {}}
    paths = lfw_images(lfw)
    order = np.random.default_rng(seed).permutation(len(paths))
    todo = [i for i in range(n) if f"{i:05d}.jpg" not in manifest["scenes"] or not (folder / f"{i:05d}.jpg").exists()]
    for i in tqdm(todo, desc="large photos", unit="img", disable=not progress or not todo):
        rng = np.random.default_rng([seed, i])
        src = [paths[order[i % len(paths)]]]
        if rng.random() < 0.25:  # a second person in the frame
            src.append(paths[order[(i + len(paths) // 2) % len(paths)]])
        tiles = [np.asarray(Image.open(lfw / "lfw-deepfunneled" / p).convert("RGB")) for p in src]
        scene, placed = large_scene(tiles, rng)
        name = f"{i:05d}.jpg"
        atomic_write(folder / name, lambda f: Image.fromarray(scene).save(f, "JPEG", quality=LARGE_QUALITY))
        manifest["scenes"][name] = {"width": scene.shape[1], "height": scene.shape[0],
                                    "bytes": (folder / name).stat().st_size,
                                    "tiles": [{"source": s, **p} for s, p in zip(src, placed)]}
        if len(manifest["scenes"]) % 50 == 0:
            atomic_write_json(man_path, manifest)
    atomic_write_json(man_path, manifest)
    return folder


# --------------------------------------------------------------------------- large-photo speed
#: the goal of the large-photo work: aligned images/s at least this many times the reference's, same run
LARGE_SPEEDUP_GOAL = 4.0


def reference_landmarker(backend: str) -> Any:
    """The detection of distill.data.align before its coarse passes (commit 9870257), for baselines and
    comparisons: one copy of at most DETECT_MAX_SIDE px (cv2 ``INTER_AREA``); dlib upsample 1, then 2."""
    import cv2

    from distill.data import align
    from distill.data.templates import Face, select_face

    def copy(img: np.ndarray) -> tuple[np.ndarray, float]:
        side = max(img.shape[:2])
        if side <= align.DETECT_MAX_SIDE:
            return img, 1.0
        f = align.DETECT_MAX_SIDE / side
        small = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        return small, img.shape[1] / small.shape[1]

    class ReferenceDlib(align.DlibLandmarker):
        def _one(self, img: np.ndarray) -> align.Detection:
            small, f = copy(img)
            upsampled = False
            rects = self.detector(small, 1)
            if len(rects) == 0:
                rects, upsampled = self.detector(small, 2), True
            if len(rects) == 0:
                return align.Detection(None, 0)
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64) * f
            i = select_face(boxes, img.shape)
            x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
            shape = self.predictor(img, self._dlib.rectangle(x1, y1, x2, y2))
            pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
            return align.Detection(Face("dlib5", pts, boxes[i]), len(rects), upsampled)

    class ReferenceMTCNN(align.MTCNNLandmarker):
        def _detect(self, images: Sequence[np.ndarray]) -> list[align.Detection]:
            out: list[Any] = [None] * len(images)
            smalls = [copy(img) for img in images]
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, (s, _) in enumerate(smalls):
                if min(s.shape[:2]) < self.mtcnn.min_face_size:
                    out[i] = align.Detection(None, 0)
                    continue
                groups.setdefault(s.shape, []).append(i)
            for idx in groups.values():
                boxes, probs, points = self.mtcnn.detect(np.stack([smalls[i][0] for i in idx]), landmarks=True)
                for j, i in enumerate(idx):
                    if boxes[j] is None or len(boxes[j]) == 0:
                        out[i] = align.Detection(None, 0)
                        continue
                    f = smalls[i][1]
                    b = np.asarray(boxes[j], np.float64) * f
                    k = select_face(b, images[i].shape)
                    pts = np.asarray(points[j][k], np.float64) * f
                    out[i] = align.Detection(Face("mtcnn5", pts, b[k], float(probs[j][k])), len(b))
            return out

    return ReferenceDlib() if backend == "dlib" else ReferenceMTCNN()


class Recording:
    """Wraps a landmarker and keeps every Detection it returns, in call order (in-process runs only)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.detections = inner, []

    def detect(self, images: Sequence[np.ndarray]) -> list:
        out = self.inner.detect(images)
        self.detections += out
        return out


#: batches of this many images in the large-photo runs (all variants): 200 images in batches of 32 would be
#: 7 tasks, and the last one would leave a worker idle for a sizeable share of such a short run
LARGE_BATCH = 8


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its children that have been waited for."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _burn(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def parallel_capacity(workers: int, n: int = 3_000_000) -> float:
    """How many times faster ``workers`` forked processes finish ``workers`` equal CPU-bound jobs than one
    process doing them in turn, now: ~``workers`` on idle cores, 1.0 when other users' work fills them."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    for _ in range(workers):
        _burn(n)
    serial = time.perf_counter() - t0
    with mp.get_context("fork").Pool(workers) as pool:
        t0 = time.perf_counter()
        pool.map(_burn, [n] * workers)
        parallel = time.perf_counter() - t0
    return serial / parallel


def _timed_align(root: Path, paths: list[str], backend: str, landmarker: Any, workers: int,
                 cache: Path, progress: bool) -> tuple[float, float, Any]:
    """Wall and CPU seconds (workers included) to align ``paths`` (dlib_150) into the empty cache ``cache``,
    and the AlignedFaces."""
    from distill.data.align import align_images

    t0, c0 = time.perf_counter(), _cpu_seconds()
    af = align_images(root, paths, template="dlib_150", backend=backend, cache_dir=cache, landmarker=landmarker,
                      workers=workers, progress=progress, batch_size=LARGE_BATCH)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    assert af.record.decoded == len(paths), af.record.summary()  # a fresh cache: every image was aligned
    return wall, cpu, af


def compare_detections(ref: Sequence[Any], new: Sequence[Any], ref_faces: np.ndarray,
                       new_faces: np.ndarray) -> dict[str, Any]:
    """How the new detections differ from the reference ones, image by image (same images, same order).

    Same face = each box's centre lies inside the other box (detections of one face at different scales
    can differ in size by 1.6x). Landmark difference: mean over the 5 points, in image px and in % of the
    reference box width. Chip difference: mean absolute difference of the uint8 dlib_150 chips.
    """
    def same_face(a: np.ndarray, b: np.ndarray) -> bool:
        inside = lambda p, q: q[0] <= (p[0] + p[2]) / 2 <= q[2] and q[1] <= (p[1] + p[3]) / 2 <= q[3]  # noqa: E731
        return inside(a, b) and inside(b, a)

    res: dict[str, Any] = {"images": len(ref), "both_found": 0, "only_reference": 0, "only_new": 0,
                           "neither": 0, "other_face": 0}
    px, rel, chip = [], [], []
    for k, (r, n) in enumerate(zip(ref, new)):
        if r.face is None or n.face is None:
            res["neither" if r.face is n.face else ("only_reference" if n.face is None else "only_new")] += 1
            continue
        res["both_found"] += 1
        if not same_face(r.face.box, n.face.box):
            res["other_face"] += 1
            continue
        d = float(np.linalg.norm(r.face.points - n.face.points, axis=1).mean())
        px.append(d)
        rel.append(100 * d / (r.face.box[2] - r.face.box[0]))
        chip.append(float(np.abs(ref_faces[k].astype(np.int16) - new_faces[k]).mean()))
    q = lambda xs: {"median": float(np.median(xs)), "p90": float(np.percentile(xs, 90)), "max": float(np.max(xs))} \
        if xs else None  # noqa: E731
    res.update(same_face=len(px), landmark_px=q(px), landmark_pct_of_box=q(rel), chip_mean_abs_diff=q(chip),
               chips_identical=int(sum(c == 0 for c in chip)))
    return res


def full_resolution_check(folder: Path, names: Sequence[str], backend: str) -> dict[str, Any]:
    """Reference and today's detections against detection on the full-resolution image, on ``names``.

    Full resolution: dlib at upsampling 0 on the image itself (faces of 80 px and more; the main faces of
    the set are larger), MTCNN on the image itself with an 80 px minimum face (its own 20 px would scan a
    pyramid of several times the image). Slow (seconds an image): for a sample. Landmark errors are the mean
    over the 5 points, in px and in % of the full-resolution box width; a face other than the full-resolution
    one (box centre outside its box) is counted, not measured.
    """
    from distill.data.align import make_landmarker
    from distill.data.imageio import load_rgb
    from distill.data.templates import Face, select_face

    lm_new, lm_ref = make_landmarker(backend), reference_landmarker(backend)

    def full(img: np.ndarray) -> Any:
        if backend == "dlib":
            rects = lm_new.detector(img, 0)
            if len(rects) == 0:
                return None
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64)
            box = boxes[select_face(boxes, img.shape)]
            shape = lm_new.predictor(img, lm_new._dlib.rectangle(*(int(round(v)) for v in box)))
            return Face("dlib5", np.array([[p.x, p.y] for p in shape.parts()], np.float64), box)
        mt = lm_new.mtcnn
        saved, mt.min_face_size = mt.min_face_size, 80
        try:
            boxes, _, points = mt.detect(img[None], landmarks=True)
        finally:
            mt.min_face_size = saved
        if boxes[0] is None or len(boxes[0]) == 0:
            return None
        k = select_face(np.asarray(boxes[0], np.float64), img.shape)
        return Face("mtcnn5", np.asarray(points[0][k], np.float64), np.asarray(boxes[0][k], np.float64))

    errs: dict[str, list[float]] = {"reference": [], "new": []}
    px: dict[str, list[float]] = {"reference": [], "new": []}
    other = {"reference": 0, "new": 0}
    missing = 0
    for name in names:
        img = load_rgb(folder / name)
        truth = full(img)
        if truth is None:
            missing += 1
            continue
        width = truth.box[2] - truth.box[0]
        for kind, lm in (("reference", lm_ref), ("new", lm_new)):
            face = lm.detect([img])[0].face
            b = truth.box
            if face is None or not (b[0] < (face.box[0] + face.box[2]) / 2 < b[2] and
                                    b[1] < (face.box[1] + face.box[3]) / 2 < b[3]):
                other[kind] += 1
                continue
            px[kind].append(float(np.linalg.norm(face.points - truth.points, axis=1).mean()))
            errs[kind].append(100 * px[kind][-1] / width)
    q = lambda xs: {"median": float(np.median(xs)), "p90": float(np.percentile(xs, 90)), "mean": float(np.mean(xs))} \
        if xs else None  # noqa: E731
    return {"images": len(names), "no_full_resolution_face": missing, "other_face": other,
            "landmark_px": {k: q(v) for k, v in px.items()},
            "landmark_pct_of_box": {k: q(v) for k, v in errs.items()}}


def lfw_identical(lfw: Path, backend: str, n: int, seed: int = 0) -> dict[str, Any]:
    """Are dlib_150 chips of ``n`` seeded LFW images byte-identical between the reference detection and today's?"""
    import tempfile

    from distill.data.align import align_images

    paths = lfw_images(lfw)
    pick = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), n, replace=False))]
    root = lfw / "lfw-deepfunneled"
    with tempfile.TemporaryDirectory() as tmp:
        ref = align_images(root, pick, template="dlib_150", backend=backend, cache_dir=Path(tmp) / "ref",
                           landmarker=reference_landmarker(backend), progress=False)
        new = align_images(root, pick, template="dlib_150", backend=backend, cache_dir=Path(tmp) / "new",
                           progress=False)
        same = ref.rel_paths == new.rel_paths and np.array_equal(np.asarray(ref.faces), np.asarray(new.faces))
    return {"images": n, "identical": bool(same)}


def bench_large(lfw: Path = DEFAULT_LFW, *, n: int = 200, n_mtcnn: int = 80, repeats: int = 2,
                workers: int | None = None, lfw_n: int = 200, backends: Sequence[str] = ("dlib", "mtcnn"),
                set_dir: Path = Path(".cache/facedistill/bench"), log: Any = print,
                progress: bool = False) -> dict[str, Any]:
    """Alignment speed on the large-photo set: the reference detection vs today's, in-process and with
    ``workers`` processes, each run into an empty cache; runs interleaved (ABC, then CBA) ``repeats`` times.

    Also compares today's detections with the reference ones (first repeat) and checks that LFW chips are
    byte-identical. Returns a JSON-able dict (see :func:`to_markdown`).
    """
    import tempfile

    from distill.data.align import make_landmarker

    workers = workers or max(2, min(8, len(os.sched_getaffinity(0))))
    folder = make_large_photos(lfw, set_dir, max(n, n_mtcnn), progress=progress)
    scenes = json.loads((folder / "manifest.json").read_text())["scenes"]
    names = sorted(scenes)[: max(n, n_mtcnn)]
    kb = np.array([scenes[k]["bytes"] for k in names]) / 1024
    sides = np.array([max(scenes[k]["width"], scenes[k]["height"]) for k in names])
    out: dict[str, Any] = {
        "set": {"folder": str(folder), "images": len(names), "seed": 0, "jpeg_quality": LARGE_QUALITY,
                "kb": {"p10": float(np.percentile(kb, 10)), "median": float(np.median(kb)),
                       "p90": float(np.percentile(kb, 90))},
                "longer_side": {"min": int(sides.min()), "median": float(np.median(sides)), "max": int(sides.max())},
                "two_people": sum(len(scenes[k]["tiles"]) > 1 for k in names)},
        "workers": workers, "repeats": repeats, "goal": LARGE_SPEEDUP_GOAL, "backends": {}}
    for backend in backends:
        paths = names[: n if backend == "dlib" else n_mtcnn]
        order = ["reference", "new", "parallel"]
        runs: dict[str, list[float]] = {k: [] for k in order}
        cpu_ms: dict[str, list[float]] = {k: [] for k in order}
        capacity: list[float] = []
        rec: dict[str, Any] = {}
        for r in range(repeats):
            capacity.append(parallel_capacity(workers))
            for kind in (order if r % 2 == 0 else order[::-1]):
                lm = reference_landmarker(backend) if kind == "reference" else make_landmarker(backend)
                if r == 0 and kind != "parallel":
                    lm = Recording(lm)
                with tempfile.TemporaryDirectory() as tmp:
                    wall, cpu, af = _timed_align(folder, paths, backend, lm, workers if kind == "parallel" else 0,
                                                 Path(tmp), progress)
                    if r == 0 and kind != "parallel":
                        rec[kind] = (lm.detections, np.array(af.faces))
                runs[kind].append(len(paths) / wall)
                cpu_ms[kind].append(1e3 * cpu / len(paths))
                log(f"alignment: {backend} {kind} (repeat {r + 1}): {len(paths) / wall:.2f} images/s, "
                    f"{cpu_ms[kind][-1]:.0f} CPU ms/image (parallel capacity {capacity[-1]:.2f}x)")
        med = {k: float(np.median(v)) for k, v in runs.items()}
        out["backends"][backend] = {
            "images": len(paths), "images_per_s": runs, "median_images_per_s": med, "cpu_ms_per_image": cpu_ms,
            "parallel_capacity": capacity,
            "speedup_in_process": [b / a for a, b in zip(runs["reference"], runs["new"])],
            "speedup_parallel": [c / a for a, c in zip(runs["reference"], runs["parallel"])],
            "compare": compare_detections(rec["reference"][0], rec["new"][0], rec["reference"][1], rec["new"][1]),
            "lfw": lfw_identical(lfw, backend, lfw_n if backend == "dlib" else max(2, lfw_n // 4))}
    return out


def large_goal(res: dict[str, Any]) -> dict[str, Any] | None:
    """The goal line for BENCHMARKS.md: dlib's large-photo rate with workers >= 4x the reference's, every repeat."""
    b = res.get("backends", {}).get("dlib")
    if b is None:
        return None
    worst = min(b["speedup_parallel"])
    xs = lambda vals, d: ", ".join(f"{x:.{d}f}x" for x in vals)  # noqa: E731
    return {"goal": f"large-photo alignment (dlib) >= {res['goal']:.0f}x the reference rate",
            "met": worst >= res["goal"],
            "detail": (f"{b['median_images_per_s']['parallel']:.1f} vs {b['median_images_per_s']['reference']:.1f} "
                       f"images/s with {res['workers']} workers: {xs(b['speedup_parallel'], 1)} over {res['repeats']} "
                       f"repeats ({xs(b['speedup_in_process'], 1)} in one process; parallel capacity of the machine "
                       f"meanwhile {xs(b['parallel_capacity'], 2)})")}


def to_markdown(res: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: rates per run, detection changes, LFW identity."""
    st = res["set"]
    lines = [f"{st['images']} seeded scenes (`make_large_photos`, seed {st['seed']}): one LFW image upscaled 1.2-6x "
             f"into a textured {st['longer_side']['min']}-{st['longer_side']['max']} px scene ({st['two_people']} "
             f"with a second, smaller person), JPEG quality {st['jpeg_quality']}, {st['kb']['p10']:.0f}-"
             f"{st['kb']['p90']:.0f} KB (10th-90th percentile). Template dlib_150, every run into an empty cache; "
             "*reference* = the detection before the coarse passes (one 1000 px copy, dlib upsample 1 then 2), "
             f"*new* = today's in one process, *workers* = today's with {res['workers']} worker processes. "
             "Runs interleaved; speed-ups are ratios within each repeat.", "",
             "| backend | images | repeat | reference img/s | new img/s | workers img/s | new / reference | "
             "workers / reference | CPU ms/img: reference / new / workers | parallel capacity |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for backend, b in res["backends"].items():
        r, c = b["images_per_s"], b["cpu_ms_per_image"]
        for k in range(len(r["reference"])):
            lines.append(f"| {backend} | {b['images']} | {k + 1} | {r['reference'][k]:.2f} | {r['new'][k]:.2f} | "
                         f"{r['parallel'][k]:.2f} | {b['speedup_in_process'][k]:.2f}x | "
                         f"{b['speedup_parallel'][k]:.2f}x | "
                         f"{c['reference'][k]:.0f} / {c['new'][k]:.0f} / {c['parallel'][k]:.0f} | "
                         f"{b['parallel_capacity'][k]:.2f}x |")
    lines += ["", f"Parallel capacity: how many times faster {res['workers']} processes ran a CPU-bound toy job than "
              "one process, just before each repeat (1.0x: other users' work took every core, so workers cannot "
              "help; CPU ms/img then still shows the work saved)."]
    lines += ["", "Detections of the new code against the reference (first repeat, same images):", ""]
    for backend, b in res["backends"].items():
        c = b["compare"]
        lm, rel, chip = c["landmark_px"], c["landmark_pct_of_box"], c["chip_mean_abs_diff"]
        text = (f"- {backend}: face found by both in {c['both_found']} of {c['images']} images (reference only "
                f"{c['only_reference']}, new only {c['only_new']}); another face chosen in {c['other_face']}")
        if lm:
            text += (f"; same face in {c['same_face']}: landmarks differ by {lm['median']:.2f} px median, "
                     f"{lm['p90']:.2f} p90, {lm['max']:.2f} max ({rel['median']:.2f}% / {rel['p90']:.2f}% of the face "
                     f"box width), chips by {chip['median']:.2f} / {chip['p90']:.2f} grey levels (median / p90 mean "
                     f"absolute difference), {c['chips_identical']} identical")
        lines.append(text + f". LFW ({b['lfw']['images']} seeded images): chips "
                     f"{'byte-identical' if b['lfw']['identical'] else '**differ**'} to the reference.")
    for backend, fr in res.get("full_resolution", {}).items():
        r, n = fr["landmark_px"]["reference"], fr["landmark_px"]["new"]
        rr, nn = fr["landmark_pct_of_box"]["reference"], fr["landmark_pct_of_box"]["new"]
        if r and n:
            lines.append(f"- {backend} against full-resolution detection ({fr['images']} scenes): landmark error "
                         f"{r['median']:.2f} px median ({rr['median']:.2f}% of the box) for the reference, "
                         f"{n['median']:.2f} px ({nn['median']:.2f}%) for the new code; p90 {r['p90']:.2f} / "
                         f"{n['p90']:.2f} px; another face: {fr['other_face']['reference']} / "
                         f"{fr['other_face']['new']}.")
    g = large_goal(res)
    if g:
        lines += ["", ("Goal met: " if g["met"] else "**Goal missed:** ") + g["detail"] + "."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- derive
def derive(lfw: Path, n: int, seed: int) -> dict:
    """Measure where MTCNN's landmarks and box fall inside dlib's own chips on ``n`` seeded LFW images."""
    from tqdm.auto import tqdm

    from distill.data import align
    from distill.data.imageio import load_rgb
    from distill.data.templates import apply_affine, dlib_chip_matrix

    root = lfw / "lfw-deepfunneled"
    paths = lfw_images(lfw)
    pick = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), n, replace=False))]
    dl, mt = align.DlibLandmarker(), align.MTCNNLandmarker()
    pts_chip, box_chip, pts_img, box_img = [], [], [], []
    for a in tqdm(range(0, len(pick), 32), desc="derive", unit="batch"):
        imgs = [load_rgb(root / p) for p in pick[a:a + 32]]
        for img, d, m in zip(imgs, dl.detect(imgs), mt.detect(imgs)):
            if d.face is None or m.face is None:
                continue
            side = min(img.shape[:2])
            # the same face? MTCNN's nose must lie inside dlib's detection box
            x1, y1, x2, y2 = d.face.box
            nx, ny = m.face.points[2]
            if not (x1 <= nx <= x2 and y1 <= ny <= y2):
                continue
            mat = dlib_chip_matrix(d.face)
            scale = np.sqrt(abs(np.linalg.det(mat[:, :2])))
            pts_chip.append(apply_affine(mat, m.face.points))
            b = m.face.box
            c = apply_affine(mat, [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])[0]
            box_chip.append([c[0], c[1], (b[2] - b[0]) * scale, (b[3] - b[1]) * scale])
            off = np.array([(img.shape[1] - side) / 2, (img.shape[0] - side) / 2])
            pts_img.append((m.face.points - off) / side)
            box_img.append((b - np.tile(off, 2)) / side)
    pts_chip, box_chip = np.array(pts_chip), np.array(box_chip)
    return {
        "images": n, "used": len(pts_chip),
        "MTCNN_IN_DLIB150": pts_chip.mean(0).round(3).tolist(),
        "MTCNN_IN_DLIB150_std": pts_chip.std(0).round(3).tolist(),
        "MTCNN_BOX_IN_DLIB150": box_chip.mean(0).round(3).tolist(),
        "LFW_MTCNN_POINTS": np.array(pts_img).mean(0).round(5).tolist(),
        "LFW_MTCNN_BOX": np.array(box_img).mean(0).round(5).tolist(),
    }


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.alignment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW folder (with lfw-deepfunneled/ and pairs files)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="align all of LFW and report speed and fallbacks")
    run.add_argument("--backend", choices=["dlib", "mtcnn"], default="mtcnn")
    run.add_argument("--template", choices=["dlib_150", "facenet_160", "arcface_112"], default="dlib_150")
    run.add_argument("--cache-dir", type=Path, default=Path(".cache/facedistill"))
    run.add_argument("--no-face", choices=["center", "skip"], default="center")
    run.add_argument("--images", choices=["all", "devtest"], default="all",
                     help="all of LFW, or only the 1,549 images that pairsDevTest.txt uses")
    run.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    run.add_argument("--device", default="cpu", help="torch device for MTCNN")
    run.add_argument("--teacher-check", action="store_true",
                     help="also compare dlib ResNet DevTest accuracy with MTCNN-made vs dlib-made dlib_150 chips")
    run.add_argument("--json", type=Path, default=None, help="write the results here")
    big = sub.add_parser("large", help="large-photo alignment speed: reference vs today's detection, workers")
    big.add_argument("--n", type=int, default=200, help="scenes for dlib")
    big.add_argument("--n-mtcnn", type=int, default=80, help="scenes for MTCNN (slower)")
    big.add_argument("--repeats", type=int, default=2)
    big.add_argument("--workers", type=int, default=None, help="worker processes (default: usable cores, 2..8)")
    big.add_argument("--backends", default="dlib,mtcnn", help="comma-separated: dlib, mtcnn")
    big.add_argument("--lfw-n", type=int, default=200, help="LFW images checked byte-identical (a quarter for MTCNN)")
    big.add_argument("--set-dir", type=Path, default=Path(".cache/facedistill/bench"),
                     help="where the generated scenes are kept")
    big.add_argument("--full-res", type=int, default=0, metavar="N",
                     help="also compare both detections with full-resolution detection on the first N scenes (slow)")
    big.add_argument("--json", type=Path, default=None, help="write the results here")
    der = sub.add_parser("derive", help="measure the MTCNN->dlib chip constants on LFW")
    der.add_argument("--n", type=int, default=400)
    der.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.lfw / "lfw-deepfunneled").is_dir():
        ap.error(f"LFW not found at {args.lfw} (pass --lfw or set FACEDISTILL_SHARED)")

    if args.cmd == "derive":
        res = derive(args.lfw, args.n, args.seed)
        print(json.dumps(res))
        return 0
    if args.cmd == "large":
        res = bench_large(args.lfw, n=args.n, n_mtcnn=args.n_mtcnn, repeats=args.repeats, workers=args.workers,
                          lfw_n=args.lfw_n,
                          backends=[b.strip() for b in args.backends.split(",") if b.strip()], set_dir=args.set_dir,
                          progress=True)
        if args.full_res:
            folder = Path(res["set"]["folder"])
            names = sorted(json.loads((folder / "manifest.json").read_text())["scenes"])[: args.full_res]
            res["full_resolution"] = {b: full_resolution_check(folder, names, b) for b in res["backends"]}
        print(to_markdown(res))
        if args.json:
            from distill.io import atomic_write_json

            atomic_write_json(args.json, res)
        return 0

    from distill.data.align import align_images

    paths = lfw_images(args.lfw)
    if args.images == "devtest":
        paths = sorted({p for a, b, _ in read_pairs(args.lfw / "pairsDevTest.txt") for p in (a, b)})
    paths = paths[: args.limit]
    t0 = time.perf_counter()
    af = align_images(args.lfw / "lfw-deepfunneled", paths, template=args.template, backend=args.backend,
                      cache_dir=args.cache_dir, no_face=args.no_face, device=args.device)
    wall = time.perf_counter() - t0
    rec = af.record
    res = {"template": args.template, "backend": args.backend, "images": len(paths),  "wall_s": round(wall, 1),
           "images_per_s_decoded": round(rec.decoded / wall, 1) if rec.decoded else None,
           "decoded": rec.decoded, "from_cache": rec.from_cache, "aligned": rec.aligned,
           "center_fallback": rec.center, "skipped": len(rec.skipped), "upsampled": rec.upsampled,
           "multiple_faces": rec.multiple_faces, "no_face_examples": rec.no_face_paths[:10]}
    print(rec.summary())
    if args.teacher_check:
        pairs = read_pairs(args.lfw / "pairsDevTest.txt")
        res["teacher_check"] = teacher_comparison(args.lfw, pairs, args.cache_dir)
    print(json.dumps(res, indent=1))
    if args.json:
        from distill.io import atomic_write_json

        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

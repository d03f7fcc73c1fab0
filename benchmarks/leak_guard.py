"""The leak guard where the truth is known: LFW's DevTest people's photos that ``pairsDevTest.txt`` does not
use, planted among the training images, against the 10,492 images of the other people (innocent).

Evaluation side: the 1,549 images the DevTest pairs use (their people are the evaluation people). Training
side: the 1,192 planted photos (same people, other photos) and the 10,492 innocent images. For each
``data.leak_guard.innocent_rate`` the guard's same-person rule (:func:`distill.data.leak_guard.same_person`)
flags some of each: the curve is planted caught against innocent excluded. Two kinds of training embeddings:
one clean teacher pass, and each face's mean over the flagship recipe's 16 augmented views (what a cached run
gives the guard; the innocents' views are the product's own teacher cache of that recipe, built here if
missing, the planted photos' views are computed with the same augmentation). For comparison, the plain rule:
flag an image whose best cosine to any evaluation image exceeds t (t at the same innocent rates). The cost:
the whole check (copies, hashes, people) on these sizes. A cross-check on a protocol the rule was not chosen
on: ``pairsDevTrain.txt``'s images as the evaluation side, its people's other photos planted.

Run alone::

    .venv/bin/python -m benchmarks --sections leak_guard --update
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RATES = (0.0025, 0.005, 0.01, 0.015, 0.02, 0.04)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dlib_to_mobilenet_lfw.yaml"
RECIPE = ["train.cache_views=16", "data.augment.mixup=0", "data.augment.cutmix=0"]


def _split(lfw: Path, pairs: str = "pairsDevTest.txt") -> dict[str, Any]:
    """LFW's images: the ``pairs`` file's images (eval), its people's other photos (planted), the rest."""
    from distill.data.folders import scan_identity_folder

    root = lfw / "lfw-deepfunneled"
    images = scan_identity_folder(root)
    return {"root": root, "images": images, "kind": _kinds(images, lfw / pairs, root)}


def _kinds(images: Any, pairs: Path, root: Path) -> np.ndarray:
    """``eval`` / ``planted`` / ``innocent`` per image of ``images`` for the protocol ``pairs``."""
    from distill.data.pairs import read_pairs

    dev = read_pairs(pairs, root)
    used, people = set(dev.image_rel_paths()), dev.people()
    return np.array(["eval" if r in used else "planted" if r.split("/")[0] in people else "innocent"
                     for r in images.rel_paths])


def _protocol_curve(emb: np.ndarray, kind: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """The same-person curve of one protocol's split (``kind`` per image) with embeddings ``emb``."""
    ev, pl, inn = (np.flatnonzero(kind == k) for k in ("eval", "planted", "innocent"))
    truth = np.r_[np.ones(len(pl), bool), np.zeros(len(inn), bool)]
    return _curve(emb[np.r_[pl, inn]], truth, emb[ev], labels[ev])


def _view_means(cfg: Any, teacher: Any, faces: Any, log: Callable[[str], None]) -> np.ndarray:
    """Mean teacher embedding over the recipe's K augmented views of ``faces`` (no cache; the planted photos)."""
    import torch

    from distill.data.augment import build_augmentation
    from distill.data.views import FaceViews

    views = FaceViews(faces, build_augmentation(cfg.data.augment), seed=cfg.seed)
    k = cfg.train.cache_views
    out = np.zeros((len(faces), teacher.embedding_dim), np.float32)
    with torch.no_grad():
        for a in range(0, len(faces), 8):
            idx = range(a, min(a + 8, len(faces)))
            batch = np.stack([views.view(i, v) for i in idx for v in range(k)])
            emb = teacher.embed(torch.from_numpy(batch)).numpy().reshape(len(idx), k, -1)
            out[a:a + len(idx)] = emb.mean(1)
    log(f"  view means of {len(faces)} planted photos ({len(faces) * k} teacher passes)")
    return out


def _curve(train: np.ndarray, truth: np.ndarray, ev: np.ndarray, people: np.ndarray) -> list[dict[str, float]]:
    from distill.data.leak_guard import Cohort, _unit, same_person

    cohort = Cohort.of(_unit(ev), people)
    rows = []
    for rate in RATES:
        flag = same_person(_unit(train), cohort, rate)[0]
        rows.append({"innocent_rate": rate, "planted_caught": float(flag[truth].mean()),
                     "innocent_excluded": float(flag[~truth].mean()), "link_cosine": cohort.far_1e4})
    return rows


def _plain(train: np.ndarray, truth: np.ndarray, ev: np.ndarray) -> list[dict[str, float]]:
    """The plain rule: best cosine to any evaluation image above t, t set to exclude each rate of innocents."""
    from distill.data.leak_guard import _unit

    best = np.concatenate([(_unit(train[a:a + 4096]) @ _unit(ev).T).max(1) for a in range(0, len(train), 4096)])
    out = []
    for rate in RATES:
        t = float(np.quantile(best[~truth], 1 - rate))
        out.append({"innocent_excluded": rate, "planted_caught": float((best[truth] > t).mean()), "cosine": t})
    return out


def bench_leak_guard(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The curve and the cost (see the module docs); ``quick``: 60 evaluation people and 300 innocent images,
    clean pass only."""
    from distill.config import LeakGuardSettings, load_config
    from distill.data.align import align_images
    from distill.data.leak_guard import GuardSide, Rows, check_leaks
    from distill.data.prepare import prepare_train
    from distill.evaluation import extract_embeddings
    from distill.pipeline import _views
    from distill.resolve import teacher_from_config
    from distill.train import build_teacher_cache

    cfg = load_config(CONFIG, RECIPE)
    teacher = teacher_from_config(cfg)
    teacher.precision = "fp32"
    split = _split(cfg.data.exclude_identities_in[0].parent)
    images, kind = split["images"], split["kind"]
    if quick:  # 60 of the evaluation people and 300 innocent images: seconds, not the 13,233 images
        people = sorted({r.split("/")[0] for r, k in zip(images.rel_paths, kind) if k != "innocent"})[:60]
        keep = np.isin([r.split("/")[0] for r in images.rel_paths], people)
        keep[np.random.default_rng(0).choice(np.flatnonzero(kind == "innocent"), 300, replace=False)] = True
        images, kind = images.subset(keep), kind[keep]
    af = align_images(split["root"], images.rel_paths, template="dlib_150", backend="dlib",
                      cache_dir=cfg.data.cache_dir / "aligned", no_face="center", progress=False, workers=2)
    clean = extract_embeddings(teacher, af.faces, batch_size=128, cache_dir=cfg.data.cache_dir / "embeddings")
    ev_idx, pl_idx, in_idx = (np.flatnonzero(kind == k) for k in ("eval", "planted", "innocent"))
    train_idx = np.r_[pl_idx, in_idx]
    truth = np.r_[np.ones(len(pl_idx), bool), np.zeros(len(in_idx), bool)]
    people = images.labels[ev_idx]
    out: dict[str, Any] = {"eval_images": len(ev_idx), "planted": len(pl_idx), "innocent": len(in_idx),
                           "comparisons": len(train_idx) * len(ev_idx)}
    out["clean"] = _protocol_curve(clean, kind, images.labels)
    out["plain_rule"] = _plain(clean[train_idx], truth, clean[ev_idx])
    log("  clean-pass curve: " + ", ".join(f"{r['planted_caught']:.3f}@{r['innocent_excluded']:.4f}"
                                           for r in out["clean"]))
    if not quick:
        train = prepare_train(cfg, "dlib_150", lambda _m: None)
        cache = build_teacher_cache(teacher, _views(train, cfg), 16, cfg.data.cache_dir / "teacher", log=log)
        innocent_mean = np.zeros((len(in_idx), teacher.embedding_dim), np.float32)
        means = cache.mean_embeddings()
        where = {r: k for k, r in enumerate(train.rel_paths)}
        for k, i in enumerate(in_idx):
            innocent_mean[k] = means[where[images.rel_paths[i]]] if images.rel_paths[i] in where else clean[i]
        planted_mean = _view_means(cfg, teacher, np.asarray(af.faces[pl_idx]), log)
        out["view_mean"] = _curve(np.r_[planted_mean, innocent_mean], truth, clean[ev_idx], people)
        log("  view-mean curve: " + ", ".join(f"{r['planted_caught']:.3f}@{r['innocent_excluded']:.4f}"
                                              for r in out["view_mean"]))
    if not quick:  # a protocol the rule was not chosen on: pairsDevTrain.txt's people as the evaluation people
        split_t = _kinds(images, split["root"].parent / "pairsDevTrain.txt", split["root"])
        out["cross_check"] = _protocol_curve(clean, split_t, images.labels)
        out["cross_check_sizes"] = {k: int((split_t == k).sum()) for k in ("eval", "planted", "innocent")}
        out["scale"] = _scale_cost(cfg, teacher, split, af, clean, kind, log)
    t0 = time.perf_counter()
    side_t = GuardSide([images.rel_paths[i] for i in train_idx], [str(split["root"] / images.rel_paths[i])
                       for i in train_idx], Rows(af.faces, train_idx), clean[train_idx], np.full(len(train_idx), -1), [])
    side_e = GuardSide([images.rel_paths[i] for i in ev_idx], [str(split["root"] / images.rel_paths[i]) for i in ev_idx],
                       Rows(af.faces, ev_idx), clean[ev_idx], people, list(images.identities))
    res = check_leaks(side_t, side_e, LeakGuardSettings(), policy="exclude")
    out["cost"] = {"seconds": time.perf_counter() - t0, "train_images": len(train_idx), "eval_images": len(ev_idx),
                   "images_per_s": len(train_idx) / (time.perf_counter() - t0), "counts": res.counts()}
    log(f"  whole check: {out['cost']['seconds']:.1f} s for {len(train_idx)} x {len(ev_idx)} images")
    return out


def _scale_cost(cfg: Any, teacher: Any, split: dict[str, Any], af: Any, clean: np.ndarray, kind: np.ndarray,
                log: Callable[[str], None]) -> dict[str, Any]:
    """The whole check at the size of ``configs/dlib_to_mobilenet_lfw_utkface.yaml``: LFW-train + UTKFace
    (clean embeddings) against every image of the DevTest people."""
    import os

    from distill.config import LeakGuardSettings
    from distill.data.align import align_images
    from distill.data.leak_guard import GuardSide, Rows, check_leaks
    from distill.data.multisource import ConcatFaces
    from distill.evaluation import extract_embeddings

    utk = CONFIG.parents[1].parent / "shared" / "data" / "utkface"
    utk = Path(os.environ.get("FACEDISTILL_UTKFACE", utk))
    rel = sorted(os.listdir(utk))
    au = align_images(utk, rel, template="dlib_150", backend="dlib", cache_dir=cfg.data.cache_dir / "aligned",
                      no_face="center", progress=False, workers=2)
    emb_u = extract_embeddings(teacher, au.faces, batch_size=128, cache_dir=cfg.data.cache_dir / "embeddings")
    images = split["images"]
    tr, ev = np.flatnonzero(kind == "innocent"), np.flatnonzero(kind != "innocent")
    faces = ConcatFaces([Rows(af.faces, tr), au.faces])
    files = [str(split["root"] / images.rel_paths[i]) for i in tr] + [str(utk / r) for r in au.rel_paths]
    side_t = GuardSide([images.rel_paths[i] for i in tr] + list(au.rel_paths), files, faces,
                       np.r_[clean[tr], emb_u], np.full(len(files), -1), [])
    side_e = GuardSide([images.rel_paths[i] for i in ev], [str(split["root"] / images.rel_paths[i]) for i in ev],
                       Rows(af.faces, ev), clean[ev], images.labels[ev], list(images.identities))
    t0 = time.perf_counter()
    res = check_leaks(side_t, side_e, LeakGuardSettings(), policy="exclude")
    sec = time.perf_counter() - t0
    log(f"  LFW-train + UTKFace: {sec:.1f} s for {len(files)} x {len(ev)} images")
    return {"seconds": sec, "train_images": len(files), "eval_images": len(ev), "images_per_s": len(files) / sec,
            "counts": res.counts()}


def to_markdown(r: dict[str, Any]) -> str:
    """The section's tables."""
    lines = [f"Evaluation side: the {r['eval_images']} images the DevTest pairs use; training side: "
             f"{r['planted']} planted photos of those people and {r['innocent']} innocent images "
             f"({r['comparisons'] / 1e6:.1f}M comparisons). Teacher: dlib_resnet.", "",
             "| innocent_rate (setting) | planted caught, clean pass | innocent excluded, clean pass | "
             "planted caught, 16-view mean | innocent excluded, 16-view mean |", "|---|---|---|---|---|"]
    vm = r.get("view_mean") or [{}] * len(r["clean"])
    for c, v in zip(r["clean"], vm):
        lines.append(f"| {c['innocent_rate']:g} | {100 * c['planted_caught']:.1f}% | {100 * c['innocent_excluded']:.2f}% "
                     f"| {_pct(v.get('planted_caught'), 1)} | {_pct(v.get('innocent_excluded'), 2)} |")
    if r.get("cross_check"):
        n = r["cross_check_sizes"]
        lines += ["", f"Cross-check on a protocol the rule was not chosen on (`pairsDevTrain.txt`: its {n['eval']} "
                  f"images are the evaluation side, its people's {n['planted']} other photos planted, {n['innocent']} "
                  f"innocent), clean pass:", "", "| innocent_rate (setting) | planted caught | innocent excluded |",
                  "|---|---|---|"]
        lines += [f"| {c['innocent_rate']:g} | {100 * c['planted_caught']:.1f}% | {100 * c['innocent_excluded']:.2f}% |"
                  for c in r["cross_check"]]
    lines += ["", "The plain rule (best cosine to any evaluation image above t), clean pass:", "",
              "| innocent excluded | t (cosine) | planted caught |", "|---|---|---|"]
    lines += [f"| {100 * p['innocent_excluded']:.2f}% | {p['cosine']:.3f} | {100 * p['planted_caught']:.1f}% |"
              for p in r["plain_rule"]]
    c = r["cost"]
    lines += ["", f"Cost of the whole check (byte digests, perceptual hashes, S-norm scores, neighbour pooling), "
              f"embeddings given: {c['seconds']:.1f} s for {c['train_images']} x {c['eval_images']} images "
              f"({c['images_per_s']:.0f} training images/s)."]
    if r.get("scale"):
        c = r["scale"]
        lines.append(f"At the size of `configs/dlib_to_mobilenet_lfw_utkface.yaml` (LFW-train + UTKFace against every "
                     f"image of the DevTest people): {c['seconds']:.1f} s for {c['train_images']} x {c['eval_images']} "
                     f"images ({c['images_per_s']:.0f} training images/s), flagged "
                     + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in c["counts"].items() if n) + ". The "
                     "embeddings come from the teacher cache in a run (its views' means): no teacher pass of its own.")
    return "\n".join(lines)


def _pct(x: Any, digits: int) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"

"""1:1 verification on a pairs protocol, and student-to-teacher fidelity.

Example::

    pairs = PairIndex(idx_a, idx_b, is_same, fold)          # indices into the aligned faces
    res = evaluate_pairs(emb, pairs, normalized=True)
    res["accuracy_mean"], res["tar_at_far"][1e-3]
    fid = fidelity(student_emb, teacher_emb)                 # fid["mean"]: mean cosine
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics
from .search import pair_scores

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class PairIndex:
    """A pairs protocol as indices into an array of aligned faces.

    ``fold`` numbers the cross-validation folds (LFW: 0..9, 600 pairs each).
    """

    idx_a: np.ndarray
    idx_b: np.ndarray
    is_same: np.ndarray
    fold: np.ndarray

    def __post_init__(self) -> None:
        cast = {"idx_a": np.int64, "idx_b": np.int64, "is_same": bool, "fold": np.int64}
        for name, dtype in cast.items():
            object.__setattr__(self, name, np.asarray(getattr(self, name)).astype(dtype).ravel())
        n = len(self.idx_a)
        bad = [k for k in cast if len(getattr(self, k)) != n]
        if bad:
            raise ValueError(f"PairIndex arrays must have the same length ({n}); differing: {', '.join(bad)}")

    def __len__(self) -> int:
        return len(self.idx_a)

    def subset(self, mask: np.ndarray) -> "PairIndex":
        return PairIndex(self.idx_a[mask], self.idx_b[mask], self.is_same[mask], self.fold[mask])


def _downsample_roc(far: np.ndarray, tar: np.ndarray, thr: np.ndarray, points: int) -> dict[str, list]:
    """Keep about ``points`` ROC points spread evenly on a log-FAR axis (plus both ends)."""
    if far.size <= points:
        keep = np.arange(far.size)
    else:
        positive = far[far > 0]
        lo = positive.min() if positive.size else 1e-6
        grid = np.geomspace(lo, 1.0, points)
        keep = np.unique(np.r_[0, np.searchsorted(far, grid, side="right") - 1, far.size - 1])
    t = thr[keep]
    return {"far": far[keep].tolist(), "tar": tar[keep].tolist(),
            "threshold": [None if not np.isfinite(v) else float(v) for v in t]}


def score_summary(s: np.ndarray, bins: np.ndarray) -> dict:
    """Count, mean, std, percentiles and a histogram of one set of scores."""
    if s.size == 0:
        return {"n": 0}
    counts, _ = np.histogram(s, bins=bins)
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()),
            "percentiles": {str(p): float(np.percentile(s, p)) for p in (1, 5, 25, 50, 75, 95, 99)},
            "hist": counts.tolist()}


def evaluate_pairs(emb: np.ndarray, pairs: PairIndex, normalized: bool, *, fars: tuple[float, ...] = DEFAULT_FARS,
                   roc_points: int = 200, hist_bins: int = 60) -> dict:
    """Verification metrics of embeddings ``emb`` (N, D) on ``pairs``.

    Scores: cosine for ``normalized`` models, negative Euclidean distance otherwise
    (see :mod:`distill.evaluation.search`). Returns a JSON-ready dict:
    ``accuracy_mean``/``accuracy_std`` (k-fold over ``pairs.fold``), ``fold_accuracies``,
    ``fold_thresholds``, ``auc``, ``eer``, ``eer_threshold``, ``tar_at_far`` ({far: tar or None}),
    ``tar_reasons``, ``best_threshold``/``best_accuracy`` (on all pairs), ``roc`` (downsampled),
    ``genuine``/``impostor`` score summaries with a shared ``hist_edges``, ``score`` (what the scores are)
    and ``warnings`` (e.g. a fold without impostor pairs).
    """
    scores = pair_scores(emb, pairs.idx_a, pairs.idx_b, normalized)
    same = pairs.is_same
    kf = metrics.kfold_accuracy(scores, same, pairs.fold)
    far, tar, thr = metrics.roc_curve(scores, same)
    e, e_thr = metrics.eer(scores, same)
    tars, reasons = metrics.tar_at_far(scores, same, fars)
    best_acc, best_thr = metrics.best_threshold_accuracy(scores, same)
    edges = np.linspace(scores.min(), scores.max(), hist_bins + 1) if scores.max() > scores.min() \
        else np.linspace(scores.min() - 0.5, scores.max() + 0.5, hist_bins + 1)
    warnings = []
    for k in np.unique(pairs.fold):
        n_same = int(same[pairs.fold == k].sum())
        n_fold = int((pairs.fold == k).sum())
        if n_same in (0, n_fold):
            warnings.append(f"fold {int(k)} holds only {'impostor' if n_same == 0 else 'genuine'} pairs "
                            f"({n_fold}); k-fold accuracy assumes every fold mixes both (LFW: 300 + 300)")
    rare = min(float(same.mean()), float((~same).mean()))
    if 0 < rare < 0.01:  # e.g. every pair of a set of images (all_pairs): >99% impostors
        warnings.append(f"only {100 * rare:.2g}% of the pairs are {'genuine' if same.mean() < 0.5 else 'impostor'}: "
                        f"accuracy mostly counts the other class (deciding all pairs alike scores "
                        f"{100 * (1 - rare):.2f}%); read TAR@FAR and EER")
    return {
        "warnings": warnings,
        "n_pairs": int(len(pairs)), "n_genuine": int(same.sum()), "n_impostor": int((~same).sum()),
        "n_folds": int(np.unique(pairs.fold).size),
        "score": "cosine similarity" if normalized else "negative Euclidean distance",
        "accuracy_mean": kf.mean, "accuracy_std": kf.std,
        "fold_accuracies": kf.accuracies, "fold_thresholds": kf.thresholds,
        "auc": metrics.auc(far, tar), "eer": e, "eer_threshold": e_thr,
        "tar_at_far": tars, "tar_reasons": reasons,
        "best_threshold": best_thr, "best_accuracy": best_acc,
        "roc": _downsample_roc(far, tar, thr, roc_points),
        "hist_edges": edges.tolist(),
        "genuine": score_summary(scores[same], edges), "impostor": score_summary(scores[~same], edges),
    }


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of ``a`` and ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"student {a.shape} and teacher {b.shape} embeddings must have the same shape "
                         "(same images, same dim); fidelity is undefined across dims")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def fidelity(student_emb: np.ndarray, teacher_emb: np.ndarray, *, bins: int = 50) -> dict:
    """How closely a student reproduces its teacher on the same images: cosine per image.

    Returns mean, std, min, percentiles, a histogram on [-1, 1] (``hist_edges``/``hist``), and the
    mean squared difference of the raw embeddings (the paper's training objective).
    """
    cos = cosine_rows(student_emb, teacher_emb)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(cos, -1, 1), bins=edges)
    diff = np.asarray(student_emb, np.float64) - np.asarray(teacher_emb, np.float64)
    return {"n": int(cos.size), "mean": float(cos.mean()), "std": float(cos.std()), "min": float(cos.min()),
            "percentiles": {str(p): float(np.percentile(cos, p)) for p in (1, 5, 25, 50, 75, 95, 99)},
            "hist_edges": edges.tolist(), "hist": counts.tolist(),
            "mse": float((diff ** 2).sum(1).mean())}

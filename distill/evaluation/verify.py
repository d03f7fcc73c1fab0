"""1:1 verification on a pairs protocol, and student-to-teacher fidelity.

Example::

    pairs = PairIndex(idx_a, idx_b, is_same, fold)          # indices into the aligned faces
    res = evaluate_pairs(emb, pairs, normalized=True)      # VerificationResult
    res.accuracy_mean, res.tar(1e-3)
    fid = fidelity(student_emb, teacher_emb)                 # FidelityResult; fid.mean: mean cosine
"""
from __future__ import annotations


import numpy as np

from . import metrics
from distill.data.pairindex import PairIndex

from .results import FidelityResult, Roc, ScoreSummary, VerificationResult
from .search import pair_scores

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)


def _downsample_roc(far: np.ndarray, tar: np.ndarray, thr: np.ndarray, points: int) -> Roc:
    """Keep about ``points`` ROC points spread evenly on a log-FAR axis (plus both ends)."""
    if far.size <= points:
        keep = np.arange(far.size)
    else:
        positive = far[far > 0]
        lo = positive.min() if positive.size else 1e-6
        grid = np.geomspace(lo, 1.0, points)
        keep = np.unique(np.r_[0, np.searchsorted(far, grid, side="right") - 1, far.size - 1])
    t = thr[keep]
    return Roc(far[keep].tolist(), tar[keep].tolist(), [None if not np.isfinite(v) else float(v) for v in t])


def score_summary(s: np.ndarray, bins: np.ndarray) -> ScoreSummary:
    """Count, mean, std, percentiles and a histogram of one set of scores."""
    if s.size == 0:
        return ScoreSummary(0)
    counts, _ = np.histogram(s, bins=bins)
    return ScoreSummary(int(s.size), float(s.mean()), float(s.std()), float(s.min()), float(s.max()),
                        {str(p): float(np.percentile(s, p)) for p in (1, 5, 25, 50, 75, 95, 99)}, counts.tolist())


def evaluate_pairs(emb: np.ndarray, pairs: PairIndex, normalized: bool, *, fars: tuple[float, ...] = DEFAULT_FARS,
                   roc_points: int = 200, hist_bins: int = 60, labels: np.ndarray | None = None,
                   bootstrap: int = 0) -> VerificationResult:
    """Verification metrics of embeddings ``emb`` (N, D) on ``pairs`` (indices into ``emb``).

    Scores: cosine for ``normalized`` models, negative Euclidean distance otherwise
    (see :mod:`distill.evaluation.search`). k-fold accuracy uses ``pairs.fold``; the ROC is
    downsampled to about ``roc_points`` points. A protocol without genuine (or without impostor)
    pairs is not an error: accuracy, AUC and EER are None and ``reason`` says why. With ``labels`` (N,)
    (each face's identity) and ``bootstrap`` rounds, ``tar_interval`` holds a 95% interval of each TAR
    from a bootstrap over identities (:func:`~distill.evaluation.metrics.tar_interval`).

    Raises:
        ValueError: no pairs at all, or non-finite scores (NaN/inf embeddings).
    """
    scores = pair_scores(emb, pairs.idx_a, pairs.idx_b, normalized)
    same = pairs.is_same
    n_same, n_diff = int(same.sum()), int((~same).sum())
    edges = np.linspace(scores.min(), scores.max(), hist_bins + 1) if scores.size and scores.max() > scores.min() \
        else np.linspace((scores.min() if scores.size else 0) - 0.5, (scores.max() if scores.size else 0) + 0.5,
                         hist_bins + 1)
    common = dict(n_pairs=int(len(pairs)), n_genuine=n_same, n_impostor=n_diff,
                  n_folds=int(np.unique(pairs.fold).size),
                  score="cosine similarity" if normalized else "negative Euclidean distance",
                  hist_edges=edges.tolist(), genuine=score_summary(scores[same], edges),
                  impostor=score_summary(scores[~same], edges))
    if n_same == 0 or n_diff == 0:
        missing = "genuine" if n_same == 0 else "impostor"
        metrics._check(scores, same)  # still refuse empty or non-finite input
        return VerificationResult(**common, accuracy_mean=None, accuracy_std=None, fold_accuracies=[],
                                  fold_thresholds=[], auc=None, eer=None, eer_threshold=None,
                                  tar_at_far={f: None for f in fars},
                                  tar_reasons={f: f"no {missing} pairs" for f in fars}, best_threshold=None,
                                  best_accuracy=None, roc=Roc([], [], []), reason=f"no {missing} pairs",
                                  warnings=[f"the protocol has no {missing} pairs (e.g. one image per person): "
                                            f"verification is not defined"])
    kf = metrics.kfold_accuracy(scores, same, pairs.fold)
    far, tar, thr = metrics.roc_curve(scores, same)
    e, e_thr = metrics.eer(scores, same)
    tars, reasons = metrics.tar_at_far(scores, same, fars)
    best_acc, best_thr = metrics.best_threshold_accuracy(scores, same)
    warnings = []
    for k in np.unique(pairs.fold):
        n_fold_same = int(same[pairs.fold == k].sum())
        n_fold = int((pairs.fold == k).sum())
        if n_fold_same in (0, n_fold):
            warnings.append(f"fold {int(k)} holds only {'impostor' if n_fold_same == 0 else 'genuine'} pairs "
                            f"({n_fold}); k-fold accuracy assumes every fold mixes both (LFW: 300 + 300)")
    rare = min(float(same.mean()), float((~same).mean()))
    if 0 < rare < 0.01:  # e.g. every pair of a set of images (all_pairs): >99% impostors
        warnings.append(f"only {100 * rare:.2g}% of the pairs are {'genuine' if same.mean() < 0.5 else 'impostor'}: "
                        f"accuracy mostly counts the other class (deciding all pairs alike scores "
                        f"{100 * (1 - rare):.2f}%); read TAR@FAR and EER")
    interval = {}
    if labels is not None and bootstrap > 0:
        labels = np.asarray(labels)
        found = metrics.tar_interval(scores, same, labels[pairs.idx_a], labels[pairs.idx_b], fars, rounds=bootstrap)
        interval = {f: (None if v is None else list(v)) for f, v in found.items()}
    return VerificationResult(**common, accuracy_mean=kf.mean, accuracy_std=kf.std, fold_accuracies=kf.accuracies,
                              fold_thresholds=kf.thresholds, auc=metrics.auc(far, tar), eer=e, eer_threshold=e_thr,
                              tar_at_far=tars, tar_reasons=reasons, best_threshold=best_thr,
                              best_accuracy=best_acc, roc=_downsample_roc(far, tar, thr, roc_points),
                              warnings=warnings, tar_interval=interval)


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


def fidelity(student_emb: np.ndarray, teacher_emb: np.ndarray, *, bins: int = 50) -> FidelityResult:
    """How closely a student reproduces its teacher on the same images: cosine per image.

    ``student_emb``, ``teacher_emb``: ``(N, D)`` embeddings of the same N faces. Returns mean, std,
    min, percentiles, a histogram on [-1, 1], and the mean squared difference of the raw embeddings
    (the paper's training objective).
    """
    cos = cosine_rows(student_emb, teacher_emb)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(cos, -1, 1), bins=edges)
    diff = np.asarray(student_emb, np.float64) - np.asarray(teacher_emb, np.float64)
    return FidelityResult(int(cos.size), float(cos.mean()), float(cos.std()), float(cos.min()),
                          {str(p): float(np.percentile(cos, p)) for p in (1, 5, 25, 50, 75, 95, 99)},
                          edges.tolist(), counts.tolist(), float((diff ** 2).sum(1).mean()))

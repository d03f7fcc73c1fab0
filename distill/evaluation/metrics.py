"""Verification metrics as plain numpy functions (insightface-style).

Every function takes ``scores`` (higher = more similar: cosine, or a negative
distance for raw embeddings) and ``same`` (bool, genuine pair). A pair is
accepted when ``score >= threshold``.

Example::

    far, tar, thr = roc_curve(scores, same)
    auc(far, tar), eer(scores, same)
    tars, reasons = tar_at_far(scores, same, fars=(1e-3,))
    res = kfold_accuracy(scores, same, folds)     # res.mean, res.std, res.thresholds
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def _check(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(same).astype(bool).ravel()
    if scores.shape != same.shape:
        raise ValueError(f"scores {scores.shape} and same {same.shape} must have the same length")
    if scores.size == 0:
        raise ValueError("no pairs to evaluate")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} pair scores are not finite (NaN/inf embeddings?)")
    return scores, same


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC at every distinct score: returns ``(far, tar, thresholds)``, thresholds decreasing.

    The first point is ``(0, 0)`` at threshold ``+inf`` (accept nothing), the last
    ``(1, 1)`` at the lowest score (accept everything). With no genuine (or no
    impostor) pairs the corresponding rate is NaN.
    """
    scores, same = _check(scores, same)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # keep the last index of each run of equal scores: ties are accepted together
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tar = np.r_[0.0, tp[last] / n_pos] if n_pos else np.full(last.size + 1, np.nan)
        far = np.r_[0.0, fp[last] / n_neg] if n_neg else np.full(last.size + 1, np.nan)
    return far, tar, np.r_[np.inf, s[last]]


def auc(far: np.ndarray, tar: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids over FAR)."""
    return float(np.trapezoid(np.asarray(tar, dtype=np.float64), np.asarray(far, dtype=np.float64)))


def eer(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold: where FAR equals FRR = 1 - TAR, interpolated linearly
    between the two ROC points that bracket the crossing. Returns ``(eer, threshold)``."""
    far, tar, thr = roc_curve(scores, same)
    frr = 1.0 - tar
    diff = far - frr                        # rises from -1 to +1 along the curve
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        t = thr[i] if np.isfinite(thr[i]) else thr[1]
        return float(far[i]), float(t)
    # linear interpolation between points i-1 and i
    w = -diff[i - 1] / (diff[i] - diff[i - 1])
    rate = far[i - 1] + w * (far[i] - far[i - 1])
    t_hi = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    return float(rate), float(t_hi + w * (thr[i] - t_hi))


def min_impostors_for_far(far: float) -> int:
    """Impostor pairs needed before FAR=``far`` is estimable at all: at least one false accept must be possible."""
    return int(np.ceil(1.0 / far - 1e-9))


def tar_at_far(scores: np.ndarray, same: np.ndarray, fars: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
               ) -> tuple[dict[float, float | None], dict[float, str]]:
    """Highest TAR over thresholds whose FAR is <= each target FAR.

    Returns ``(tars, reasons)``: ``tars[far]`` is ``None`` when there are fewer
    than ``1/far`` impostor pairs (the FAR cannot be resolved), and
    ``reasons[far]`` then says how many pairs there were and how many are needed.
    """
    scores, same = _check(scores, same)
    far_c, tar_c, _ = roc_curve(scores, same)
    n_neg, n_pos = int((~same).sum()), int(same.sum())
    tars: dict[float, float | None] = {}
    reasons: dict[float, str] = {}
    for f in fars:
        need = min_impostors_for_far(f)
        if n_pos == 0:
            tars[f], reasons[f] = None, "no genuine pairs"
        elif n_neg < need:
            tars[f] = None
            reasons[f] = (f"only {n_neg} impostor pairs; FAR={f:g} needs at least {need} "
                          f"(one false accept = {1 / max(n_neg, 1):.2g})")
        else:
            tars[f] = float(tar_c[far_c <= f + 1e-12].max())
    return tars, reasons


def _accuracy_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy at every ROC point and a threshold that reproduces it.

    ROC point ``k`` accepts ``score >= thr[k]``; every ``t`` in ``(thr[k+1], thr[k]]``
    gives the same decisions, and we return the midpoint (it generalises better to
    a held-out fold than the score itself). The ends get a margin of the score range.
    """
    far, tar, thr = roc_curve(scores, same)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    acc = (np.nan_to_num(tar) * n_pos + (1.0 - np.nan_to_num(far)) * n_neg) / scores.size
    s = thr[1:]                                   # distinct scores, decreasing
    margin = max(float(s[0] - s[-1]), 1e-6)
    lower = np.r_[s[1:], s[-1] - 2 * margin]      # thr[k+1] for k = 1..m
    cand = np.r_[s[0] + margin, (s + lower) / 2]
    return acc, cand


def best_threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Best accuracy over all thresholds and the threshold achieving it (midpoint between scores).

    Ties between equally good thresholds go to the highest threshold.
    """
    scores, same = _check(scores, same)
    acc, cand = _accuracy_curve(scores, same)
    i = int(np.argmax(acc))
    return float(acc[i]), float(cand[i])


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided correctly when accepting ``score >= threshold``."""
    scores, same = _check(scores, same)
    return float(np.mean((scores >= threshold) == same))


@dataclass
class KFoldResult:
    """k-fold verification accuracy: mean and population std over folds, each fold's accuracy and threshold."""
    mean: float
    std: float
    accuracies: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> KFoldResult:
    """The LFW protocol: for each fold, pick the best threshold on the *other* folds and
    measure accuracy on the held-out one. ``std`` is the population std over folds
    (as insightface and the LFW results page report it).
    """
    scores, same = _check(scores, same)
    folds = np.asarray(folds).ravel()
    if folds.shape != scores.shape:
        raise ValueError(f"folds {folds.shape} must match scores {scores.shape}")
    ids = np.unique(folds)
    if ids.size < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {ids.tolist()}")
    accs, thrs = [], []
    for k in ids:
        test = folds == k
        _, t = best_threshold_accuracy(scores[~test], same[~test])
        thrs.append(t)
        accs.append(float(np.mean((scores[test] >= t) == same[test])))
    return KFoldResult(float(np.mean(accs)), float(np.std(accs)), accs, thrs)


def tar_interval(scores: np.ndarray, same: np.ndarray, id_a: np.ndarray, id_b: np.ndarray,
                 fars: tuple[float, ...] = (1e-2, 1e-3, 1e-4), *, rounds: int = 200, level: float = 0.95,
                 seed: int = 0) -> dict[float, tuple[float, float] | None]:
    """A ``level`` confidence interval of TAR at each FAR from a bootstrap over identities.

    Each round draws the protocol's identities with replacement (``id_a``/``id_b``: the identity of each pair's
    two faces, any integer labels); a pair counts as often as its people were drawn (a genuine pair ``k``
    times for a person drawn ``k`` times, an impostor pair ``k_a * k_b`` times), the threshold is the one
    whose weighted FAR is at most ``far``, and TAR is the weighted share of genuine pairs above it. Pairs of
    one person are not independent, so resampling people, not pairs, gives the honest width (Bolle et al.,
    "Error analysis of pattern recognition systems: the subsets bootstrap", CVIU 2004). An interval is
    None where the protocol holds fewer than ``1/far`` impostor pairs. Two models on the same pairs whose
    intervals overlap are not shown different by this test.
    """
    scores, same = _check(scores, same)
    ids, inv = np.unique(np.r_[np.asarray(id_a), np.asarray(id_b)], return_inverse=True)
    ia, ib = inv[:len(scores)], inv[len(scores):]
    neg = ~same
    order = np.argsort(-scores[neg], kind="stable")
    s_neg, a_neg, b_neg = scores[neg][order], ia[neg][order], ib[neg][order]
    g_order = np.argsort(-scores[same], kind="stable")
    s_pos, a_pos = scores[same][g_order], ia[same][g_order]
    wanted = [f for f in fars if neg.sum() >= min_impostors_for_far(f) and same.any()]
    samples: dict[float, list[float]] = {f: [] for f in wanted}
    # the total impostor weight from each pair of people's count (not from every pair), and the threshold from the
    # top of the impostor ranking only: a round costs O(people pairs + top), not O(all pairs)
    keys = a_neg.astype(np.int64) * len(ids) + b_neg
    if len(ids) ** 2 <= 50_000_000:  # count into a dense grid of people pairs: no sort of every pair
        grid = np.bincount(keys, minlength=len(ids) ** 2)
        pair_key = np.flatnonzero(grid)
        pair_n = grid[pair_key]
    else:
        pair_key, pair_n = np.unique(keys, return_counts=True)
    pa, pb = pair_key // len(ids), pair_key % len(ids)
    top = min(len(s_neg), max(20_000, int(8 * max(wanted, default=0) * len(s_neg))))
    rng = np.random.default_rng(seed)
    for _ in range(rounds if wanted else 0):
        k = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)).astype(np.float64)
        total, w_pos = float((pair_n * k[pa] * k[pb]).sum()), k[a_pos]
        if total == 0 or w_pos.sum() == 0:
            continue
        far_c = np.cumsum(k[a_neg[:top]] * k[b_neg[:top]]) / total  # FAR when accepting the top j+1 impostors
        if far_c[-1] < max(wanted) and top < len(s_neg):  # this draw thinned the top: rank every impostor
            far_c = np.cumsum(k[a_neg] * k[b_neg]) / total
        tar_c = np.cumsum(w_pos) / w_pos.sum()
        for f in wanted:
            j = int(np.searchsorted(far_c, f + 1e-12, side="right"))  # impostors that may be accepted
            thr = s_neg[j] if j < len(s_neg) else -np.inf           # accept strictly above the first refused
            n_acc = int(np.searchsorted(-s_pos, -thr, side="left"))  # genuine scores > thr
            samples[f].append(float(tar_c[n_acc - 1]) if n_acc else 0.0)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {f: (tuple(float(v) for v in np.percentile(samples[f], [lo, hi])) if f in wanted and samples[f]
                else None) for f in fars}  # type: ignore[misc]

"""Verification metrics against hand-computed cases and independent definitions."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.evaluation.metrics import (accuracy_at, auc, best_threshold_accuracy, eer, kfold_accuracy,
                                        min_impostors_for_far, roc_curve, tar_at_far)

# scores, genuine?  (hand-worked example used by several tests)
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
Y = np.array([1, 1, 0, 1, 0, 0], bool)


def test_roc_points_by_hand():
    far, tar, thr = roc_curve(S, Y)
    # accept >= t for each distinct score, from +inf down
    np.testing.assert_allclose(far, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tar, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert np.isinf(thr[0]) and list(thr[1:]) == list(S)
    # area: FAR 0..1/3 at TAR 2/3, then FAR 1/3..1 at TAR 1 (= 8 of the 9 genuine/impostor orderings)
    assert auc(far, tar) == pytest.approx(1 / 3 * 2 / 3 + 2 / 3 * 1)


def test_ties_are_accepted_together():
    far, tar, thr = roc_curve(np.array([0.5, 0.5, 0.1]), np.array([True, False, False]))
    np.testing.assert_allclose(far, [0, 0.5, 1])
    np.testing.assert_allclose(tar, [0, 1, 1])


def test_perfect_separation():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    scores = np.where(same, rng.uniform(0.6, 1, 600), rng.uniform(-1, 0.5, 600))
    far, tar, _ = roc_curve(scores, same)
    assert auc(far, tar) == pytest.approx(1.0)
    lo, hi = scores[~same].max(), scores[same].min()
    rate, thr = eer(scores, same)
    assert rate == pytest.approx(0.0) and lo < thr <= hi
    acc, t = best_threshold_accuracy(scores, same)
    assert acc == 1.0 and lo < t <= hi
    res = kfold_accuracy(scores, same, np.arange(600) % 10)
    assert res.mean == 1.0 and res.std == 0.0 and len(res.thresholds) == 10
    tars, reasons = tar_at_far(scores, same, fars=(1e-2,))
    assert tars[1e-2] == 1.0 and not reasons


def test_inverted_scores_give_auc_zero():
    same = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    scores = np.where(same, -1.0, 1.0) + np.linspace(0, 0.1, 100)
    far, tar, _ = roc_curve(scores, same)
    assert auc(far, tar) == pytest.approx(0.0)
    assert eer(scores, same)[0] == pytest.approx(1.0)


def test_random_scores_are_chance():
    rng = np.random.default_rng(1)
    scores, same = rng.standard_normal(20000), rng.random(20000) < 0.5
    far, tar, _ = roc_curve(scores, same)
    assert auc(far, tar) == pytest.approx(0.5, abs=0.02)
    assert eer(scores, same)[0] == pytest.approx(0.5, abs=0.02)
    assert kfold_accuracy(scores, same, np.arange(20000) % 10).mean == pytest.approx(0.5, abs=0.02)


def test_eer_hand_case_and_interpolation():
    # at threshold 0.7: FAR = 1/3 (0.7 accepted) and FRR = 1/3 (0.6 rejected): the EER is exactly 1/3
    rate, thr = eer(S, Y)
    assert rate == pytest.approx(1 / 3) and thr == pytest.approx(0.7)
    # 2 genuine [0.9, 0.3], 2 impostor [0.6, 0.1]: ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1);
    # FAR-FRR goes -1, -.5, 0 -> the crossing is the point FAR = FRR = 0.5 at threshold 0.6
    rate, thr = eer(np.array([0.9, 0.6, 0.3, 0.1]), np.array([True, False, True, False]))
    assert rate == pytest.approx(0.5) and thr == pytest.approx(0.6)
    # a crossing between points: genuine [1, .5, .4, .3], impostor [.45]: FAR jumps 0 -> 1
    # at FRR 0.5, so FAR - FRR goes -0.5 -> +0.5 and interpolates to 0.5 halfway between .5 and .45
    rate, thr = eer(np.array([1, .5, .45, .4, .3]), np.array([1, 1, 0, 1, 1], bool))
    assert rate == pytest.approx(0.5) and thr == pytest.approx(0.475)


def test_tar_at_far_exact_and_refused():
    # 1000 impostors with distinct scores 0.000..0.999, 100 genuines at 0.9955..1.005 (50 above 0.999)
    imp = np.arange(1000) / 1000
    gen = 0.9955 + np.arange(100) / 10000
    scores, same = np.r_[imp, gen], np.r_[np.zeros(1000, bool), np.ones(100, bool)]
    tars, reasons = tar_at_far(scores, same, fars=(1e-2, 1e-3, 1e-4))
    # FAR <= 1e-2 allows 10 impostors (0.990..0.999) above threshold: every genuine passes
    assert tars[1e-2] == 1.0
    # FAR <= 1e-3 allows one impostor (0.999), so the threshold may drop to just above 0.998:
    # genuines 0.9955 + k/1e4 > 0.998 <=> k >= 26, i.e. 74 of 100
    assert tars[1e-3] == pytest.approx(74 / 100)
    assert tars[1e-4] is None and "1000 impostor pairs" in reasons[1e-4] and "10000" in reasons[1e-4]
    assert min_impostors_for_far(1e-3) == 1000


def test_best_threshold_hand_case():
    acc, thr = best_threshold_accuracy(S, Y)
    # accepting {0.9, 0.8} or {0.9..0.6} both give 5/6; the higher threshold wins the tie
    assert acc == pytest.approx(5 / 6) and 0.7 < thr <= 0.8
    assert accuracy_at(S, Y, thr) == pytest.approx(5 / 6)


def test_kfold_threshold_never_sees_test_fold():
    rng = np.random.default_rng(3)
    n = 1000
    same = rng.random(n) < 0.5
    scores = np.where(same, rng.normal(1, 1, n), rng.normal(-1, 1, n))
    folds = np.arange(n) % 10
    base = kfold_accuracy(scores, same, folds)
    for k in range(10):
        train = folds != k
        # the fold's threshold is exactly the best threshold of the other nine folds
        assert base.thresholds[k] == pytest.approx(best_threshold_accuracy(scores[train], same[train])[1])
        # scrambling the test fold (scores and labels) leaves its threshold unchanged
        s2, y2 = scores.copy(), same.copy()
        s2[~train] = rng.uniform(-50, 50, (~train).sum())
        y2[~train] = ~y2[~train]
        assert kfold_accuracy(s2, y2, folds).thresholds[k] == base.thresholds[k]
    # and a fold whose own optimum differs is scored with the other folds' threshold, not its own
    s3 = scores.copy()
    s3[folds == 0] += 3.0          # fold 0 shifted: its best threshold moves, the CV one does not
    res = kfold_accuracy(s3, same, folds)
    own_best = best_threshold_accuracy(s3[folds == 0], same[folds == 0])[0]
    assert res.accuracies[0] < own_best - 0.2
    assert res.mean == pytest.approx(np.mean(res.accuracies)) and res.std == pytest.approx(np.std(res.accuracies))


def test_input_validation():
    with pytest.raises(ValueError, match="same length"):
        roc_curve(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError, match="not finite"):
        roc_curve(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_accuracy(np.zeros(4), np.array([1, 0, 1, 0], bool), np.zeros(4))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=40))
def test_auc_is_the_mann_whitney_probability(pairs):
    scores = np.array([p[0] for p in pairs], float)
    same = np.array([p[1] for p in pairs])
    if same.all() or not same.any():
        return
    g, i = scores[same], scores[~same]
    # P(genuine > impostor) + 0.5 P(tie): the ROC area's independent definition
    expected = ((g[:, None] > i[None, :]).mean() + 0.5 * (g[:, None] == i[None, :]).mean())
    far, tar, _ = roc_curve(scores, same)
    assert auc(far, tar) == pytest.approx(expected)
    acc, thr = best_threshold_accuracy(scores, same)
    assert acc == pytest.approx(accuracy_at(scores, same, thr))
    # no threshold beats it
    for t in np.r_[np.unique(scores), np.inf]:
        assert accuracy_at(scores, same, t) <= acc + 1e-12


def test_evaluate_pairs_flags_lopsided_protocols():
    """Every-pair protocols (all_pairs) are >99% impostors: accuracy says little, the report says so."""
    from distill.data.pairs import all_pairs
    from distill.evaluation import PairIndex, evaluate_pairs

    labels = np.repeat(np.arange(100), 2)                      # 200 images: 100 genuine of 19,900 pairs
    emb = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    res = evaluate_pairs(emb, PairIndex(*all_pairs(labels)), normalized=True)
    assert (res.n_genuine, res.n_impostor, res.n_folds) == (100, 19800, 10)
    assert any("0.5% of the pairs are genuine" in w and "99.50%" in w for w in res.warnings)
    assert res.tar(1e-4) is not None                           # 19,800 impostors resolve FAR = 1e-4
    balanced = PairIndex(np.arange(20), np.arange(20) + 20, np.arange(20) % 2 == 0, np.arange(20) % 2)
    assert not any("of the pairs are" in w for w in evaluate_pairs(emb, balanced, normalized=True).warnings)


def _people(n_ids: int, per: int, person_effect: float, seed: int = 0):
    """Every pair of ``n_ids`` people x ``per`` images: genuine scores N(2, 1) shifted by a per-person effect
    (some people are hard), impostors N(0, 1)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_ids), per)
    a, b = np.triu_indices(len(labels), 1)
    same = labels[a] == labels[b]
    effect = rng.normal(0, person_effect, n_ids)
    scores = np.where(same, 2 + effect[labels[a]] + rng.normal(0, 1, len(a)), rng.normal(0, 1, len(a)))
    return scores, same, labels[a], labels[b]


def test_tar_interval_brackets_the_estimate_and_counts_people_not_pairs():
    from distill.evaluation.metrics import tar_at_far, tar_interval

    scores, same, ia, ib = _people(120, 5, person_effect=1.0)
    point = tar_at_far(scores, same, (1e-2, 1e-3))[0]
    ci = tar_interval(scores, same, ia, ib, (1e-2, 1e-3), rounds=100)
    for f in (1e-2, 1e-3):
        lo, hi = ci[f]
        assert lo <= point[f] <= hi and 0 < hi - lo < 0.3
    # people who differ (a per-person effect) widen the interval: pairs of one person are not independent
    flat = tar_interval(*_people(120, 5, person_effect=0.0), (1e-2,), rounds=100)[1e-2]
    assert (ci[1e-2][1] - ci[1e-2][0]) > 1.5 * (flat[1] - flat[0])
    # more people, narrower
    many = tar_interval(*_people(360, 5, person_effect=1.0, seed=1), (1e-2,), rounds=100)[1e-2]
    assert many[1] - many[0] < ci[1e-2][1] - ci[1e-2][0]
    # too few impostors for the FAR: no interval, as no TAR
    assert tar_interval(scores[:300], same[:300], ia[:300], ib[:300], (1e-4,))[1e-4] is None


def test_evaluate_pairs_reports_the_interval_when_given_identities():
    from distill.evaluation import PairIndex, evaluate_pairs

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(60), 4)
    emb = rng.normal(0, 1, (60, 16))[labels] + rng.normal(0, 0.9, (240, 16))
    a, b = np.triu_indices(240, 1)
    pairs = PairIndex(a, b, labels[a] == labels[b], np.arange(len(a)) % 10)
    res = evaluate_pairs(emb, pairs, normalized=False, labels=labels, bootstrap=50)
    lo, hi = res.tar_interval[1e-2]
    assert lo <= res.tar(1e-2) <= hi and set(res.tar_interval) == {1e-2, 1e-3, 1e-4}
    assert evaluate_pairs(emb, pairs, normalized=False).tar_interval == {}     # off without identities
    assert type(res).from_dict(res.to_dict()).tar_interval == res.tar_interval  # through report.json
    from distill.evaluation.render import _tar_cell
    cell = _tar_cell(res, 1e-2)
    assert cell["text"].endswith("]") and "[" in cell["text"] and "bootstrap over identities" in cell["title"]


def _tar_interval_reference(scores, same, ia, ib, far, rounds, seed=0):
    """The subsets bootstrap written plainly: every pair weighted every round (what the fast path must equal)."""
    ids, inv = np.unique(np.r_[ia, ib], return_inverse=True)
    a, b = inv[:len(scores)], inv[len(scores):]
    on, op = np.argsort(-scores[~same], kind="stable"), np.argsort(-scores[same], kind="stable")
    sn, an, bn = scores[~same][on], a[~same][on], b[~same][on]
    sp, ap = scores[same][op], a[same][op]
    rng, out = np.random.default_rng(seed), []
    for _ in range(rounds):
        k = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)).astype(float)
        fc = np.cumsum(k[an] * k[bn]) / (k[an] * k[bn]).sum()
        tc = np.cumsum(k[ap]) / k[ap].sum()
        j = int(np.searchsorted(fc, far + 1e-12, side="right"))
        n = int(np.searchsorted(-sp, -(sn[j] if j < len(sn) else -np.inf), side="left"))
        out.append(tc[n - 1] if n else 0.0)
    return tuple(np.percentile(out, [2.5, 97.5]))


def test_tar_interval_fast_path_equals_the_plain_bootstrap():
    from distill.evaluation.metrics import tar_interval

    scores, same, ia, ib = _people(150, 6, person_effect=1.0, seed=3)   # 160k impostors: the top-of-ranking path
    fast = tar_interval(scores, same, ia, ib, (1e-3,), rounds=40)[1e-3]
    assert np.allclose(fast, _tar_interval_reference(scores, same, ia, ib, 1e-3, 40), rtol=0, atol=1e-12)

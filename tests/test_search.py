"""FAISS pair scores and search against plain numpy; IVF/HNSW recall; 1:N identification."""
from __future__ import annotations

import numpy as np
import pytest

from distill.evaluation.identify import gallery_probe_split, identify, identify_cross
from distill.evaluation.search import (build_index, default_nprobe, describe_index, exact_search_numpy,
                                       pair_scores, search)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2000, 128)).astype(np.float32) * rng.uniform(0.2, 3, (2000, 1)).astype(np.float32)


def test_pair_scores_match_numpy(vectors):
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2000, 500), rng.integers(0, 2000, 500)
    cos = (_unit(vectors.astype(np.float64))[a] * _unit(vectors.astype(np.float64))[b]).sum(1)
    np.testing.assert_allclose(pair_scores(vectors, a, b, normalized=True), cos, atol=1e-5)
    neg_dist = -np.linalg.norm(vectors.astype(np.float64)[a] - vectors.astype(np.float64)[b], axis=1)
    np.testing.assert_allclose(pair_scores(vectors, a, b, normalized=False), neg_dist, rtol=1e-4, atol=1e-4)
    # a pair with itself: cosine 1, distance 0
    assert pair_scores(vectors, [5], [5], True)[0] == pytest.approx(1.0, abs=1e-6)
    assert pair_scores(vectors, [5], [5], False)[0] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(IndexError, match="idx_b"):
        pair_scores(vectors, [0], [2000], True)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_search_matches_numpy(vectors, metric):
    gallery, queries = vectors[:1500], vectors[1500:1600]
    s, ids = search(build_index(gallery, metric, "flat"), queries, k=5)
    s_ref, ids_ref = exact_search_numpy(gallery, queries, 5, metric)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(s, axis=1) <= 1e-6)        # best first, higher = more similar


def _recall_at_1(kind: str, **kw) -> float:
    rng = np.random.default_rng(2)
    gallery = _unit(rng.standard_normal((10000, 64))).astype(np.float32)
    # probes: perturbed gallery members, like a second photo of an enrolled person
    truth = rng.integers(0, 10000, 300)
    probes = _unit(gallery[truth] + 0.08 * rng.standard_normal((300, 64))).astype(np.float32)
    exact = exact_search_numpy(gallery, probes, 1, "ip")[1][:, 0]
    ids = search(build_index(gallery, "ip", kind, **kw), probes, 1)[1][:, 0]
    return float(np.mean(ids == exact))


def test_ivf_recall_and_nprobe():
    index = build_index(np.random.default_rng(3).standard_normal((5000, 16)).astype(np.float32), "ip", "ivf")
    info = describe_index(index)
    assert info.kind == "ivf" and info.params["nprobe"] > 1 and info.params["nprobe"] == default_nprobe(
        info.params["nlist"])
    assert _recall_at_1("ivf") >= 0.99
    # nprobe is honoured: probing a single list loses neighbours on random data
    assert _recall_at_1("ivf", nlist=256, nprobe=1) < _recall_at_1("ivf", nlist=256, nprobe=64)


def test_hnsw_recall_and_ef_search():
    assert _recall_at_1("hnsw", ef_search=64) >= 0.99
    index = build_index(np.ones((10, 8), np.float32), "l2", "hnsw", ef_search=77)
    assert describe_index(index).params["efSearch"] == 77
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(np.ones((10, 8), np.float32), "ip", "lsh")


def test_gallery_probe_split():
    labels = np.array(["a", "a", "a", "b", "b", "c", "d", "d"])
    g, p = gallery_probe_split(labels, seed=0)
    assert sorted(set(labels[g])) == ["a", "b", "c", "d"] and len(g) == 4   # one per identity, c = distractor
    assert "c" not in labels[p] and len(p) == 4 and not set(g) & set(p)


def test_identification_ranks_constructed():
    e = np.eye(8, dtype=np.float32)
    emb = np.stack([e[0], e[0] + 0.1 * e[5],          # a: easy
                    e[1], e[1] + 0.2 * e[6],          # b: easy
                    e[3] + e[2] + 0.5 * e[5],         # c: both images are closer to the distractor x (cos .67)
                    e[3] - e[2] + 0.5 * e[5],         #    than to each other (cos .11), but closer to each
                    e[3], e[4]])                      #    other than to anyone else; x, y: single images
    labels = np.array(["a", "a", "b", "b", "c", "c", "x", "y"])
    for seed in range(4):        # whichever image of each identity is enrolled
        res = identify(emb, labels, normalized=True, ranks=(1, 2, 5), seed=seed)
        assert res.n_probes == 3 and res.n_gallery == 5 and res.n_distractors == 2
        assert res.rank1 == pytest.approx(2 / 3) and res.ranks[2] == 1.0 and res.rank5 == 1.0
    # the same with an approximate index
    assert identify(emb, labels, normalized=True, kind="hnsw", ranks=(1,)).rank1 == pytest.approx(2 / 3)
    # raw (L2) scoring ranks by distance: c's images are 2.0 apart, 1.12 from x and ~1.8 from a, b, y,
    # so the c probe's own image comes last (rank 5 of 5)
    res = identify(emb, labels, normalized=False, ranks=(1, 4, 5))
    assert res.rank1 == pytest.approx(2 / 3) and res.ranks[4] == pytest.approx(2 / 3) and res.rank5 == 1.0
    # no probes at all: a clear null result instead of a division by zero
    none = identify(np.eye(3, dtype=np.float32), ["p", "q", "r"], normalized=True)
    assert none.rank1 is None and "no identity has two images" in none.reason


def test_identification_cross_model():
    rng = np.random.default_rng(4)
    centres = _unit(rng.standard_normal((50, 32)))
    labels = np.repeat(np.arange(50), 4)
    teacher = _unit(centres[labels] + 0.05 * rng.standard_normal((200, 32)))
    good_student = _unit(teacher + 0.02 * rng.standard_normal((200, 32)))
    bad_student = _unit(rng.standard_normal((200, 32)))
    assert identify_cross(good_student, teacher, labels, True).rank1 == 1.0
    assert identify_cross(bad_student, teacher, labels, True).rank1 < 0.2
    res = identify_cross(rng.standard_normal((200, 16)), teacher, labels, True)
    assert res.rank1 is None and "dim 16" in res.reason and res.cross_model

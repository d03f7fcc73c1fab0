"""FAISS pair scores and nearest-neighbour search, with scores that read "higher = more similar".

Scoring convention (the whole evaluation uses it):

* normalised models (FaceNet, timm, students trained that way): ``metric="ip"``, the inner product of
  L2-normalised float32 vectors, i.e. cosine similarity in [-1, 1];
* raw models (dlib's ResNet, whose published rule is "same person if the Euclidean distance < 0.6"):
  ``metric="l2"``, the **negative plain (not squared) Euclidean distance**, so a threshold of -0.6
  is dlib's rule and thresholds stay in the model's own distance units.

Example::

    s = pair_scores(emb, idx_a, idx_b, normalized=True)        # cosine per pair
    index = build_index(gallery, "ip", kind="hnsw", ef_search=128)
    scores, ids = search(index, probes, k=5)                   # (Q, 5) each, best first
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

Metric = Literal["ip", "l2"]
IndexKind = Literal["flat", "ivf", "hnsw"]


def metric_for(normalized: bool) -> Metric:
    """The metric the scoring convention uses for a model."""
    return "ip" if normalized else "l2"


def as_f32(x: np.ndarray, *, normalize: bool = False) -> np.ndarray:
    """C-contiguous float32 copy (FAISS needs that), optionally L2-normalised row by row."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors (N, D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{int((~np.isfinite(x).all(1)).sum())} vectors contain NaN/inf")
    if normalize:
        faiss.normalize_L2(x)
    return x


def pair_scores(emb: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray, normalized: bool,
                emb_b: np.ndarray | None = None) -> np.ndarray:
    """Score of each pair ``(emb[idx_a[i]], emb_b[idx_b[i]])`` (``emb_b`` defaults to ``emb``).

    Cosine for normalised models (vectors are re-normalised defensively), negative
    Euclidean distance for raw ones. Returns float64 ``(P,)``.
    """
    x = as_f32(emb, normalize=normalized)
    y = x if emb_b is None else as_f32(emb_b, normalize=normalized)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding dims differ: {x.shape[1]} vs {y.shape[1]}")
    ia = np.ascontiguousarray(idx_a, dtype=np.int64).ravel()
    ib = np.ascontiguousarray(idx_b, dtype=np.int64).ravel()
    if ia.shape != ib.shape:
        raise ValueError(f"idx_a {ia.shape} and idx_b {ib.shape} must have the same length")
    for name, idx, n in (("idx_a", ia, len(x)), ("idx_b", ib, len(y))):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"{name} has indices outside 0..{n - 1}")
    out = np.empty(ia.size, dtype=np.float32)
    d = x.shape[1]
    if normalized:
        faiss.pairwise_indexed_inner_product(d, ia.size, faiss.swig_ptr(x), faiss.swig_ptr(ia),
                                             faiss.swig_ptr(y), faiss.swig_ptr(ib), faiss.swig_ptr(out))
        return out.astype(np.float64)
    faiss.pairwise_indexed_L2sqr(d, ia.size, faiss.swig_ptr(x), faiss.swig_ptr(ia),
                                 faiss.swig_ptr(y), faiss.swig_ptr(ib), faiss.swig_ptr(out))
    return -np.sqrt(np.maximum(out.astype(np.float64), 0.0))


def default_nlist(n: int) -> int:
    """~4 sqrt(N) lists, but at least 39 training points per centroid (FAISS's k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """Probe a quarter of the lists (at least 16): a recall-first default, never a silent 1.

    Clustered data (face embeddings with a true match) needs far fewer probes than
    uniformly random vectors; ``benchmarks/evaluation.py`` measures the trade-off.
    """
    return min(nlist, max(16, nlist // 4))


@dataclass
class IndexInfo:
    """What a FAISS index is: its kind, metric, size and search parameters."""
    kind: str
    metric: str
    ntotal: int
    dim: int
    params: dict


def build_index(vectors: np.ndarray, metric: Metric, kind: IndexKind = "flat", *, nlist: int | None = None,
                nprobe: int | None = None, ef_search: int | None = None, hnsw_m: int = 32,
                ef_construction: int = 200, seed: int = 0) -> faiss.Index:
    """A FAISS index over ``vectors`` (normalised first when ``metric="ip"``).

    * ``flat``: exact ``IndexFlatIP`` / ``IndexFlatL2``.
    * ``ivf``: ``IndexIVFFlat``; ``nlist`` defaults to :func:`default_nlist`, ``nprobe`` to
      :func:`default_nprobe` (recall vs speed: raise it for recall).
    * ``hnsw``: ``IndexHNSWFlat`` with ``hnsw_m`` links; ``ef_search`` (default 128) trades speed for recall.

    :func:`describe_index` reports the settings used.
    """
    if metric not in ("ip", "l2"):
        raise ValueError(f"unknown metric {metric!r}; use 'ip' (normalised models) or 'l2' (raw ones)")
    x = as_f32(vectors, normalize=metric == "ip")
    n, d = x.shape
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = nlist or default_nlist(n)
        if nlist > n:
            raise ValueError(f"nlist={nlist} is larger than the {n} vectors to index")
        quantizer = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, fmetric)
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1      # small galleries: no warning spam, still correct
        index.train(x)
        index.nprobe = nprobe or default_nprobe(nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, fmetric)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search or 128
    else:
        raise ValueError(f"unknown index kind {kind!r}; use 'flat', 'ivf' or 'hnsw'")
    index.add(x)
    return index


def describe_index(index: faiss.Index) -> IndexInfo:
    """Kind, metric, size and the search settings of an index built by :func:`build_index`."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        kind, params = "ivf", {"nlist": ivf.nlist, "nprobe": ivf.nprobe}
    elif isinstance(index, faiss.IndexHNSW):
        kind, params = "hnsw", {"M": index.hnsw.nb_neighbors(1), "efSearch": index.hnsw.efSearch,
                                "efConstruction": index.hnsw.efConstruction}
    else:
        kind, params = "flat", {}
    return IndexInfo(kind, index_metric(index), index.ntotal, index.d, params)


def index_metric(index: faiss.Index) -> Metric:
    """``"ip"`` or ``"l2"``: the metric a FAISS index was built with."""
    return "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery items per query: ``(scores, ids)``, both ``(Q, k)``, best first.

    Scores follow the module convention (cosine, or negative plain L2 distance);
    missing results (k > gallery, or an IVF probe that found too few) have id -1 and score -inf.
    """
    metric = index_metric(index)
    q = as_f32(queries, normalize=metric == "ip")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dim {q.shape[1]} but the index holds dim {index.d}")
    dist, ids = index.search(q, k)
    scores = dist.astype(np.float64) if metric == "ip" else -np.sqrt(np.maximum(dist.astype(np.float64), 0))
    scores[ids < 0] = -np.inf
    return scores, ids


def exact_search_numpy(gallery: np.ndarray, queries: np.ndarray, k: int, metric: Metric
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy reference (matrix product + argpartition), same output convention as :func:`search`."""
    g = as_f32(gallery, normalize=metric == "ip")
    q = as_f32(queries, normalize=metric == "ip")
    sim = q @ g.T
    if metric == "l2":
        sim = -np.sqrt(np.maximum((q * q).sum(1)[:, None] - 2 * sim + (g * g).sum(1)[None, :], 0))
    k = min(k, g.shape[0])
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(sim, part, 1)
    order = np.argsort(-top, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, 1)
    return np.take_along_axis(sim, ids, 1).astype(np.float64), ids

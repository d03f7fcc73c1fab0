"""1:N identification with FAISS: one gallery image per identity, the rest are probes.

Identities with a single image go into the gallery as distractors (they can be
returned but never be right). Rank-k accuracy = fraction of probes whose own
identity's gallery image is among the k best matches.

Example::

    res = identify(emb, labels, normalized=True)             # IdentificationResult: res.rank1, res.rank5
    cross = identify_cross(student_emb, teacher_emb, labels, normalized=True)  # student probes, teacher gallery
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .results import IdentificationResult
from .search import IndexKind, build_index, metric_for, search


def gallery_probe_split(labels: Sequence, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(gallery_idx, probe_idx)``: per identity one seeded-random gallery image, the rest probes;
    single-image identities are gallery distractors."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    gallery, probes = [], []
    _, inverse = np.unique(labels, return_inverse=True)
    for ident in range(inverse.max() + 1 if inverse.size else 0):
        members = np.nonzero(inverse == ident)[0]
        pick = members[rng.integers(len(members))]
        gallery.append(pick)
        probes.extend(m for m in members if m != pick)
    return np.sort(np.asarray(gallery, dtype=np.int64)), np.sort(np.asarray(probes, dtype=np.int64))


def _rank_accuracy(probe_emb: np.ndarray, gallery_emb: np.ndarray, probe_labels: np.ndarray,
                   gallery_labels: np.ndarray, normalized: bool, ranks: tuple[int, ...], kind: IndexKind,
                   **index_kw) -> dict:
    k = min(max(ranks), len(gallery_emb))
    index = build_index(gallery_emb, metric_for(normalized), kind, **index_kw)
    _, ids = search(index, probe_emb, k)
    hit = gallery_labels[np.where(ids >= 0, ids, 0)] == probe_labels[:, None]
    hit &= ids >= 0
    first = np.where(hit.any(1), hit.argmax(1), k)  # 0-based rank of the correct match (k = not found)
    return {r: float(np.mean(first < r)) for r in ranks}


def identify(emb: np.ndarray, labels: Sequence, normalized: bool, *, ranks: tuple[int, ...] = (1, 5),
             seed: int = 0, kind: IndexKind = "flat", gallery_emb: np.ndarray | None = None,
             **index_kw) -> IdentificationResult:
    """Rank-k identification accuracy of embeddings ``emb`` (N, D) with identity ``labels`` (N,).

    ``gallery_emb`` (N, D'), embeddings of the *same* images by another model, builds the gallery
    instead (cross-model search); ``kind``/``index_kw`` choose the FAISS index (exact by default).
    Without probes (no identity has two images) or with differing dims the ranks are None and
    ``reason`` says why.

    Raises:
        ValueError: ``labels`` or ``gallery_emb`` do not have one row per image.
    """
    labels = np.asarray(labels)
    if len(labels) != len(emb):
        raise ValueError(f"{len(labels)} labels for {len(emb)} embeddings")
    g_idx, p_idx = gallery_probe_split(labels, seed)
    n_ids = int(np.unique(labels).size)
    cross = gallery_emb is not None
    info = dict(n_identities=n_ids, n_gallery=int(g_idx.size), n_probes=int(p_idx.size),
                n_distractors=int(n_ids - np.unique(labels[p_idx]).size), index=kind, cross_model=cross)
    none = {r: None for r in ranks}
    if p_idx.size == 0:
        return IdentificationResult(**info, ranks=none, reason="no identity has two images, so there are no probes")
    gallery = emb if gallery_emb is None else gallery_emb
    if gallery.shape[0] != emb.shape[0]:
        raise ValueError(f"gallery_emb has {gallery.shape[0]} rows, expected one per image ({emb.shape[0]})")
    if gallery.shape[1] != emb.shape[1]:
        return IdentificationResult(**info, ranks=none, reason=(
            f"probe dim {emb.shape[1]} != gallery dim {gallery.shape[1]}: cross-model search is only meaningful "
            f"in a shared embedding space"))
    return IdentificationResult(**info, ranks=_rank_accuracy(emb[p_idx], gallery[g_idx], labels[p_idx],
                                                             labels[g_idx], normalized, ranks, kind, **index_kw))


def identify_cross(probe_emb: np.ndarray, gallery_emb: np.ndarray, labels: Sequence, normalized: bool,
                   **kw) -> IdentificationResult:
    """Student probes against a teacher-built gallery (same images; meaningful only when dims match,
    otherwise the result carries ``reason`` and null ranks). ``normalized``: the teacher's convention."""
    return identify(probe_emb, labels, normalized, gallery_emb=gallery_emb, **kw)

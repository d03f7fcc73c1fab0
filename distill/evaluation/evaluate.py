"""One model on prepared evaluation data: embed, verify on every protocol, identify, fidelity, cost.

Example::

    res, emb = evaluate_model("dlib_resnet", "teacher", teacher, evald, cfg.eval, cost=measure_cost(teacher, 150),
                              cache_dir=cfg.data.cache_dir / "embeddings", seed=cfg.seed)
    res.protocols["DevTest"].accuracy_mean
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .extract import extract_embeddings
from .identify import identify, identify_cross
from .results import CostResult, ModelResult
from .verify import evaluate_pairs, fidelity

if TYPE_CHECKING:
    from distill.config import EvalSettings
    from distill.data.protocols import EvalData


def _embed(embedder: Any, role: str, data: "EvalData", settings: "EvalSettings", cache_dir: Path | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """``((N, D) embeddings, (N,) bool: rows computed)`` of the faces this role is scored on: every face for a
    teacher; for a student only those of its protocols and the held-out people (teacher-only protocols, e.g.
    all of LFW View 2, are skipped; their rows stay zero and are never read)."""
    kw = dict(batch_size=settings.batch_size, flip_tta=settings.flip_tta, cache_dir=cache_dir)
    every = np.ones(len(data.faces), dtype=bool)
    if role == "teacher":
        return extract_embeddings(embedder, data.faces, **kw), every
    used = np.zeros(len(data.faces), dtype=bool)
    used[data.held_out] = True
    for p in data.protocols:
        if not p.teacher_only:
            used[p.pairs.idx_a] = True
            used[p.pairs.idx_b] = True
    if used.all():
        return extract_embeddings(embedder, data.faces, **kw), every
    idx = np.flatnonzero(used)
    part = extract_embeddings(embedder, np.asarray(data.faces[idx]), **kw)
    emb = np.zeros((len(data.faces), part.shape[1]), np.float32)
    emb[idx] = part
    return emb, used


def evaluate_model(name: str, role: str, embedder: Any, data: "EvalData", settings: "EvalSettings", *,
                   cost: CostResult, cache_dir: Path | None, seed: int = 0, teacher_emb: np.ndarray | None = None,
                   teacher_name: str | None = None, project: Callable[[np.ndarray], np.ndarray] | None = None,
                   extra: dict | None = None) -> tuple[ModelResult, np.ndarray]:
    """Evaluate ``embedder`` on ``data``: ``(ModelResult, embeddings (N, D))``.

    Students skip teacher-only protocols; with ``teacher_emb`` (the teacher's embeddings of the
    same faces) a student also gets fidelity (after ``project`` into the teacher's space, when
    given) and student-probes-against-teacher-gallery identification. Identification and
    fidelity use the faces of people the student never trained on (``data.held_out``).
    """
    emb, computed = _embed(embedder, role, data, settings, cache_dir)
    normalized = embedder.normalized
    scored = emb
    if role == "student" and settings.student_score != "auto":
        normalized = settings.student_score == "cosine"
        if normalized and not embedder.normalized:  # cosine of raw outputs: score their directions
            scored = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    protocols = {p.name: evaluate_pairs(scored, p.pairs, normalized, labels=data.labels, bootstrap=settings.bootstrap)
                 for p in data.protocols if role == "teacher" or not p.teacher_only}
    ident = None
    if settings.identification and data.held_out.sum() > 1:
        sel = data.held_out
        ident = {"held-out": identify(scored[sel], data.labels[sel], normalized, seed=seed)}
        if teacher_emb is not None and teacher_emb.shape[1] == emb.shape[1]:
            ident["student-probes-vs-teacher-gallery"] = identify_cross(
                emb[sel], teacher_emb[sel], data.labels[sel], embedder.normalized, seed=seed)
    fid = None
    if teacher_emb is not None:
        mine = project(emb) if project is not None else emb
        if mine.shape[1] == teacher_emb.shape[1]:
            sel = data.held_out if data.held_out.any() else computed
            fid = fidelity(mine[sel], teacher_emb[sel])
    return ModelResult(name=name, role=role, cost=cost, protocols=protocols, fidelity=fid,  # type: ignore[arg-type]
                       identification=ident, teacher=teacher_name, extra=extra or {}), emb


def train_fidelity(student: Any, teacher: Any, faces: Any, *, sample: int = 1000, seed: int = 0,
                   project: Callable[[np.ndarray], np.ndarray] | None = None,
                   batch_size: int = 128) -> dict[str, Any] | None:
    """Cosine to the teacher on a seeded sample of the training faces, clean (as aligned, no augmentation):
    beside the held-out fidelity, the underfitting (both low) or overfitting (train high, held-out low) signal.

    ``faces``: the training faces ``(N, S, S, 3)`` uint8 (a memmap or a lazy array); ``project`` maps the
    student's embeddings into the teacher's space when a head was learned. Returns the
    :class:`~distill.evaluation.results.FidelityResult` as a dict plus ``"sample"``, or None for a teacher
    that cannot embed (precomputed), embeddings of another dimension, or a sample with a face either model
    embeds as non-finite (the run's training already skipped such faces and counted them).
    """
    if sample <= 0 or not getattr(teacher, "can_embed", True) or len(faces) == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(faces), min(sample, len(faces)), replace=False))
    crops = np.stack([np.asarray(faces[int(i)]) for i in idx])
    try:
        t = extract_embeddings(teacher, crops, batch_size=batch_size)
        s = extract_embeddings(student, crops, batch_size=batch_size)
    except FloatingPointError:  # a face some model cannot embed (training skipped it too): no diagnostic
        return None
    s = project(s) if project is not None else s
    if s.shape != t.shape:
        return None
    return {**fidelity(s, t).to_dict(), "sample": int(len(idx))}

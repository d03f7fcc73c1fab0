"""The identity-leak guard: no training image may show a photo or a person the evaluation tests on.

Training on a photo of a person the evaluation then tests on inflates every number, and with unlabelled
photos no name can reveal it. Before training, every training image is compared with every evaluation
image of the run's student protocols, with four kinds of evidence (:data:`EVIDENCE`):

* ``identical``: the same file bytes (a copy);
* ``near_identical``: aligned faces whose 64-bit perceptual hashes (DCT pHash, the ``imagehash`` library)
  differ in at most ``near_duplicate_bits`` bits, or teacher embeddings at cosine ``>= near_duplicate_cosine``
  (a re-encoded, resized or re-coloured copy);
* ``same_name``: a labelled training identity whose name is an evaluation person's (an identity tree that
  shares people with the pairs list);
* ``same_person``: the teacher says it is one of the evaluation people. One pair's score cannot decide this:
  10k training x 2.7k evaluation images are 29M comparisons, and a per-pair FAR of 1e-4 alone would flag
  thousands of innocent images. The guard therefore (1) scores a training image against each evaluation
  *person*, by the cosine to that person's template (the unit mean of their evaluation embeddings: several
  photos of one person are better evidence than the closest one), (2) normalises each score by both sides'
  cohorts of impostor scores (adaptive symmetric score normalisation, "S-norm": Matejka et al., Interspeech
  2017; the cohort of a training image is its ``k`` best template scores, that of a template its best scores
  against the *other* people's evaluation images), (3) pools the evidence of the training image's close
  training neighbours (cosine above the teacher's FAR=1e-4 threshold on the evaluation impostor pairs: the
  same person's other photos in the training set speak too), and (4) flags the image when that pooled score
  exceeds the ``1 - innocent_rate`` quantile of the same statistic of the evaluation images against the
  *other* evaluation people, which is what an innocent image's best score looks like after all the
  comparisons it makes. RESULTS.md measures the rule where the truth is known (LFW's DevTest people's
  photos that the pairs list does not use, planted in the training set).

Evaluation people come from the protocols' identity labels; where a protocol has none (a ``.bin`` set)
the images joined by genuine pairs are one person.

Example::

    result = check_leaks(train_side, eval_side, LeakGuardSettings(), policy="exclude")
    result.flagged[0]          # Finding(train=12, eval=301, evidence='same_person', score=5.1)
    result.to_record(train_side, eval_side)["counts"]
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill.config import LeakGuardSettings

#: evidence kinds, strongest first (a training image is recorded under its strongest)
EVIDENCE = ("identical", "near_identical", "same_name", "same_person")
Log = Callable[[str], None]
#: the same-person rule calibrates a (1 - innocent_rate) quantile on the evaluation images: it needs at least
#: this many expected exceedances (3 / innocent_rate images: 300 at 1%); below, copies and names are checked
MIN_EXCEEDANCES = 3


@dataclass
class GuardSide:
    """One side of the check: ``names`` (shown in records), ``files`` (read for byte digests; None where a
    face has no file), aligned ``faces`` ``(N, S, S, 3)`` uint8, teacher ``embeddings`` ``(N, D)``, and
    ``people``: a person index per image (-1 unknown) with ``person_names``. ``embeddings`` None: a teacher
    that cannot embed these faces (precomputed): copies and names are checked, not people."""

    names: Sequence[str]
    files: Sequence[str | None]
    faces: Any
    embeddings: np.ndarray | None
    people: np.ndarray
    person_names: Sequence[str] = ()


class Rows:
    """Rows ``idx`` of a face array, read on access (a side's faces without copying the array)."""

    def __init__(self, faces: Any, idx: np.ndarray) -> None:
        self.faces, self.idx = faces, np.asarray(idx, dtype=np.int64)
        self.shape = (len(self.idx), *faces.shape[1:])

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: Any) -> np.ndarray:
        return np.asarray(self.faces[self.idx[i]])


@dataclass(frozen=True)
class Finding:
    """Training image ``train`` matched evaluation image ``eval`` by ``evidence`` (its score: bits for a
    perceptual hash, cosine for an embedding copy, the pooled normalised score for a person)."""

    train: int
    eval: int
    evidence: str
    score: float


@dataclass
class GuardResult:
    """What the guard checked and found; ``excluded`` is what the policy leaves out of training."""

    policy: str
    n_train: int
    n_eval: int
    flagged: list[Finding]
    threshold: float
    neighbour_cosine: float
    seconds: float
    checked: dict[str, str] = field(default_factory=dict)
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def counts(self) -> dict[str, int]:
        """Flagged training images per evidence kind."""
        return {k: sum(f.evidence == k for f in self.flagged) for k in EVIDENCE}

    def summary(self) -> str:
        """One line for the log."""
        c = self.counts()
        found = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in c.items() if n) or "nothing"
        act = {"exclude": f"{len(self.excluded)} excluded from training", "warn": "trained on anyway (policy warn)"}
        return (f"leak guard: {self.n_train} training x {self.n_eval} evaluation images "
                f"({self.n_train * self.n_eval / 1e6:.1f}M comparisons, {self.seconds:.1f} s): {found}"
                + (f"; {act[self.policy]}" if self.flagged else ""))

    def to_record(self, train: GuardSide, evald: GuardSide, limit: int | None = None) -> dict[str, Any]:
        """JSON-ready: settings, counts, and every flagged image with the evaluation image it matched."""
        rows = [{"train": train.names[f.train], "eval": evald.names[f.eval], "evidence": f.evidence,
                 "score": round(float(f.score), 4),
                 "eval_person": _person(evald, f.eval)} for f in self.flagged[:limit]]
        return {"policy": self.policy, "train_images": self.n_train, "eval_images": self.n_eval,
                "comparisons": self.n_train * self.n_eval, "seconds": round(self.seconds, 2),
                "same_person_threshold": round(float(self.threshold), 4),
                "neighbour_cosine": round(float(self.neighbour_cosine), 4), "checked": self.checked,
                "counts": self.counts(), "excluded": len(self.excluded), "flagged": rows}


def _person(side: GuardSide, i: int) -> str | None:
    p = int(side.people[i])
    return side.person_names[p] if 0 <= p < len(side.person_names) else None


# --------------------------------------------------------------------------- evidence
def file_digests(files: Sequence[str | None]) -> list[str | None]:
    """BLAKE2b digest of each file's bytes (None where there is no file or it cannot be read)."""
    out: list[str | None] = []
    for f in files:
        try:
            out.append(hashlib.blake2b(Path(f).read_bytes(), digest_size=16).hexdigest() if f else None)
        except OSError:
            out.append(None)
    return out


def perceptual_hashes(faces: Any, batch: int = 256) -> np.ndarray:
    """64-bit DCT perceptual hash (``imagehash.phash``) of each aligned face ``(N, S, S, 3)``: uint64 ``(N,)``."""
    import imagehash
    from PIL import Image

    out = np.zeros(len(faces), dtype=np.uint64)
    for a in range(0, len(faces), batch):
        for k, face in enumerate(np.asarray(faces[a:a + batch])):
            bits = imagehash.phash(Image.fromarray(face)).hash.flatten()
            out[a + k] = np.uint64(int("".join("1" if b else "0" for b in bits), 2))
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between every hash of ``a`` ``(N,)`` and of ``b`` ``(M,)``: int ``(N, M)``."""
    x = np.bitwise_xor(a[:, None], b[None, :])
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _chunks(n: int, size: int = 4096) -> list[slice]:
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


@dataclass
class Cohort:
    """The evaluation side as the same-person rule sees it: one template per evaluation person (the unit mean
    of that person's evaluation embeddings), each template's score cohort (the mean ``mean`` and deviation
    ``std`` ``(P,)`` of its ``k`` best cosines to *other* people's evaluation images, for S-norm; ``best``
    ``(L, P)`` those cosines, descending, and ``best_people`` whose they are, for leaving a person out), and
    the FAR=1e-4 and 1e-5 cosines of the image-level impostor pairs (at most the highest, few images)."""

    emb: np.ndarray
    people: np.ndarray
    templates: np.ndarray
    k: int
    best: np.ndarray
    best_people: np.ndarray
    far_1e4: float
    far_1e5: float = 1.0

    @classmethod
    def of(cls, emb: np.ndarray, people: np.ndarray, k: int = 300) -> "Cohort":
        """Measure the cohort on the evaluation images (``emb`` unit rows ``(M, D)``, ``people`` ``(M,)`` a person
        per row, any integers)."""
        people = np.unique(people, return_inverse=True)[1].astype(np.int64)
        n_people = int(people.max(initial=-1)) + 1
        templates = np.zeros((n_people, emb.shape[1]), np.float32)
        np.add.at(templates, people, emb)
        templates = _unit(templates)
        k = max(2, min(k, n_people // 4, len(emb) // 4))
        # k best plus room to leave out the most-photographed person (capped: beyond it, fewer than k remain)
        depth = min(len(emb), k + min(int(np.bincount(people).max()), 256))
        best, whose = np.zeros((depth, n_people), np.float32), np.zeros((depth, n_people), np.int64)
        for c in _chunks(n_people, 512):
            sim = emb @ templates[c].T
            sim[people[:, None] == np.arange(c.start, c.stop)[None, :]] = -np.inf
            order = np.argsort(-sim, axis=0, kind="stable")[:depth]
            best[:, c], whose[:, c] = np.take_along_axis(sim, order, 0), people[order]
        return cls(emb, people, templates, k, best, whose, *_impostor_cosines(emb, people))

    @cached_property
    def mean(self) -> np.ndarray:
        """Each template's cohort mean ``(P,)``: of its ``k`` best cosines to other people's images."""
        return self.best[:self.k].mean(0)

    @cached_property
    def std(self) -> np.ndarray:
        """Each template's cohort deviation ``(P,)`` (at least 1e-6)."""
        return np.maximum(self.best[:self.k].std(0), 1e-6)

    def snorm(self, sim: np.ndarray, exclude: np.ndarray | None = None, mean: np.ndarray | None = None,
              std: np.ndarray | None = None) -> np.ndarray:
        """S-normalised scores of query rows against every evaluation person: ``sim`` ``(B, P)`` cosines to the
        templates; the query's own cohort is its ``k`` best (``exclude``: per-row person not in its cohort);
        ``mean``/``std``: the templates' cohort statistics (default :attr:`mean`, :attr:`std`)."""
        masked = sim if exclude is None else np.where(np.arange(sim.shape[1])[None, :] == exclude[:, None],
                                                      -np.inf, sim)
        top = np.sort(masked, axis=1)[:, -self.k - 1:-1]
        mq, sq = top.mean(1, keepdims=True), np.maximum(top.std(1, keepdims=True), 1e-6)
        mean = self.mean if mean is None else mean
        std = self.std if std is None else std
        return 0.5 * ((masked - mq) / sq + (masked - mean) / std)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """S-normalised scores ``(B, P)`` of unit rows ``x`` ``(B, D)`` against every evaluation person."""
        return self.snorm(x @ self.templates.T)

    def left_out(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Template cohort statistics with one person's images left out, where that person is among the
        template's ``k`` best: ``(person, template, mean, std)``, one row per such pair, sorted by person. The
        left-out images' places are taken by the next best cosines of other people (as deep as :attr:`best`
        goes)."""
        k, n = self.k, self.best.shape[1]
        top, whose = self.best[:k].astype(np.float64), self.best_people[:k]
        keys, inv = np.unique(whose * n + np.arange(n)[None, :], return_inverse=True)
        inv = inv.ravel()
        count = np.bincount(inv, minlength=len(keys))
        s1, s2 = (np.bincount(inv, w.ravel(), minlength=len(keys)) for w in (top, top ** 2))
        tail = self.best[k:].astype(np.float64)
        c1, c2 = (np.vstack([np.zeros((1, n)), np.cumsum(w, 0)]) for w in (tail, tail ** 2))
        person, t = keys // n, keys % n
        refill = np.minimum(count, len(tail))
        size = k - count + refill
        mean = (top.sum(0)[t] - s1 + c1[refill, t]) / size
        var = ((top ** 2).sum(0)[t] - s2 + c2[refill, t]) / size - mean ** 2
        std = np.sqrt(np.maximum(var, 1e-12))
        # where the person has images beyond the k best too, the refill above took them: take those pairs directly
        for r in np.flatnonzero(np.isin(keys, (self.best_people[k:] * n + np.arange(n)[None, :]).ravel())):
            kept = self.best[self.best_people[:, t[r]] != person[r], t[r]][:k].astype(np.float64)
            mean[r], std[r] = kept.mean(), max(float(kept.std()), 1e-12)
        return person, t, mean.astype(np.float32), std.astype(np.float32)

    def innocent_best(self) -> np.ndarray:
        """Each evaluation image's best score against the *other* evaluation people ``(M,)``: what an innocent
        image's best looks like. Each image's own person is left out of every template's cohort first
        (:meth:`left_out`; else the image and its own person's other photos would sit inside the cohorts it is
        compared with, and the calibration would read lower than an unseen person's score: measured with
        synthetic people in ``tests/test_leak_guard.py``)."""
        person, t, loo_mean, loo_std = self.left_out()
        bounds = np.searchsorted(person, np.arange(len(self.templates) + 1))
        out = np.zeros(len(self.emb), np.float32)
        for p in range(len(self.templates)):
            rows, at = np.flatnonzero(self.people == p), slice(bounds[p], bounds[p + 1])
            mean, std = self.mean.copy(), self.std.copy()
            mean[t[at]], std[t[at]] = loo_mean[at], np.maximum(loo_std[at], 1e-6)
            out[rows] = self.snorm(self.emb[rows] @ self.templates.T, np.full(len(rows), p), mean, std).max(1)
        return out

    def closest_image(self, x: np.ndarray, person: np.ndarray) -> np.ndarray:
        """Each row's most similar evaluation image among ``person``'s (the image a finding names)."""
        sim = np.where(self.people[None, :] == person[:, None], x @ self.emb.T, -np.inf)
        return sim.argmax(1)


def _impostor_cosines(emb: np.ndarray, people: np.ndarray) -> tuple[float, float]:
    """The cosines at FAR=1e-4 and 1e-5 among every impostor pair of evaluation images (at most the highest)."""
    k = max(2, min(300, len(emb) // 4))
    tail = []
    for s in _chunks(len(emb), 1024):
        sim = emb[s] @ emb.T
        sim[people[s, None] == people[None, :]] = -np.inf
        tail.append(np.sort(sim, axis=1)[:, -max(1, k // 10):].ravel())
    n_imp = len(people) ** 2 - int((np.bincount(people).astype(np.int64) ** 2).sum())  # ordered impostor pairs
    pooled = np.sort(np.concatenate(tail))[::-1]
    pooled = pooled[np.isfinite(pooled)] if np.isfinite(pooled).any() else np.ones(1, np.float32)
    # each pair appears twice (both directions): the (rate * n_imp)-th best pair is at twice that rank
    at = [float(pooled[min(max(1, int(rate * n_imp)) * 2, len(pooled)) - 1]) for rate in (1e-4, 1e-5)]
    return at[0], at[1]


def _pooled(z_best: np.ndarray, best: np.ndarray, z_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
            emb: np.ndarray, candidates: np.ndarray, link: float, neighbours: int = 3) -> np.ndarray:
    """Each candidate's best score averaged with its close training neighbours' scores for the same evaluation
    person (neighbours: its ``neighbours`` nearest training images at cosine >= ``link``)."""
    out = z_best.copy()
    neighbours = min(neighbours, len(emb) - 1)
    if neighbours < 1:
        return out
    for s in _chunks(len(candidates), 1024):
        rows = candidates[s]
        sim = emb[rows] @ emb.T
        sim[np.arange(len(rows)), rows] = -np.inf
        nb = np.argpartition(-sim, neighbours - 1, axis=1)[:, :neighbours]
        ok = np.take_along_axis(sim, nb, 1) >= link
        zn = z_of(nb, best[rows])
        out[rows] = (z_best[rows] + np.where(ok, zn, 0).sum(1)) / (1 + ok.sum(1))
    return out


def same_person(train_emb: np.ndarray, cohort: Cohort, innocent_rate: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(flag, matched eval image, pooled score, threshold)`` of the same-person rule (see the module docs);
    ``train_emb`` unit rows ``(N, D)``."""
    n = len(train_emb)
    best, z_best = np.zeros(n, np.int64), np.zeros(n, np.float32)
    for s in _chunks(n, 2048):
        z = cohort.scores(train_emb[s])
        best[s], z_best[s] = z.argmax(1), z.max(1)
    # what an innocent image's best looks like: evaluation images against the other evaluation people
    z_eval = cohort.innocent_best()
    threshold = float(np.quantile(z_eval, 1 - innocent_rate))

    def z_of(rows: np.ndarray, person: np.ndarray) -> np.ndarray:
        z = cohort.scores(train_emb[rows.ravel()])
        return z[np.arange(rows.size), np.repeat(person, rows.shape[1])].reshape(rows.shape)

    candidates = np.flatnonzero(z_best >= np.quantile(z_eval, 1 - min(0.5, 20 * innocent_rate)))
    pooled = _pooled(z_best, best, z_of, train_emb, candidates, cohort.far_1e4)
    flag = pooled >= threshold
    image = np.zeros(n, np.int64)
    for s in _chunks(n, 2048):
        image[s] = cohort.closest_image(train_emb[s], best[s])
    return flag, image, pooled, threshold


def _eval_people(people: np.ndarray) -> np.ndarray:
    """Person per evaluation image; unknown (-1) images become their own person."""
    out = np.asarray(people, dtype=np.int64).copy()
    unknown = out < 0
    out[unknown] = out.max(initial=-1) + 1 + np.arange(unknown.sum())
    return out


# --------------------------------------------------------------------------- the check
def check_leaks(train: GuardSide, evald: GuardSide, settings: LeakGuardSettings, *, policy: str,
                log: Log = print) -> GuardResult:
    """Compare every training image with every evaluation image (see the module docs); ``policy`` is
    ``exclude`` or ``warn`` (the caller does not call it with ``off``)."""
    t0 = time.perf_counter()
    best: dict[int, Finding] = {}

    def flag(i: int, j: int, kind: str, score: float) -> None:
        if i not in best or EVIDENCE.index(kind) < EVIDENCE.index(best[i].evidence):
            best[i] = Finding(int(i), int(j), kind, float(score))

    embedded = train.embeddings is not None and evald.embeddings is not None and len(evald.names) >= 8
    cohort = Cohort.of(_unit(evald.embeddings), _eval_people(evald.people)) if embedded else None
    enough = len(evald.names) * settings.innocent_rate >= MIN_EXCEEDANCES
    checked = _copies(train, evald, settings, flag, cohort)
    present = np.unique(evald.people[evald.people >= 0])  # people with an image on this side
    names = {evald.person_names[k]: int(k) for k in present if k < len(evald.person_names)}
    shared = {k: names[n] for k, n in enumerate(train.person_names) if n and n in names}
    if shared:
        first = {p: int(np.flatnonzero(evald.people == p)[0]) for p in set(shared.values())}
        for i in np.flatnonzero(np.isin(train.people, list(shared))):
            flag(int(i), first[shared[int(train.people[i])]], "same_name", 1.0)
    checked["same_name"] = f"{len(train.person_names)} training identities against {len(names)} evaluation people"
    if cohort is None or not enough:
        need = int(np.ceil(MIN_EXCEEDANCES / settings.innocent_rate))
        checked["same_person"] = ("not checked: no teacher embeddings of 8 or more evaluation faces" if cohort is None else
                                  f"not checked: {len(evald.names)} evaluation images cannot calibrate a "
                                  f"{settings.innocent_rate:g} innocent rate (it needs {need}; raise "
                                  f"data.leak_guard.innocent_rate or evaluate on more images)")
        return _result(best, policy, train, evald, float("nan"), float("nan"), t0, checked)
    hit, match, score, threshold = same_person(_unit(train.embeddings), cohort, settings.innocent_rate)
    for i in np.flatnonzero(hit):
        flag(int(i), int(match[i]), "same_person", float(score[i]))
    checked["same_person"] = (f"S-normalised teacher scores against each evaluation person's template, pooled "
                              f"over training neighbours at cosine >= "
                              f"{cohort.far_1e4:.3f} (FAR 1e-4 on the evaluation impostors); flagged above the "
                              f"{1 - settings.innocent_rate:.3g} quantile of the evaluation images' own best score "
                              f"against other evaluation people")
    return _result(best, policy, train, evald, threshold, cohort.far_1e4, t0, checked)


def _result(best: dict[int, Finding], policy: str, train: GuardSide, evald: GuardSide, threshold: float,
            link: float, t0: float, checked: dict[str, str]) -> GuardResult:
    flagged = sorted(best.values(), key=lambda f: (EVIDENCE.index(f.evidence), -f.score))
    excluded = np.array(sorted(f.train for f in flagged), dtype=np.int64) if policy == "exclude" \
        else np.zeros(0, dtype=np.int64)
    return GuardResult(policy, len(train.names), len(evald.names), flagged, threshold, link,
                       time.perf_counter() - t0, checked, excluded)


def _copies(train: GuardSide, evald: GuardSide, settings: LeakGuardSettings,
            flag: Callable[[int, int, str, float], None], cohort: Cohort | None) -> dict[str, str]:
    """Byte-identical files and near-identical faces: the teacher's cosine at ``near_duplicate_cosine``, or a
    perceptual hash within ``near_duplicate_bits`` of a face the teacher scores as the same person (cosine
    >= the FAR=1e-4 cosine of the evaluation impostors; aligned faces share their layout, so a close hash alone
    also joins different people: 33 of 4M LFW pairs of different people are within 6 bits, and half of
    re-encoded copies within 2). The cosine rule never sits below the FAR=1e-5 cosine of the evaluation
    impostors (a teacher whose embeddings barely differ would otherwise call everything a copy)."""
    eval_digest = {d: j for j, d in enumerate(file_digests(evald.files)) if d is not None}
    train_digest = file_digests(train.files)
    for i, d in enumerate(train_digest):
        if d is not None and d in eval_digest:
            flag(i, eval_digest[d], "identical", 1.0)
    ph_t, ph_e = perceptual_hashes(train.faces), perceptual_hashes(evald.faces)
    embedded = train.embeddings is not None and evald.embeddings is not None and cohort is not None
    link = cohort.far_1e4 if cohort is not None else None
    copy_cos = max(settings.near_duplicate_cosine, cohort.far_1e5) if cohort is not None else None
    te = _unit(train.embeddings) if embedded else None
    ee = _unit(evald.embeddings) if embedded else None
    for s in _chunks(len(ph_t), 2048):
        bits = hamming(ph_t[s], ph_e)
        if embedded:
            cos = te[s] @ ee.T
            hit = ((bits <= settings.near_duplicate_bits) & (cos >= link)) | (cos >= copy_cos)
        else:
            cos = np.ones(bits.shape, np.float32)
            hit = bits <= min(2, settings.near_duplicate_bits)
        for i, j in zip(*np.nonzero(hit)):
            flag(s.start + int(i), int(j), "near_identical", float(cos[i, j]))
    with_files = sum(d is not None for d in train_digest)
    return {"identical": f"file bytes of {with_files} training and {len(eval_digest)} evaluation files",
            "near_identical": (f"teacher cosine >= {copy_cos:.4f}, or pHash within "
                               f"{settings.near_duplicate_bits} of 64 bits at cosine >= {link:.3f}" if embedded else
                               f"pHash within {min(2, settings.near_duplicate_bits)} of 64 bits (no embeddings)")}

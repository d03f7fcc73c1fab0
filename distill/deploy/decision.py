"""Accept/reject decisions in a model's own units, tied to the false-accept rate they mean.

A gallery's score is a cosine (normalised models: accept when ``cos >= T``, ``T`` in [-1, 1]) or a
Euclidean distance (raw models: accept when ``d <= T``, ``T >= 0``); internally scores are "higher =
more similar" (:mod:`distill.evaluation.search` negates distances). A number that is right for one
model is wrong for another (dlib's 0.6 is a distance; on a cosine gallery it accepts almost anyone:
ageitgey/face_recognition#758), so a threshold is only applied after :func:`decide` has checked it
against the score's range and, where the gallery is calibrated, against the impostor scores the model
itself produced: the FAR a threshold means is measured, not guessed.

:class:`Calibration` is an ROC (FAR, TAR, threshold per point, log-spaced in FAR) of the gallery's model,
from the evaluation report of its run or from calibration images embedded at build time (every pair of
an identity-folder set: same identity = genuine, different = impostor).

Example::

    cal = calibration_from_images(emb, faces, labels, source="orl/")      # or calibration_from_report(...)
    thr = decide(Score.for_model(emb.normalized), cal, far=1e-3)          # the threshold at FAR <= 1e-3
    thr = decide(score, cal, threshold=0.6)                               # checked, FAR named (or refused)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distill.errors import InputError

#: a user threshold that accepts more than this share of impostors is refused unless forced
MAX_FAR = 0.01


class DecisionError(InputError, ValueError):
    """A threshold or FAR that cannot be applied to this gallery; the message says what would work."""


@dataclass(frozen=True)
class Score:
    """What a gallery's scores are: ``cosine`` (accept >= T, range [-1, 1]) or ``distance`` (accept <= T, >= 0)."""

    kind: str

    @classmethod
    def for_model(cls, normalized: bool) -> "Score":
        """Cosine for L2-normalised embeddings, Euclidean distance otherwise."""
        return cls("cosine" if normalized else "distance")

    @classmethod
    def for_metric(cls, metric: str) -> "Score":
        """The score of a FAISS metric: ``ip`` (unit vectors) -> cosine, ``l2`` -> distance."""
        return cls.for_model(metric == "ip")

    @property
    def accept(self) -> str:
        """``>=`` (cosine) or ``<=`` (distance)."""
        return ">=" if self.kind == "cosine" else "<="

    def check(self, value: float) -> None:
        """Raise :class:`DecisionError` when ``value`` cannot be a threshold of this score."""
        if not np.isfinite(value):
            raise DecisionError(f"--threshold {value} is not a number")
        if self.kind == "cosine" and not -1.0 <= value <= 1.0:
            raise DecisionError(f"--threshold {value:g} is outside the range of a cosine similarity [-1, 1]: this "
                                f"gallery's model is L2-normalised and compared by cosine (accept when cosine >= T). "
                                f"A distance threshold such as dlib's 0.6 belongs to another model; use --far "
                                f"(e.g. --far 1e-3) to pick the threshold in this model's units")
        if self.kind == "distance" and value < 0:
            raise DecisionError(f"--threshold {value:g} is negative, but this gallery compares Euclidean distances "
                                f"(accept when distance <= T, T >= 0); use --far (e.g. --far 1e-3) to pick one")

    def to_score(self, value: float) -> float:
        """A threshold in the model's units -> the internal "higher = more similar" score."""
        return value if self.kind == "cosine" else -value

    def to_units(self, score: float) -> float:
        """Inverse of :meth:`to_score`."""
        return score if self.kind == "cosine" else -score

    def text(self, value: float) -> str:
        """``cosine >= 0.512`` / ``distance <= 0.600`` for a threshold in the model's units."""
        return f"{self.kind} {self.accept} {value:.3f}"


@dataclass
class Calibration:
    """The model's ROC on a set of its own genuine and impostor pairs.

    Attributes:
        far, tar: rates in [0, 1], one per point, FAR increasing.
        threshold: the internal score ("higher = more similar") of each point; None = accept nothing.
        n_genuine, n_impostor: pair counts behind the rates (a FAR below ``1 / n_impostor`` is not measured).
        source: where the pairs came from (a report's path and protocol, or a folder of calibration images).
    """

    far: list[float]
    tar: list[float]
    threshold: list[float | None]
    n_genuine: int
    n_impostor: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``gallery.json["calibration"]``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        """Inverse of :meth:`to_dict`."""
        return cls(list(d["far"]), list(d["tar"]), list(d["threshold"]), int(d["n_genuine"]), int(d["n_impostor"]),
                   str(d["source"]))

    def at_far(self, far: float) -> tuple[float, float, float] | None:
        """``(far, tar, score threshold)`` of the point with the highest FAR not above ``far``, or None."""
        best = None
        for f, t, thr in zip(self.far, self.tar, self.threshold):
            if thr is not None and f <= far and (best is None or f >= best[0]):
                best = (float(f), float(t), float(thr))
        return best

    def far_of(self, score: float) -> float:
        """The FAR of accepting scores ``>= score``: the FAR of the nearest ROC point whose threshold is at or
        below ``score`` (an upper bound between points; 0 above every measured impostor)."""
        below = [(thr, f) for f, thr in zip(self.far, self.threshold) if thr is not None and thr <= score]
        return float(max(below)[1]) if below else 0.0   # the highest threshold at or below: FAR >= FAR(score)


@dataclass(frozen=True)
class Threshold:
    """A decision rule as applied: ``value`` in the model's units, ``score`` internal, where it came from,
    and the FAR it means on the calibration (None when the gallery has none)."""

    value: float
    score: float
    kind: str
    accept: str
    source: str
    far: float | None
    tar: float | None
    calibration: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (search output ``threshold``)."""
        return asdict(self)

    def text(self) -> str:
        """One line: the rule, its FAR and where both come from."""
        rate = ("FAR unknown (the gallery has no calibration)" if self.far is None else
                f"FAR {self.far:.2g}" + (f", TAR {self.tar:.3f}" if self.tar is not None else "")
                + f" on {self.calibration}")
        return f"threshold {self.kind} {self.accept} {self.value:.3f} ({self.source}): {rate}"


def decide(score: Score, calibration: Calibration | None, *, threshold: float | None = None,
           far: float | None = None, force: bool = False) -> tuple[Threshold, list[str]]:
    """The threshold to apply and the warnings to print, from ``--threshold`` or ``--far``.

    Raises:
        DecisionError: a threshold outside the score's range; one that accepts more than :data:`MAX_FAR`
            of the calibration's impostors (unless ``force``); ``far`` without a calibration, outside (0, 1),
            or below what the calibration measured.
    """
    warnings: list[str] = []
    if far is not None:
        if not 0 < far < 1:
            raise DecisionError(f"--far {far:g} is not a rate in (0, 1); e.g. --far 1e-3")
        if calibration is None:
            raise DecisionError("--far needs a calibrated gallery: rebuild it with --calibration-images DIR "
                                "(identity folders of other people) or --report RUN/report.json, or pass "
                                "--report RUN/report.json to this search")
        point = calibration.at_far(far)
        if point is None:
            raise DecisionError(f"--far {far:g} is below what {calibration.source} measured ({calibration.n_impostor:,} "
                                f"impostor pairs: the lowest FAR is {1 / max(1, calibration.n_impostor):.1g}); "
                                f"ask for a larger FAR or calibrate on more people")
        f, t, s = point
        return Threshold(score.to_units(s), s, score.kind, score.accept, f"--far {far:g}", f, t,
                         calibration.source), warnings
    assert threshold is not None
    score.check(threshold)
    s = score.to_score(threshold)
    if calibration is None:
        warnings.append(f"this gallery has no calibration, so the false-accept rate of {score.text(threshold)} is "
                        "unknown; rebuild it with --calibration-images DIR or --report RUN/report.json")
        return Threshold(threshold, s, score.kind, score.accept, "--threshold", None, None, None), warnings
    rate = calibration.far_of(s)
    tar = next((float(t) for f, t in sorted(zip(calibration.far, calibration.tar), reverse=True) if f <= rate), None)
    if rate > MAX_FAR and not force:
        raise DecisionError(f"--threshold {score.text(threshold)} accepts {100 * rate:.1f}% of impostors on "
                            f"{calibration.source} (more than {100 * MAX_FAR:g}%): it would call strangers known. "
                            f"Pick one by rate with --far 1e-3, or pass --force-threshold to apply it anyway")
    warnings.append(f"{score.text(threshold)} means FAR {rate:.2g} on {calibration.source}")
    return Threshold(threshold, s, score.kind, score.accept, "--threshold", rate, tar, calibration.source), warnings


def calibration_from_scores(scores: np.ndarray, same: np.ndarray, source: str, points: int = 400) -> Calibration:
    """:class:`Calibration` of pair ``scores`` (internal units) with genuine flags ``same``."""
    from distill.evaluation.verify import _downsample_roc
    from distill.evaluation.metrics import roc_curve

    same = np.asarray(same, bool)
    far, tar, thr = roc_curve(np.asarray(scores, np.float64), same)
    roc = _downsample_roc(far, tar, thr, points)
    return Calibration(roc.far, roc.tar, roc.threshold, int(same.sum()), int((~same).sum()), source)


def calibration_from_embeddings(emb: np.ndarray, labels: np.ndarray, normalized: bool, source: str) -> Calibration:
    """Every pair of embeddings ``(N, D)`` with identity ``labels`` (N,): genuine = same label."""
    from distill.data.pairs import all_pairs
    from distill.evaluation.search import pair_scores

    a, b, same, _ = all_pairs(np.asarray(labels))
    if not same.any() or same.all():
        raise DecisionError(f"calibration images {source} need at least two images of one person and two people")
    return calibration_from_scores(pair_scores(emb, a, b, normalized), same, source)


def calibration_from_report(report: Any, model: str, protocol: str | None = None) -> Calibration:
    """The ROC of ``model`` on ``protocol`` (default: the one with the most impostor pairs) of a report.

    Raises:
        DecisionError: no such report, model or protocol.
    """
    from pathlib import Path

    from distill.evaluation.results import ReportError, load_report

    try:
        doc = load_report(report)
    except FileNotFoundError:
        raise DecisionError(f"evaluation report {report} does not exist (give RUN/report.json of a finished run)"
                            ) from None
    except ReportError as e:
        raise DecisionError(str(e)) from None
    path = Path(report) / "report.json" if Path(report).is_dir() else Path(report)
    try:
        entry = doc.model(model)
    except KeyError as e:
        raise DecisionError(f"{path}: {e.args[0]}; pass --report-model NAME to pick the entry of this model") from None
    protos = {k: v for k, v in entry.protocols.items() if v.roc.far}
    if not protos:
        raise DecisionError(f"{path}: model {model!r} has no verification ROC")
    name = protocol or max(protos, key=lambda k: protos[k].n_impostor)
    if name not in protos:
        raise DecisionError(f"{path}: model {model!r} has no protocol {name!r} (it has: {', '.join(protos)})")
    v = protos[name]
    return Calibration(list(v.roc.far), list(v.roc.tar), list(v.roc.threshold), int(v.n_genuine), int(v.n_impostor),
                       f"{path} ({name}, {model})")

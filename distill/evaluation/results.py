"""Typed evaluation results, and their JSON form (``report.json``, schema_version 1).

Every result is a dataclass with ``to_dict()`` (JSON-ready: plain types, NaN -> null, FAR keys as
``"0.001"``) and ``from_dict()``. FAR keys are floats in memory and normalised once, here:
``result.tar(1e-3)`` works whether the result was computed or read back from a file.

Example::

    res = evaluate_pairs(emb, pairs, normalized=True)           # VerificationResult
    res.accuracy_mean, res.tar(1e-3), res.eer
    doc = load_report("runs/r1")                                # Report
    doc.model("dlib_resnet").protocols["DevTest"].roc.far
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distill.errors import InputError, MissingInputError

SCHEMA_VERSION = 1


class ReportError(InputError, ValueError):
    """A report file cannot be read as a facedistill report; the message names it."""


def far_key(far: Any) -> float:
    """A FAR given as a float or a report key (``"0.001"``) -> float."""
    return float(far)


def far_text(far: Any) -> str:
    """A FAR as the report writes it: ``0.001`` -> ``"0.001"``, ``1e-05`` -> ``"1e-05"``."""
    return f"{float(far):g}"


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> python; float dict keys (FARs) -> ``"0.001"``; NaN/inf -> None; dataclasses -> dicts."""
    if hasattr(obj, "to_dict") and not isinstance(obj, type):
        return jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {(far_text(k) if isinstance(k, float) else str(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fars(d: dict[Any, Any] | None) -> dict[float, Any]:
    return {far_key(k): v for k, v in (d or {}).items()}


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class ScoreSummary:
    """Genuine or impostor score distribution: count, moments, percentiles, histogram on shared edges."""

    n: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    percentiles: dict[str, float] = field(default_factory=dict)
    hist: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; an empty set is just ``{"n": 0}``."""
        return {"n": self.n} if self.n == 0 else jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreSummary":
        """Inverse of :meth:`to_dict`."""
        return cls(**_known(cls, d))


@dataclass
class Roc:
    """ROC points: false/true accept rates and the score threshold of each (None = accept nothing)."""

    far: list[float]
    tar: list[float]
    threshold: list[float | None]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Roc":
        """Inverse of :meth:`to_dict`."""
        return cls(list(d["far"]), list(d["tar"]), list(d["threshold"]))

    def threshold_at(self, far: float) -> tuple[float, float, float] | None:
        """``(far, tar, threshold)`` of the ROC point with the highest FAR not above ``far``, or None."""
        best = None
        for f, t, thr in zip(self.far, self.tar, self.threshold):
            if thr is not None and f is not None and f <= far and (best is None or f >= best[0]):
                best = (float(f), float(t), float(thr))
        return best


@dataclass
class VerificationResult:
    """1:1 verification of one model on one pairs protocol (see :func:`~distill.evaluation.evaluate_pairs`).

    Accuracies and rates are fractions in [0, 1]; ``score`` says what the pair scores are (cosine
    similarity, or negative Euclidean distance); ``tar_at_far[far]`` is None when the protocol has
    too few impostor pairs (``tar_reasons[far]`` says how many) or no genuine pairs.
    """

    n_pairs: int
    n_genuine: int
    n_impostor: int
    n_folds: int
    score: str
    accuracy_mean: float | None
    accuracy_std: float | None
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    auc: float | None
    eer: float | None
    eer_threshold: float | None
    tar_at_far: dict[float, float | None]
    tar_reasons: dict[float, str]
    best_threshold: float | None
    best_accuracy: float | None
    roc: Roc
    hist_edges: list[float]
    genuine: ScoreSummary
    impostor: ScoreSummary
    warnings: list[str] = field(default_factory=list)
    #: why accuracy/AUC/EER are not defined (e.g. "no genuine pairs"), else None
    reason: str | None = None
    #: 95% interval [low, high] of each TAR from a bootstrap over identities (eval.bootstrap; None: too few
    #: impostors); empty when not computed
    tar_interval: dict[float, list[float] | None] = field(default_factory=dict)

    def tar(self, far: float) -> float | None:
        """TAR at FAR ``far`` (None when not estimable)."""
        return self.tar_at_far.get(far_key(far))

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` form of a protocol entry."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["roc"], d["genuine"], d["impostor"] = self.roc.to_dict(), self.genuine.to_dict(), self.impostor.to_dict()
        if d["reason"] is None:
            del d["reason"]
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VerificationResult":
        """Inverse of :meth:`to_dict` (FAR keys back to floats)."""
        k = _known(cls, d)
        k.update(tar_at_far=_fars(d.get("tar_at_far")), tar_reasons=_fars(d.get("tar_reasons")),
                 tar_interval=_fars(d.get("tar_interval")),
                 roc=Roc.from_dict(d["roc"]), genuine=ScoreSummary.from_dict(d["genuine"]),
                 impostor=ScoreSummary.from_dict(d["impostor"]), warnings=list(d.get("warnings") or []))
        return cls(**k)


@dataclass
class IdentificationResult:
    """1:N identification: rank-k accuracy (fractions; None with ``reason`` when not computable)."""

    n_identities: int
    n_gallery: int
    n_probes: int
    n_distractors: int
    index: str
    ranks: dict[int, float | None]
    reason: str | None = None
    cross_model: bool = False

    @property
    def rank1(self) -> float | None:
        """Rank-1 accuracy."""
        return self.ranks.get(1)

    @property
    def rank5(self) -> float | None:
        """Rank-5 accuracy."""
        return self.ranks.get(5)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``rank1``, ``rank5``, counts, ``index``, optional ``reason``/``cross_model``."""
        d: dict[str, Any] = {"n_identities": self.n_identities, "n_gallery": self.n_gallery,
                             "n_probes": self.n_probes, "n_distractors": self.n_distractors, "index": self.index,
                             **{f"rank{r}": v for r, v in self.ranks.items()}}
        if self.reason is not None:
            d["reason"] = self.reason
        if self.cross_model:
            d["cross_model"] = True
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IdentificationResult":
        """Inverse of :meth:`to_dict`."""
        ranks = {int(k[4:]): v for k, v in d.items() if k.startswith("rank") and k[4:].isdigit()}
        return cls(d["n_identities"], d["n_gallery"], d["n_probes"], d["n_distractors"], d.get("index", "flat"),
                   ranks, d.get("reason"), bool(d.get("cross_model", False)))


@dataclass
class FidelityResult:
    """Per-image cosine between a student's and its teacher's embeddings of the same faces."""

    n: int
    mean: float
    std: float
    min: float
    percentiles: dict[str, float]
    hist_edges: list[float]
    hist: list[int]
    #: mean squared difference of the raw embeddings (the paper's objective)
    mse: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FidelityResult":
        """Inverse of :meth:`to_dict`."""
        return cls(**_known(cls, d))


@dataclass
class CostResult:
    """What a model costs: parameters, mult-adds per image at ``input_size``, weight file bytes, CPU speed.

    ``latency[precision][str(batch)]`` holds ``ms_per_batch``, ``images_per_s`` (and ``ms_per_image``,
    ``repeats``); ``images_per_s`` is fp32 (or the exported file's precision) at batch 32.
    """

    params: int | None = None
    mult_adds: int | None = None
    input_size: int | None = None
    file_bytes: int | None = None
    threads: int | None = None
    latency: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    images_per_s: float | None = None
    images_per_s_bf16: float | None = None
    runtime: str | None = None

    def images_per_s_at(self, precision: str, batch: int) -> float | None:
        """Measured images/s for ``precision`` at batch size ``batch`` (None if not measured)."""
        return ((self.latency.get(precision) or {}).get(str(batch)) or {}).get("images_per_s")

    def to_dict(self) -> dict[str, Any]:
        """JSON form (keys with no value are left out)."""
        return jsonable({k: v for k, v in asdict(self).items()
                         if v is not None or k in ("images_per_s", "params", "mult_adds", "input_size")})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostResult":
        """Inverse of :meth:`to_dict`."""
        return cls(**_known(cls, d))


@dataclass
class ModelResult:
    """Everything measured for one model in a run: cost, verification per protocol, fidelity, identification."""

    name: str
    role: Literal["teacher", "student"]
    cost: CostResult
    protocols: dict[str, VerificationResult]
    fidelity: FidelityResult | None = None
    identification: dict[str, IdentificationResult] | None = None
    teacher: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ("teacher", "student"):
            raise ValueError(f"ModelResult {self.name!r}: role must be 'teacher' or 'student', got {self.role!r}")
        # JSON-form parts (e.g. read back from a report) are accepted and typed here
        if isinstance(self.cost, dict):
            self.cost = CostResult.from_dict(self.cost)
        self.protocols = {k: VerificationResult.from_dict(v) if isinstance(v, dict) else v
                          for k, v in self.protocols.items()}
        if isinstance(self.fidelity, dict):
            self.fidelity = FidelityResult.from_dict(self.fidelity)
        if self.identification is not None:
            self.identification = {k: IdentificationResult.from_dict(v) if isinstance(v, dict) else v
                                   for k, v in self.identification.items()}

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` ``models[]`` entry (cost headline fields repeated at the top level)."""
        c = self.cost
        return jsonable({
            "name": self.name, "role": self.role, "teacher": self.teacher,
            "params": c.params, "mult_adds": c.mult_adds, "input_size": c.input_size,
            "images_per_s": c.images_per_s, "images_per_s_bf16": c.images_per_s_bf16, "file_bytes": c.file_bytes,
            "cost": c.to_dict(), "protocols": {k: v.to_dict() for k, v in self.protocols.items()},
            "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
            "identification": None if self.identification is None else
            {k: v.to_dict() for k, v in self.identification.items()},
            "extra": self.extra,
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelResult":
        """Inverse of :meth:`to_dict`."""
        return cls(d["name"], d["role"], CostResult.from_dict(d.get("cost") or {
            k: d.get(k) for k in ("params", "mult_adds", "input_size")}),
            {k: VerificationResult.from_dict(v) for k, v in (d.get("protocols") or {}).items()},
            None if not d.get("fidelity") else FidelityResult.from_dict(d["fidelity"]),
            None if d.get("identification") is None else
            {k: IdentificationResult.from_dict(v) for k, v in d["identification"].items()},
            d.get("teacher"), dict(d.get("extra") or {}))


@dataclass
class TradeoffRow:
    """A student against its teacher on one protocol: what accuracy was given up for how much speed.

    Ratios are student / teacher; ``tar_ratio[far]`` per FAR (None when either TAR is not estimable).
    """

    student: str
    teacher: str
    protocol: str
    student_accuracy: float | None
    teacher_accuracy: float | None
    accuracy_ratio: float | None
    accuracy_drop_points: float | None
    tar_ratio: dict[float, float | None]
    speedup: float | None
    speedup_bf16: float | None
    mult_adds_ratio: float | None
    params_ratio: float | None
    fidelity_mean: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return jsonable({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TradeoffRow":
        """Inverse of :meth:`to_dict`."""
        return cls(**{**_known(cls, d), "tar_ratio": _fars(d.get("tar_ratio"))})


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not b:
        return None
    return float(a) / float(b)


def tradeoff(models: list[ModelResult]) -> list[TradeoffRow]:
    """Each student against its teacher (or the first teacher) on every protocol both were measured on."""
    teachers = {m.name: m for m in models if m.role == "teacher"}
    rows = []
    for s in (m for m in models if m.role == "student"):
        t = teachers.get(s.teacher or "") or next(iter(teachers.values()), None)
        if t is None:
            continue
        for proto, sp in s.protocols.items():
            tp = t.protocols.get(proto)
            if tp is None:
                continue
            drop = None if sp.accuracy_mean is None or tp.accuracy_mean is None else \
                100 * (tp.accuracy_mean - sp.accuracy_mean)
            rows.append(TradeoffRow(
                s.name, t.name, proto, sp.accuracy_mean, tp.accuracy_mean, _ratio(sp.accuracy_mean, tp.accuracy_mean),
                drop, {far: _ratio(v, tp.tar_at_far.get(far)) for far, v in sp.tar_at_far.items()},
                _ratio(s.cost.images_per_s, t.cost.images_per_s),
                _ratio(s.cost.images_per_s_bf16, t.cost.images_per_s_bf16),
                _ratio(s.cost.mult_adds, t.cost.mult_adds), _ratio(s.cost.params, t.cost.params),
                None if s.fidelity is None else s.fidelity.mean))
    return rows


@dataclass
class Report:
    """A run's ``report.json``: config, versions, extra records, one :class:`ModelResult` per model."""

    created_at: str
    run: str | None
    config: dict
    versions: dict
    extra: dict
    models: list[ModelResult]
    tradeoff: list[TradeoffRow]
    schema_version: int = SCHEMA_VERSION

    def model(self, name: str) -> ModelResult:
        """The model called ``name``; KeyError lists the names there are."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r} (it has: {', '.join(m.name for m in self.models) or 'none'})")

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` document."""
        return {"schema_version": self.schema_version, "created_at": self.created_at, "run": self.run,
                "config": jsonable(self.config), "versions": self.versions, "extra": jsonable(self.extra),
                "models": [m.to_dict() for m in self.models], "tradeoff": [r.to_dict() for r in self.tradeoff]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict`."""
        return cls(d.get("created_at", ""), d.get("run"), d.get("config") or {}, d.get("versions") or {},
                   d.get("extra") or {}, [ModelResult.from_dict(m) for m in d.get("models") or []],
                   [TradeoffRow.from_dict(r) for r in d.get("tradeoff") or []], d.get("schema_version", 0))


def load_report(path: str | Path) -> Report:
    """Read ``report.json`` (or a run directory holding one), checking its schema version.

    Raises:
        MissingInputError: no report there.
        ReportError: not valid JSON, or another schema version.
    """
    path = Path(path)
    path = path / "report.json" if path.is_dir() else path
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(f"{path} does not exist: give a finished run directory or its report.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        raise ReportError(f"{path}: schema_version {version!r}, this version reads {SCHEMA_VERSION} "
                          f"(re-run `distill eval` to rewrite it)")
    try:
        return Report.from_dict(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"{path} is not a facedistill report ({type(e).__name__}: {e})") from None

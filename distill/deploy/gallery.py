"""A searchable gallery of known faces: identity folders in, FAISS index + labels + model fingerprint out.

A gallery folder holds ``gallery.json`` (format, the model(s) that made the embeddings with their
fingerprints, one record per enrolled image), ``embeddings.npy`` and ``index.faiss``. Embeddings of
different models live in different spaces, so adding to (or searching) a gallery with another model
is refused unless ``allow_cross_model=True`` is passed deliberately (e.g. a student exported with
its projection into the teacher's space, searching a teacher-built gallery).

Scores follow :mod:`distill.evaluation.search`: cosine similarity for normalised models, negative
Euclidean distance for raw ones ("higher = more similar"), so thresholds read from an evaluation
report's ROC apply unchanged. A gallery stores what its score is and, when calibrated, the model's ROC
(:mod:`.decision`), so decisions are made by false-accept rate and a threshold in another model's units
is caught. A photo with several faces is never enrolled silently (``multi_face``).

Example::

    emb = load_embedder("teacher:dlib_resnet")
    cal = calibration_from_report("runs/r1/report.json", emb.name)          # distill.deploy.decision
    build_gallery(emb, "teacher:dlib_resnet", "known_people/", "gallery/", calibration=cal)
    g = load_gallery("gallery/")
    rule, _ = decide(g.score, g.calibration, far=1e-3)                     # cosine/distance threshold at FAR 1e-3
    for hit in search_gallery(g, extract_embeddings(emb, probe_faces), k=5, threshold=rule.score):
        print(hit["matches"][0]["identity"], hit["decision"])
"""
from __future__ import annotations

import datetime as _dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from distill.errors import InputError
from distill.evaluation.search import build_index, metric_for, search
from distill.io import atomic_write_bytes, atomic_write_json

from .decision import Calibration, Score
from .faces import DEFAULT_CACHE_DIR, align_rel_paths

GALLERY_FORMAT = "facedistill-gallery-v1"
#: ``multi_face="dominant"`` enrols a photo with several faces only when the face taken is this many times
#: the area of every other face (a portrait with small faces behind); otherwise the photo is skipped
DOMINANCE = 2.0
MULTI_FACE_POLICIES = ("skip", "dominant")
GALLERY_JSON, EMBEDDINGS_NPY, INDEX_FILE = "gallery.json", "embeddings.npy", "index.faiss"


class GalleryError(InputError, ValueError):
    """A gallery cannot be built, loaded or searched as asked; the message says what to do."""


@dataclass
class Gallery:
    """A loaded gallery: its record, embeddings ``(N, D)``, FAISS index and the identity of each row."""

    root: Path
    doc: dict[str, Any]
    embeddings: np.ndarray
    index: faiss.Index

    @property
    def items(self) -> list[dict[str, Any]]:
        """One record per enrolled image: identity, path, model index."""
        return self.doc["items"]

    @property
    def identities(self) -> list[str]:
        """The identity of each gallery row."""
        return [it["identity"] for it in self.items]

    @property
    def model(self) -> dict[str, Any]:
        """The model the gallery was first built with (what ``search`` uses by default)."""
        return self.doc["models"][0]

    @property
    def metric(self) -> str:
        """``"ip"`` (cosine on unit vectors) or ``"l2"`` (Euclidean)."""
        return self.doc["metric"]

    @property
    def score(self) -> Score:
        """What its scores are: cosine (accept >= T) or Euclidean distance (accept <= T)."""
        return Score.for_metric(self.metric)

    @property
    def calibration(self) -> Calibration | None:
        """The model's ROC stored at build time (None: built without calibration)."""
        cal = self.doc.get("calibration")
        return Calibration.from_dict(cal) if cal else None


def multi_face_decision(info: dict[str, Any] | None, policy: str) -> str | None:
    """Why a photo with several faces (``info``: ``{"faces", "box", "boxes"}`` from the aligner) is not enrolled
    under ``policy``, or None when it is (one face, or ``dominant`` and the face taken clearly dominates)."""
    if not info:
        return None
    n = info["faces"]
    if policy == "dominant":
        boxes, box = info.get("boxes"), info.get("box")
        if boxes is None or box is None:
            return (f"{n} faces found and their sizes were not recorded (aligned by an older version): not "
                    "enrolled; re-align with another --cache-dir")
        areas = sorted(((b[2] - b[0]) * (b[3] - b[1]) for b in boxes), reverse=True)
        taken = (box[2] - box[0]) * (box[3] - box[1])
        if taken >= areas[0] and taken >= DOMINANCE * areas[1]:
            return None
        return (f"{n} faces found and none is {DOMINANCE:g}x the area of the others: not enrolled (crop the "
                "photo to the person)")
    return (f"{n} faces found: not enrolled, it is not known which one is the person (crop the photo, or "
            f"--multi-face dominant enrols a face {DOMINANCE:g}x larger than every other)")


def model_record(embedder: Any, ref: str) -> dict[str, Any]:
    """What a gallery stores about the model that made its embeddings."""
    from distill.evaluation.extract import model_fingerprint

    fp = model_fingerprint(embedder)
    if fp is None:
        raise GalleryError(f"cannot fingerprint model {ref!r}; galleries need to know which model made them")
    p = Path(ref)
    return {"ref": str(p.resolve()) if p.is_file() else ref, "name": embedder.name, "fingerprint": fp,
            "normalized": bool(embedder.normalized), "metric": metric_for(bool(embedder.normalized)),
            "preprocessing": embedder.preprocessing.to_dict()}


def _index_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def load_gallery(root: str | Path) -> Gallery:
    """Read a gallery folder written by :func:`build_gallery`, checking its files agree."""
    root = Path(root)
    path = root / GALLERY_JSON
    if not path.is_file():
        raise GalleryError(f"{root} is not a gallery ({GALLERY_JSON} missing); build one with "
                           f"`distill gallery build --model M --images DIR -o {root}`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GalleryError(f"{path} is not valid JSON ({e}); rebuild the gallery with --overwrite") from None
    if doc.get("format") != GALLERY_FORMAT:
        raise GalleryError(f"{path}: format {doc.get('format')!r}, expected {GALLERY_FORMAT}")
    try:
        emb = np.load(root / EMBEDDINGS_NPY, allow_pickle=False)
        index = faiss.deserialize_index(np.fromfile(root / INDEX_FILE, dtype=np.uint8))
    except (OSError, ValueError, RuntimeError) as e:
        raise GalleryError(f"gallery {root}: cannot read {EMBEDDINGS_NPY}/{INDEX_FILE} ({e}); rebuild it with "
                           f"--overwrite") from None
    n = len(doc["items"])
    if emb.shape[0] != n or index.ntotal != n or emb.shape[1] != doc["dim"]:
        raise GalleryError(f"gallery {root} is inconsistent: {n} items, embeddings {emb.shape}, index of "
                           f"{index.ntotal} (an interrupted build?); rebuild it with --overwrite")
    return Gallery(root, doc, emb, index)


def _enrol(embedder: Any, images_root: Path, todo: list[tuple[str, str]], model_idx: int, multi_face: str,
           align: dict[str, Any], batch_size: int
           ) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, str], dict[str, dict[str, Any]]]:
    """Align, filter (no face, several faces) and embed ``todo`` ``[(rel_path, identity)]``: ``(embeddings
    (M, D), their item records, {rel_path: skip reason}, {rel_path: several-faces record})``."""
    from distill.evaluation import extract_embeddings

    if not todo:
        return np.zeros((0, 0), np.float32), [], {}, {}
    af = align_rel_paths(images_root, [r for r, _ in todo], template=embedder.preprocessing.alignment, **align)
    skipped, several, items, keep = dict(af.record.skipped), {}, [], []
    for k, pos in enumerate(af.indices):
        rel, ident = todo[int(pos)]
        info = af.record.several_faces.get(rel)
        why = multi_face_decision(info, multi_face)
        if info:
            several[rel] = {"faces": info["faces"], "box": info.get("box"), "enrolled": why is None, "reason": why}
        if why is not None:
            skipped[rel] = why
            continue
        keep.append(k)
        item = {"identity": ident, "path": str((images_root / rel).resolve()), "model": model_idx,
                "aligned": rel not in af.record.no_face_paths}
        items.append(item | ({"faces_in_image": info["faces"], "box": info.get("box")} if info else {}))
    if not keep:
        return np.zeros((0, 0), np.float32), [], skipped, several
    emb = extract_embeddings(embedder, np.asarray(af.faces)[keep], batch_size=batch_size, progress=align["progress"])
    return emb, items, skipped, several


def build_gallery(embedder: Any, model_ref: str, images_root: str | Path, out: str | Path, *,
                  rel_paths: Sequence[str] | None = None, allow_cross_model: bool = False, overwrite: bool = False,
                  index_kind: str = "flat", align_backend: str = "dlib", cache_dir: str | Path = DEFAULT_CACHE_DIR,
                  no_face: str = "skip", multi_face: str = "skip", calibration: Calibration | None = None,
                  batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Enrol the identity folders under ``images_root`` (or just ``rel_paths`` of it) into the gallery ``out``.

    A new ``out`` is created; an existing gallery is extended (images already enrolled are skipped)
    when it was built with the same model, refused otherwise unless ``allow_cross_model``;
    ``overwrite`` starts afresh. Faces are aligned (through the cache) to the model's template; an
    image in which no face is found is not enrolled (``no_face="skip"``, listed in ``no_face``)
    unless ``no_face="center"`` enrols its centre crop. Identity folders without a usable image are
    left out and listed (``skipped_identities``). A photo with several faces is not enrolled
    (``multi_face="skip"``) unless ``multi_face="dominant"`` and the face taken is :data:`DOMINANCE` times
    the area of every other; either way it is listed in ``several_faces`` with its decision, and an
    enrolled one records its face count and box. ``calibration``: the model's ROC, stored so that
    searches can decide by FAR (:mod:`.decision`); an extended gallery keeps its own unless one is given.
    Returns a summary: ``{"added", "already_present", "skipped", "no_face", "several_faces",
    "skipped_identities", "identities", "items", "model", "calibration"}``.
    """
    if multi_face not in MULTI_FACE_POLICIES:
        raise GalleryError(f"multi_face must be one of {', '.join(MULTI_FACE_POLICIES)}, got {multi_face!r}")
    from distill.data.folders import scan_identity_folder

    out, images_root = Path(out), Path(images_root)
    record = model_record(embedder, model_ref)
    scanned = scan_identity_folder(images_root)
    pairs = list(zip(scanned.rel_paths, (scanned.identity_of(i) for i in range(len(scanned)))))
    if rel_paths is not None:
        wanted = set(rel_paths)
        unknown = wanted - set(scanned.rel_paths)
        if unknown:
            raise GalleryError(f"{len(unknown)} requested images are not identity-folder images under "
                               f"{images_root}, e.g. {sorted(unknown)[:3]}")
        pairs = [p for p in pairs if p[0] in wanted]
    existing = None if overwrite or not (out / GALLERY_JSON).exists() else load_gallery(out)
    models = [record]
    items: list[dict[str, Any]] = []
    old = np.zeros((0, 0), np.float32)
    model_idx = 0
    if existing is not None:
        models, items, old = list(existing.doc["models"]), list(existing.items), existing.embeddings
        fps = [m["fingerprint"] for m in models]
        if record["fingerprint"] in fps:
            model_idx = fps.index(record["fingerprint"])
        else:
            if not allow_cross_model:
                raise GalleryError(
                    f"gallery {out} holds embeddings of {models[0]['name']} ({models[0]['fingerprint']}); "
                    f"{record['name']} ({record['fingerprint']}) embeds faces in a different space. Build a "
                    f"separate gallery, pass --overwrite to replace it, or --allow-cross-model if this model "
                    f"was trained into the same embedding space (e.g. a student exported with its projection)")
            if record["metric"] != existing.metric:
                raise GalleryError(f"cannot mix metrics in gallery {out}: it uses {existing.metric}, "
                                   f"{record['name']} needs {record['metric']}")
            models.append(record)
            model_idx = len(models) - 1
    present = {it["path"] for it in items}
    todo = [(rel, ident) for rel, ident in pairs if str((images_root / rel).resolve()) not in present]
    already = len(pairs) - len(todo)
    new, added, skipped, several = _enrol(embedder, images_root, todo, model_idx, multi_face, dict(
        backend=align_backend, cache_dir=cache_dir, no_face=no_face, progress=progress), batch_size)
    if not len(new):
        new = np.zeros((0, old.shape[1] if old.size else 0), np.float32)
    items += added
    if not items:
        raise GalleryError(f"no face could be enrolled from {images_root} ({len(skipped)} images skipped"
                           + (", no face found in them: pass --no-face center to enrol their centre crops"
                              if skipped and no_face == "skip" else "") + ")")
    if old.size and new.size and old.shape[1] != new.shape[1]:
        raise GalleryError(f"gallery {out} holds {old.shape[1]}-D embeddings; {record['name']} makes "
                           f"{new.shape[1]}-D ones")
    emb = np.concatenate([old, new]) if old.size else new
    metric = models[0]["metric"]
    index = build_index(emb, metric, index_kind)  # type: ignore[arg-type]
    if calibration is None and existing is not None:
        calibration = existing.calibration
    several = {str((images_root / r).resolve()): v for r, v in several.items()}   # this call's photos
    score = Score.for_metric(metric)
    doc = {"format": GALLERY_FORMAT, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "metric": metric, "dim": int(emb.shape[1]), "index": index_kind, "models": models,
           "score": {"kind": score.kind, "accept": score.accept},
           "calibration": calibration.to_dict() if calibration is not None else None,
           "alignment": {"template": embedder.preprocessing.alignment, "backend": align_backend,
                         "multi_face": multi_face},
           "several_faces": {**(existing.doc.get("several_faces", {}) if existing is not None else {}), **several},
           "identities": sorted({it["identity"] for it in items}), "items": items}
    # the record goes last: load_gallery checks the counts agree, so a crash in between is detected
    atomic_write_bytes(out / EMBEDDINGS_NPY, _npy_bytes(emb))
    atomic_write_bytes(out / INDEX_FILE, _index_bytes(index))
    atomic_write_json(out / GALLERY_JSON, doc)
    faceless = {k: v for k, v in skipped.items() if v.startswith("no face found")}
    return {"added": len(todo) - len(skipped), "already_present": already, "skipped": skipped, "no_face": faceless,
            "several_faces": several, "calibration": calibration.source if calibration is not None else None,
            "skipped_identities": scanned.skipped_identities,
            "identities": len(doc["identities"]), "items": len(items), "model": record, "gallery": str(out)}


def check_model(gallery: Gallery, embedder: Any, *, allow_cross_model: bool = False) -> None:
    """Refuse to search ``gallery`` with a model that did not build it (unless deliberately allowed)."""
    from distill.evaluation.extract import model_fingerprint

    fp = model_fingerprint(embedder)
    known = [m["fingerprint"] for m in gallery.doc["models"]]
    if fp in known:
        return
    if not allow_cross_model:
        raise GalleryError(f"gallery {gallery.root} was built with {gallery.model['name']} "
                           f"({gallery.model['fingerprint']}); {embedder.name} ({fp}) embeds faces in a different "
                           f"space. Search with the gallery's model (omit --model), or pass --allow-cross-model "
                           f"if this model was trained into the same space")
    if metric_for(bool(embedder.normalized)) != gallery.metric:
        raise GalleryError(f"{embedder.name} uses the {metric_for(bool(embedder.normalized))} metric but gallery "
                           f"{gallery.root} uses {gallery.metric}")


def search_gallery(gallery: Gallery, embeddings: np.ndarray, *, k: int = 5,
                   threshold: float | None = None) -> list[dict[str, Any]]:
    """Top-``k`` identities for each probe embedding ``(N, D)`` (best gallery image per identity).

    ``threshold`` is in score units (cosine, or negative Euclidean distance): the top identity is
    declared ``"same"`` when its score is ``>= threshold``, else ``"different"`` (unknown person).
    Only embed probes in which a face was found (see :func:`no_face_result`).
    Returns one ``{"matches": [{"rank", "identity", "score", "path"}], "decision", "face_found"}`` per probe.
    """
    if embeddings.shape[1] != gallery.doc["dim"]:
        raise GalleryError(f"probe embeddings are {embeddings.shape[1]}-D, gallery {gallery.root} is "
                           f"{gallery.doc['dim']}-D")
    idents = gallery.identities
    per_identity = max(np.unique(idents, return_counts=True)[1])
    n_unique = len(set(idents))
    k = max(1, min(k, n_unique))
    # k * (most images of one identity) neighbours always contain k distinct identities
    kk = min(gallery.index.ntotal, k * int(per_identity))
    scores, ids = search(gallery.index, embeddings, kk)
    out = []
    for srow, irow in zip(scores, ids):
        seen: dict[str, dict[str, Any]] = {}
        for s, i in zip(srow, irow):
            if i < 0 or idents[i] in seen:
                continue
            seen[idents[i]] = {"rank": len(seen) + 1, "identity": idents[i], "score": float(s),
                               "path": gallery.items[i]["path"]}
            if len(seen) == k:
                break
        matches = list(seen.values())
        decision = None
        if threshold is not None and matches:
            decision = "same" if matches[0]["score"] >= threshold else "different"
        out.append({"face_found": True, "matches": matches, "decision": decision})
    return out


def no_face_result(reason: str) -> dict[str, Any]:
    """The search result of a probe in which no face was found: no matches and no decision, ever."""
    return {"face_found": False, "matches": [], "decision": None, "reason": reason}


def score_text(score: float, metric: str) -> str:
    """A score in the model's own units: ``cosine 0.812`` or ``distance 0.431``."""
    return f"cosine {score:.3f}" if metric == "ip" else f"distance {-score:.3f}"

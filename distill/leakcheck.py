"""The leak guard in a run: which embeddings it reads, what it excludes, where it writes (the check itself:
:mod:`distill.data.leak_guard`).

No second teacher pass: the training faces' embeddings are the teacher cache's own (each face's mean over
its K cached views), the evaluation faces' are those the teacher's evaluation computes anyway (stored in the
embeddings cache and read back there). Two cases cost one clean pass over the training faces instead,
said in the log and the record: an online teacher (no cache), and views that mix two faces (the exclusions
must then be known before the views, and so the cache, are made). A resumed run reads its exclusions back
from ``leak_guard.json``, so they cannot change under it.

Example::

    outcome = guard_training_set(cfg, teacher, train, evald, views, source, run_dir, log=print)
    outcome.views, outcome.source, outcome.record["counts"]
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.config import Config, ConfigError
from distill.data.leak_guard import GuardSide, Rows, check_leaks
from distill.data.protocols import EvalData
from distill.data.sources import TrainData
from distill.data.views import FaceViews
from distill.evaluation import extract_embeddings
from distill.io import atomic_write_json

Log = Callable[[str], None]
GUARD_FILE = "leak_guard.json"


@dataclass
class GuardOutcome:
    """The views and teacher source training uses after the guard, and what it recorded (None: off)."""

    views: FaceViews
    source: Any
    record: dict[str, Any] | None
    kept: np.ndarray | None = None


def guard_policy(cfg: Config, evald: EvalData) -> str:
    """``data.leak_guard.policy``, defaulting to ``exclude`` when the run has a student protocol, else ``off``."""
    has_eval = any(not p.teacher_only for p in evald.protocols)
    return cfg.data.leak_guard.policy or ("exclude" if has_eval else "off")


def needs_guard_first(cfg: Config, evald: EvalData, views: FaceViews) -> bool:
    """Whether the guard must run before the teacher source is built (views that mix faces)."""
    return guard_policy(cfg, evald) != "off" and views.mix is not None


def eval_side(cfg: Config, teacher: Any, evald: EvalData, log: Log = print) -> GuardSide:
    """The evaluation faces of the student protocols and held-out people, with the teacher's embeddings of
    every evaluation face (as its evaluation computes them: fp32, same flip setting, same cache)."""
    used = evald.held_out.copy()
    for p in evald.protocols:
        if not p.teacher_only:
            used[p.pairs.idx_a] = True
            used[p.pairs.idx_b] = True
    emb = None
    if getattr(teacher, "can_embed", True):
        try:
            emb = _teacher_eval_embeddings(cfg, teacher, evald)
        except FloatingPointError as e:  # the run itself reports a broken teacher where it trains
            log(f"leak guard: {e}; only copies and names are checked")
    idx = np.flatnonzero(used)
    roots = [Path(cfg.eval.images_root or cfg.data.root or ".")] + [s.folder for s in cfg.eval.pairs if s.folder]
    files = [_existing(roots, evald.rel_paths[i]) for i in idx]
    return GuardSide([evald.rel_paths[i] for i in idx], files, Rows(evald.faces, idx),
                     None if emb is None else emb[idx], np.asarray(evald.labels)[idx], list(evald.identities))


def _teacher_eval_embeddings(cfg: Config, teacher: Any, evald: EvalData) -> np.ndarray:
    """The teacher's embeddings of every evaluation face, as its evaluation computes them (fp32, the same
    flip setting and embeddings cache, so that evaluation reads them back)."""
    precision = getattr(teacher, "precision", None)
    if precision is not None:
        teacher.precision = "fp32"
    try:
        return extract_embeddings(teacher, evald.faces, batch_size=cfg.eval.batch_size, flip_tta=cfg.eval.flip_tta,
                                  cache_dir=cfg.data.cache_dir / "embeddings")
    finally:
        if precision is not None:
            teacher.precision = precision


def _existing(roots: list[Path], rel: str) -> str | None:
    for r in roots:
        if (r / rel).is_file():
            return str(r / rel)
    return None


def train_side(train: TrainData, embeddings: np.ndarray) -> GuardSide:
    """The training faces with their teacher embeddings."""
    files = list(train.files) if train.files is not None else [None] * len(train.rel_paths)
    return GuardSide(list(train.rel_paths), files, train.faces, embeddings, np.asarray(train.labels),
                     list(train.identities))


def guard_training_set(cfg: Config, teacher: Any, train: TrainData, evald: EvalData, views: FaceViews, source: Any,
                       run_dir: Path | None, *, resume: bool = False, log: Log = print) -> GuardOutcome:
    """Run the guard (or read a resumed run's result) and narrow the views and teacher source to what it kept.

    ``source`` may be None (the guard runs first: views that mix faces); the caller builds it on the returned
    views. Raises:
        ConfigError: exclusions with a per-rank teacher cache (``train.cache_shards: per_rank``).
    """
    policy = guard_policy(cfg, evald)
    if policy != "off" and not getattr(teacher, "can_embed", True):
        log("leak guard: the precomputed teacher cannot embed the evaluation faces: only copies and names are "
            "checked")
    if policy == "off":
        log("leak guard: off (data.leak_guard.policy); the record says the protocol was not checked")
        return GuardOutcome(views, source, {"policy": "off", "checked": False})
    fp = _fingerprint(train, evald)
    path = None if run_dir is None else Path(run_dir) / GUARD_FILE
    record = _resumed(path, fp, log) if resume and path is not None else None
    if record is None:
        side_e = eval_side(cfg, teacher, evald, log)
        if not len(side_e.names):
            log("leak guard: the run's student protocols have no evaluation images: nothing to check")
            return GuardOutcome(views, source, {"policy": policy, "checked": False,
                                                "reason": "no evaluation images in the student protocols"})
        emb, how = _train_embeddings(cfg, teacher, train, source, views.clean_view0)
        side_t = train_side(train, emb)
        result = check_leaks(side_t, side_e, cfg.data.leak_guard, policy=policy, log=log)
        log(result.summary())
        for f in result.flagged[:5]:
            log(f"  {f.evidence}: {side_t.names[f.train]} ~ {side_e.names[f.eval]} (score {f.score:.3g})")
        if len(result.flagged) > 5:
            log(f"  ... and {len(result.flagged) - 5} more (every one in {path or GUARD_FILE})")
        record = {**result.to_record(side_t, side_e), "train_embeddings": how, "fingerprint": fp,
                  "excluded_train": [side_t.names[i] for i in result.excluded]}
        if path is not None:
            atomic_write_json(path, record)
            if cfg.data.leak_guard.examples and result.flagged:
                from distill.evaluation.leak_figure import write_examples

                record["examples_png"] = write_examples(path.with_suffix(".png"), side_t, side_e,
                                                        result.flagged[:cfg.data.leak_guard.examples])
                atomic_write_json(path, record)
    position = {n: i for i, n in enumerate(train.rel_paths)}
    dropped = np.array(sorted(position[n] for n in record["excluded_train"]), dtype=np.int64)
    if not len(dropped):
        return GuardOutcome(views, source, record)
    kept = np.setdiff1d(views.indices, dropped)
    if len(kept) < cfg.train.batch_size:
        raise ConfigError(f"the leak guard excluded {len(dropped)} of {len(views.indices)} training images (listed in "
                          f"{path or 'leak_guard.json'}), leaving {len(kept)}: fewer than one batch of "
                          f"train.batch_size={cfg.train.batch_size}. Train on images of other people, lower "
                          f"train.batch_size, or set data.leak_guard.policy: warn to train on them anyway")
    if source is not None and hasattr(source, "only"):
        try:
            source = source.only(kept)
        except ValueError as e:
            raise ConfigError(f"the leak guard excluded {len(dropped)} training images but {e}; set "
                              f"data.leak_guard.policy: warn, or remove the images from the training folders") from None
    if views.mix is None:
        return GuardOutcome(views.subset(kept), source, record, kept)
    # mixes: the views (and the cache built on them) are made on the kept faces only, partners included
    return GuardOutcome(FaceViews(views.faces, views.augment, views.seed, kept, views.clean_view0, views.mix,
                                  views.groups, views.shares), source, record, kept)


def _train_embeddings(cfg: Config, teacher: Any, train: TrainData, source: Any, clean_view0: bool
                      ) -> tuple[np.ndarray | None, str]:
    """The training faces' teacher embeddings: the cache's clean view 0 (``data.augment.clean_view0``) or its
    view means, else one clean pass."""
    if source is not None and hasattr(source, "mean_embeddings"):
        cached = source.view_embeddings(0) if clean_view0 else source.mean_embeddings()
        out = np.zeros((len(train.rel_paths), cached.shape[1]), np.float32)
        out[source.face_index] = cached
        return out, ("the teacher cache's clean view 0 (no extra teacher pass)" if clean_view0 else
                     f"mean of the teacher cache's {source.num_views} views (no extra teacher pass)")
    if not getattr(teacher, "can_embed", True):
        lookup = teacher.lookup(list(train.rel_paths))
        return np.asarray(lookup, np.float32), "the precomputed teacher's embeddings"
    try:
        emb = extract_embeddings(teacher, train.faces, batch_size=cfg.teacher.batch_size)
    except FloatingPointError as e:
        return None, f"none: {e}"
    return emb, "one clean teacher pass (online teacher, or views that mix faces)"


def _fingerprint(train: TrainData, evald: EvalData) -> str:
    """What a resumed run's guard result must have been computed on: the training and evaluation names."""
    h = hashlib.sha256("\n".join(train.rel_paths).encode())
    h.update(b"||")
    h.update("\n".join(evald.rel_paths).encode())
    return h.hexdigest()[:20]


def _resumed(path: Path, fp: str, log: Log) -> dict[str, Any] | None:
    """A resumed run's guard record, when it was computed on the same images."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fp:
        log(f"leak guard: {path} was computed on other images; checking again")
        return None
    log(f"leak guard: resumed with the exclusions in {path} ({len(record['excluded_train'])} images)")
    return record


def guard_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The guard's record without its per-image lists (what the report shows; the lists stay in
    ``leak_guard.json`` and ``data_record.json``)."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in ("flagged", "excluded_train", "fingerprint")} | \
        {"examples": record.get("flagged", [])[:8]}


def annotate_split(train_record: dict[str, Any], guard: dict[str, Any] | None) -> dict[str, Any]:
    """``train_record`` whose identity-disjointness claims say whether the leak guard checked them."""
    checked = bool(guard and guard.get("policy") != "off" and guard.get("checked", True))
    note = ("checked by the leak guard (leak_guard.json)" if checked
            else "not checked for shared people or files (data.leak_guard.policy off)")

    def fix(rec: dict[str, Any]) -> dict[str, Any]:
        split = rec.get("split")
        if isinstance(split, dict) and isinstance(split.get("identity_disjoint"), str):
            rec = {**rec, "split": {**split, "identity_disjoint": f"{split['identity_disjoint']}; {note}"}}
        return rec
    out = fix(dict(train_record))
    if isinstance(out.get("sources"), list):
        out["sources"] = [fix(dict(r)) for r in out["sources"]]
    return {**out, "leak_checked": checked}


"""Evaluation protocols from a config: which faces to align, and which pairs of them to score.

A protocol is one of:

* an LFW-format pairs file (``eval.pairs[].file``), optionally restricted to the people of another
  file (``only_people_in``) or widened to every pair of its people's images (``all_pairs``);
* an identity-folder set (``eval.pairs[].folder``: ``folder/<person>/<image>``, any image format):
  every pair of its images, or a seeded sample of N genuine + N impostor pairs (``sample_pairs``);
* an insightface ``.bin`` validation set (``eval.pairs[].bin``; :mod:`distill.data.bin_protocol`):
  pre-aligned crops and their pairs, used without detection;
* the held-out people of ``data.holdout_fraction`` (every pair of their images), added when the
  config names no protocol.

Images an ``aligned`` key declares already aligned (``data.aligned`` for the training root,
``eval.pairs[].aligned``) are used without detection, re-framed when the model's template differs.

All faces are aligned once (through the cache); identity labels come from the scanned image lists
and are carried through alignment (images skipped in alignment drop out with their pairs).

Example::

    ev = prepare_eval(cfg, "dlib_150", print, sources=resolve_sources(cfg, print))
    ev.faces.shape, [p.name for p in ev.protocols], ev.labels[:5]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.config import Config, ConfigError, PairsSpec
from .pairindex import PairIndex

from .folders import ImageList, scan_identity_folder
from .pairs import PairsProtocol, all_pairs, detect_image_ext, read_pairs, sample_pairs
from .prepare import Sources, align, identity_split, resolve_sources

Log = Callable[[str], None]
HELD_OUT = "held-out"


@dataclass
class EvalProtocol:
    """One protocol: its name, pairs as indices into :attr:`EvalData.faces`, and who it is for."""

    name: str
    pairs: PairIndex
    teacher_only: bool

    @property
    def size(self) -> int:
        """Number of pairs."""
        return len(self.pairs)


@dataclass
class EvalData:
    """Aligned evaluation faces ``(N, S, S, 3)`` uint8 with identity labels, and the protocols over them.

    ``held_out[i]``: face ``i`` belongs to a person the student never trained on (these faces make the
    identification gallery/probes and the fidelity measurement).
    """

    faces: np.ndarray
    rel_paths: list[str]
    labels: np.ndarray
    identities: list[str]
    held_out: np.ndarray
    protocols: list[EvalProtocol]
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Planned:
    """A protocol before alignment: the images it needs and how to pair them."""

    spec: PairsSpec
    images: ImageList            # the images it uses (labels = people)
    file_pairs: PairsProtocol | None = None   # None: pairs are made from ``images`` (all or sampled)
    keep: np.ndarray | None = None


def _plan_file(spec: PairsSpec, root: Path, scanned: ImageList, ext: str) -> _Planned:
    proto = read_pairs(spec.file, root, ext=ext)
    people = proto.people()
    keep = np.ones(len(proto), dtype=bool)
    if spec.only_people_in is not None:
        people &= read_pairs(spec.only_people_in, root, check_exists=False).people()
        keep = np.array([a in people and b in people for a, b in zip(proto.person_a, proto.person_b)], dtype=bool)
    if spec.all_pairs:  # every image of the people, not the file's pairs
        return _Planned(spec, scanned.select_identities(people))
    used = sorted({p for i in np.flatnonzero(keep) for p in (proto.rel_path_a[i], proto.rel_path_b[i])})
    where = {p: i for i, p in enumerate(scanned.rel_paths)}
    missing = [p for p in used if p not in where]
    if missing:  # unreadable files the scan left out: their pairs cannot be scored
        keep &= np.array([a in where and b in where for a, b in zip(proto.rel_path_a, proto.rel_path_b)])
        used = [p for p in used if p in where]
    return _Planned(spec, scanned.subset(np.array(sorted(where[p] for p in used), dtype=np.int64)), proto, keep)


class _Scans:
    """Each identity-folder root scanned once."""

    def __init__(self) -> None:
        self._done: dict[Path, ImageList] = {}

    def __call__(self, root: Path) -> ImageList:
        if root not in self._done:
            self._done[root] = scan_identity_folder(root)
        return self._done[root]


def _plan(sources: Sources, scan: _Scans, held_people: set[str]) -> list[_Planned]:
    planned = []
    for spec in sources.specs:
        if spec.bin is not None:  # pre-aligned crops with their own pairs: see _add_bins
            continue
        if spec.folder is not None:
            planned.append(_Planned(spec, scan(spec.folder)))
        else:
            ext = sources.synthetic.ext if sources.synthetic is not None else detect_image_ext(sources.eval_root)
            planned.append(_plan_file(spec, sources.eval_root, scan(sources.eval_root), ext))
    if held_people:
        planned.append(_Planned(PairsSpec(folder=sources.root, name=HELD_OUT), scan(sources.root).select_identities(
            held_people)))
    return planned


def _declared_alignment(cfg: Config, sources: Sources, planned: list[_Planned]) -> dict[Path, str | None]:
    """The template each image root's crops are declared aligned to (None: photos to detect faces in).

    Raises:
        ConfigError: two protocols over the same images declare different templates."""
    out: dict[Path, str | None] = {sources.root: cfg.data.aligned}
    for p in planned:
        root = p.images.root
        if p.spec.aligned is None or p.spec.name == HELD_OUT:
            out.setdefault(root, None)
            continue
        if out.get(root) not in (None, p.spec.aligned):
            raise ConfigError(f"eval.pairs {p.spec.label}: its images under {root} are declared aligned to "
                              f"{p.spec.aligned}, but data.aligned or another protocol over them says {out[root]}; "
                              "declare one template per image folder")
        out[root] = p.spec.aligned
    return out


def _folder_pairs(images: ImageList, spec: PairsSpec, seed: int) -> tuple[np.ndarray, ...]:
    if spec.sample_pairs:
        return sample_pairs(images.labels, spec.sample_pairs, folds=spec.folds, seed=seed)
    return all_pairs(images.labels, folds=spec.folds)


def prepare_eval(cfg: Config, template: str, log: Log, *, sources: Sources | None = None) -> EvalData:
    """Align every image the evaluation protocols use and index their pairs (see the module docs).

    Raises:
        FileNotFoundError, PairsFormatError, MissingImagesError, DatasetError: a pairs file or image folder
            cannot be read; the message names it.
    """
    sources = sources or resolve_sources(cfg, log)
    scan = _Scans()
    held_people: set[str] = set()
    if not cfg.eval.pairs and cfg.data.holdout_fraction is not None and sources.synthetic is None:
        held_people = set(identity_split(cfg, sources, scan(sources.root)).held_out)
    planned = _plan(sources, scan, held_people)
    # people the student never trained on: those of the protocols it is scored on and of excluded files;
    # every image of theirs joins the identification gallery/probes
    held: dict[Path, set[str]] = {}
    for p in planned:
        if not p.spec.teacher_only:
            held.setdefault(p.images.root, set()).update(p.images.identities)
    for f in sources.exclude:
        if Path(f).is_file():
            held.setdefault(sources.eval_root, set()).update(
                read_pairs(f, sources.eval_root, check_exists=False).people())
    wanted: dict[Path, set[str]] = {}
    for p in planned:
        wanted.setdefault(p.images.root, set()).update(p.images.rel_paths)
    for root, people in held.items():
        wanted.setdefault(root, set()).update(scan(root).select_identities(people).rel_paths)
    declared = _declared_alignment(cfg, sources, planned)
    multi = len(wanted) > 1  # several roots: names are prefixed with the root's folder name
    faces, rel_paths, person, pos, alignment = [], [], [], {}, {}
    for root, rels in wanted.items():
        images = scan(root)
        identity = {r: images.identities[lab] for r, lab in zip(images.rel_paths, images.labels)}
        aligned = align(cfg, root, sorted(rels), template, log, aligned=declared.get(root))
        alignment[str(root)] = aligned.record.to_dict()
        for r in aligned.rel_paths:  # labels carried through alignment: the scan's identity of each kept face
            pos[(root, r)] = len(rel_paths)
            rel_paths.append(f"{root.name}/{r}" if multi else r)
            person.append((root, identity[r]))
        faces.append(aligned.faces)
    bins = _add_bins(cfg, sources, template, log, faces, rel_paths, person)
    names = sorted(set(person), key=lambda rp: (str(rp[0]), rp[1]))
    index = {rp: i for i, rp in enumerate(names)}
    labels = np.array([index[rp] for rp in person], dtype=np.int64)
    held_mask = np.array([name in held.get(root, ()) for root, name in person], dtype=bool)
    out = []
    for p in planned:
        pairs, dropped = _index(p, pos, cfg.seed)
        if dropped:
            log(f"{p.spec.label}: {dropped} pairs dropped (their images were skipped in alignment; see the record)")
        out.append(EvalProtocol(p.spec.label, pairs, p.spec.teacher_only))
        every = p.file_pairs is None and not p.spec.sample_pairs
        log(f"protocol {p.spec.label}: {len(pairs)} pairs ({int(pairs.is_same.sum())} same)"
            + (f", every pair of {len(p.images)} images of {p.images.num_identities} people" if every else "")
            + (", teacher only" if p.spec.teacher_only else ""))
    out += [EvalProtocol(spec.label, pairs, spec.teacher_only) for spec, pairs in bins]
    order = {spec.label: k for k, spec in enumerate(sources.specs)}
    out.sort(key=lambda p: order.get(p.name, len(order)))  # the config's order; held-out people last
    all_faces = faces[0] if len(faces) == 1 else np.concatenate([np.asarray(f) for f in faces])
    record = {"eval_images": len(rel_paths), "held_out_identities": sum(len(v) for v in held.values()),
              "alignment": (alignment[str(next(iter(wanted)))] if len(wanted) == 1 else alignment),
              "protocols": {p.name: p.size for p in out}}
    identities = [f"{root.name}/{n}" if multi else n for root, n in names]
    return EvalData(all_faces, rel_paths, labels, identities, held_mask, out, record)


def _add_bins(cfg: Config, sources: Sources, template: str, log: Log, faces: list[np.ndarray],
              rel_paths: list[str], person: list[tuple[Path, str]]) -> list[tuple[PairsSpec, PairIndex]]:
    """Append every ``.bin`` protocol's faces (pre-aligned crops: no detection) to ``faces``, ``rel_paths``
    and ``person``; return each spec with its pairs as indices into the combined faces."""
    from .bin_protocol import bin_faces

    out = []
    for spec in sources.specs:
        if spec.bin is None:
            continue
        bf = bin_faces(spec, template, cfg.data.cache_dir, log)
        offset = len(rel_paths)
        rel_paths += [f"{spec.bin.name}/{k}" for k in range(len(bf.faces))]
        person += [(spec.bin, name) for name in bf.names]
        faces.append(bf.faces)
        p = bf.pairs
        out.append((spec, PairIndex(p.idx_a + offset, p.idx_b + offset, p.is_same, p.fold)))
    return out


def _index(p: _Planned, pos: dict[tuple[Path, str], int], seed: int) -> tuple[PairIndex, int]:
    """``(PairIndex into the eval faces, pairs dropped because an image was not aligned)``."""
    root = p.images.root
    if p.file_pairs is not None:
        proto = p.file_pairs
        ok = p.keep & np.array([(root, a) in pos and (root, b) in pos
                                for a, b in zip(proto.rel_path_a, proto.rel_path_b)], dtype=bool)
        idx = np.flatnonzero(ok)
        pairs = PairIndex(np.array([pos[(root, proto.rel_path_a[i])] for i in idx], dtype=np.int64),
                          np.array([pos[(root, proto.rel_path_b[i])] for i in idx], dtype=np.int64),
                          proto.is_same[idx], proto.fold[idx])
        return pairs, int(p.keep.sum() - ok.sum())
    where = np.array([pos.get((root, r), -1) for r in p.images.rel_paths], dtype=np.int64)
    aligned = where >= 0
    kept = p.images.subset(aligned)
    a, b, same, fold = _folder_pairs(kept, p.spec, seed)
    n = len(p.images)
    total = n * (n - 1) // 2 if not p.spec.sample_pairs else len(a)
    return PairIndex(where[aligned][a], where[aligned][b], same, fold), max(0, total - len(a))

"""Several training sources in one run: ``data.sources: [{kind, root, ...}, ...]``.

Each entry is read by its registered kind (:data:`~distill.data.sources.SOURCE_KINDS`) under a config whose
``data`` section carries the entry's own options (root, alignment backend, no-face policy, cap); the faces
are then one lazy array (:class:`ConcatFaces`, nothing copied) in the order of the list, and
:attr:`TrainData.groups` says which source each face came from (the trainer draws each source's ``share``
of every epoch from it). Identity splits and ``exclude_identities_in`` apply to labelled sources (folder,
synthetic); unlabelled images are training-only. The record lists every source with its counts.

Example::

    cfg = load_config(None, ["data.sources=[{kind: folder, root: lfw}, {kind: unlabelled, root: photos}]"])
    kind = SourceList(cfg)
    train = kind.train(cfg, "dlib_150", print, kind.resolve(cfg, print), None)
    train.record["sources"][1]["aligned_train_faces"], train.groups[:3]
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distill.config import Config, SourceSettings
from distill.fingerprint import array_digest

from .sources import SOURCE_KINDS, Log, SourceKind, Sources, TrainData


def source_config(cfg: Config, source: SourceSettings) -> Config:
    """``cfg`` as one source sees it: ``data.source``/``root``/``aligned``/backend/no-face/cap from the entry
    (unset options follow ``data``), no list."""
    data = cfg.data.model_copy(update=dict(
        source=source.kind, root=source.root, aligned=source.aligned, sources=[],
        align_backend=source.align_backend or cfg.data.align_backend, no_face=source.no_face or cfg.data.no_face,
        max_train_images=source.max_images or cfg.data.max_train_images))
    return cfg.model_copy(update={"data": data})


class ConcatFaces:
    """Several ``(N_i, S, S, 3)`` uint8 face arrays (memmaps or lazy arrays) read as one ``(sum N_i, S, S, 3)``
    array without copying: ``faces[i]`` one face, an index array or slice a stacked batch."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, parts: Sequence[Any]) -> None:
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"sources aligned to different sizes: {sorted(shapes)}")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *shapes.pop())

    def __len__(self) -> int:
        return self.shape[0]

    def _locate(self, i: int) -> tuple[int, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"face {i} of {len(self)}")
        i %= len(self)
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return part, i - int(self.offsets[part])

    def __getitem__(self, i: Any) -> np.ndarray:
        if isinstance(i, (int, np.integer)):
            part, j = self._locate(int(i))
            return np.asarray(self.parts[part][j])
        idx = np.arange(len(self))[i] if isinstance(i, slice) else np.asarray(i, dtype=np.int64)
        if not len(idx):
            return np.empty((0, *self.shape[1:]), np.uint8)
        return np.stack([self[int(k)] for k in idx])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every face (small sets and tests only)."""
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def fingerprint(self) -> str:
        """Identity of the faces for cache keys: each part's own fingerprint, or a digest of its bytes."""
        h = hashlib.sha256()
        for p in self.parts:
            own = getattr(p, "fingerprint", None)
            h.update((own() if callable(own) else array_digest(p, np.arange(len(p), dtype=np.int64))).encode())
            h.update(b"|")
        return h.hexdigest()[:20]


class SourceList(SourceKind):
    """``data.sources``: every entry read by its kind, concatenated (see the module docs)."""

    def __init__(self, cfg: Config) -> None:
        self.entries = [(cfg.data.source_name(s), s, source_config(cfg, s), SOURCE_KINDS.build(s.kind))
                        for s in cfg.data.sources]

    def problems(self, cfg: Config) -> list[str]:
        """Every entry's problems, each naming its entry."""
        # each entry is checked as a one-source config: its data.root is this entry's root
        return [f"data.sources[{i}] ({name}): {p.replace('data.root', f'data.sources[{i}].root')}"
                for i, (name, _, sub, kind) in enumerate(self.entries) for p in kind.problems(sub)]

    def resolve(self, cfg: Config, log: Log) -> Sources:
        """Each entry's images; evaluation from eval.pairs (else the first entry's own protocol, e.g. the
        synthetic set's test pairs) under eval.images_root (else the first entry's)."""
        resolved = [kind.resolve(sub, log) for _, _, sub, kind in self.entries]
        self.resolved = resolved
        first = resolved[0]
        specs = list(cfg.eval.pairs) or next((r.specs for r in resolved if r.specs), [])
        exclude = list(dict.fromkeys(p for r in resolved for p in r.exclude))
        synthetic = next((r.synthetic for r in resolved if r.synthetic is not None), None)
        return Sources(first.root, Path(cfg.eval.images_root) if cfg.eval.images_root else first.eval_root,
                       specs, exclude, synthetic)

    def train(self, cfg: Config, template: str, log: Log, sources: Sources, run_dir: Path | None) -> TrainData:
        """Every entry's training faces, concatenated in list order; ``groups`` and per-source records."""
        resolved = getattr(self, "resolved", None) or [kind.resolve(sub, log) for _, _, sub, kind in self.entries]
        parts, records = [], []
        for (name, entry, sub, kind), own in zip(self.entries, resolved):
            log(f"training source {name!r} ({entry.kind}):")
            part = kind.train(sub, template, log, own, None if run_dir is None else run_dir / "sources" / name)
            parts.append(part)
            records.append({"name": name, "kind": entry.kind, "root": None if entry.root is None else str(entry.root),
                            "share": entry.share, **part.record})
        return concat_train(parts, records)

    def describe(self, cfg: Config, missing: bool) -> dict[str, Any]:
        """One plan entry per source."""
        return {"sources": [{"name": name, **kind.describe(sub, missing)} for name, _, sub, kind in self.entries]}


def concat_train(parts: Sequence[TrainData], records: list[dict[str, Any]]) -> TrainData:
    """One :class:`TrainData` of several: faces concatenated lazily, names prefixed ``<source>:``, labels
    offset so that people of different sources stay apart (-1, unlabelled, stays -1), ``groups`` the source
    index of each face."""
    labels, names, files, identities = [], [], [], []
    for part, rec in zip(parts, records):
        lab = np.asarray(part.labels, dtype=np.int64)
        own = list(part.identities) or [f"{rec['name']}#{k}" for k in range(int(lab.max(initial=-1)) + 1)]
        labels.append(np.where(lab >= 0, lab + len(identities), -1))
        identities += own
        names += [f"{rec['name']}:{p}" for p in part.rel_paths]
        files += list(part.files) if part.files is not None else [None] * len(part.rel_paths)
    groups = np.repeat(np.arange(len(parts)), [len(p.faces) for p in parts])
    totals = {k: sum(int(r.get(k) or 0) for r in records) for k in ("train_images", "aligned_train_faces")}
    record = {"sources": records, **totals}
    return TrainData(None, ConcatFaces([p.faces for p in parts]), names, np.concatenate(labels), record,
                     groups=groups, shares=[r["share"] for r in records], files=files, identities=identities)

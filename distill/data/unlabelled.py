"""Unlabelled photo collections as a training source: ``kind: unlabelled`` (or ``data.source: unlabelled``).

Distillation needs no identity labels: the teacher labels every face. An unlabelled source is a flat or
nested folder of images, any depth, any format :data:`~distill.data.folders.IMAGE_EXTENSIONS` lists
(hidden entries and operating-system litter ignored, symlinked folders not followed, so a link loop cannot
hang the scan). Its images are training-only: no split, no identities (label ``-1``); whether one of them
shows a person the evaluation tests on is the leak guard's question (:mod:`distill.data.leak_guard`).

Example::

    images = scan_unlabelled("/data/camera_dumps")          # ImageList with identities == []
    images.rel_paths[:2]                                    # ['2024/01/a.jpg', '2024/01/b.png']
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from distill.config import Config, key_remedy

from .folders import LITTER, DatasetError, ImageList, _check_file, _printable
from .sources import SOURCE_KINDS, Log, SourceKind, Sources, TrainData, align


def scan_unlabelled(root: str | Path) -> ImageList:
    """Every usable image under ``root`` (any depth), sorted by relative path; ``labels`` all 0 of one
    pseudo-identity ``""`` (an :class:`ImageList` needs one; the source reports them as unlabelled).

    Raises:
        DatasetError: ``root`` is missing, not a folder, or holds no usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"unlabelled source {root} is not a folder (a flat or nested folder of face photos; "
                           f"check data.sources[].root or data.root)")
    good: list[str] = []
    skipped: list[tuple[str, str]] = []
    for here, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in LITTER)
        rel_dir = os.path.relpath(here, root)
        with os.scandir(here) as it:
            entries = {e.name: e for e in it}
        for name in sorted(files, key=os.fsencode):
            if name.startswith(".") or name in LITTER:
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            reason = _check_file(entries[name]) if name in entries else "vanished while scanning"
            if reason is None:
                good.append(rel)
            elif reason != "not an image extension":  # other files (notes, CSVs) are not data
                skipped.append((_printable(rel), reason))
    good.sort(key=os.fsencode)
    if not good:
        raise DatasetError(f"no usable images under {root} (searched every sub-folder for "
                           f"{', '.join(sorted({'.jpg', '.png', '.pgm', '.bmp', '.webp'}))}, ...)")
    return ImageList(root, good, np.zeros(len(good), dtype=np.int64), [""], skipped)


def cap(images: ImageList, limit: int | None, seed: int) -> ImageList:
    """A seeded subset of at most ``limit`` images, in the original order (all when ``limit`` is None)."""
    if not limit or len(images) <= limit:
        return images
    pick = np.random.default_rng(seed).choice(len(images), limit, replace=False)
    return images.subset(np.sort(pick))


@SOURCE_KINDS.register("unlabelled", description="a flat or nested folder of face photos without identities")
class UnlabelledSource(SourceKind):
    """``unlabelled``: every image of a folder tree, training-only, label -1 (see the module docs)."""

    def problems(self, cfg: Config) -> list[str]:
        """The folder must exist."""
        root = cfg.data.root
        if root is None:
            return ["an unlabelled source needs its folder (data.root or data.sources[].root)"]
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            return [f"training faces: unlabelled folder {root} {what} ({key_remedy(cfg, 'data.root')})"]
        return []

    def resolve(self, cfg: Config, log: Log) -> Sources:
        """Training images under data.root; evaluation images under eval.images_root (nothing to exclude)."""
        assert cfg.data.root is not None
        return Sources(cfg.data.root, Path(cfg.eval.images_root or cfg.data.root), list(cfg.eval.pairs), [])

    def train(self, cfg: Config, template: str, log: Log, sources: Sources, run_dir: Path | None) -> TrainData:
        """Scan, cap and align the folder's images."""
        from .folders import save_image_list

        images = cap(scan_unlabelled(sources.root), cfg.data.max_train_images, cfg.seed)
        log(f"unlabelled images: {len(images)} under {sources.root}"
            + (f" ({len(images.skipped)} files skipped: see data_record.json)" if images.skipped else ""))
        aligned = align(cfg, sources.root, images, template, log, aligned=cfg.data.aligned)
        record = {"split": {"identity_disjoint": "unlabelled: no names to split by (training only)"},
                  "train_images": len(images), "train_identities": None, "aligned_train_faces": len(aligned),
                  "alignment": aligned.record.to_dict(), "skipped_while_scanning": [list(s) for s in images.skipped]}
        if run_dir is not None:
            save_image_list(images, run_dir / "split" / "train_images.json")
        return TrainData(images, aligned.faces, aligned.rel_paths, np.full(len(aligned), -1, dtype=np.int64), record,
                         files=[str(sources.root / r) for r in aligned.rel_paths])

    def describe(self, cfg: Config, missing: bool) -> dict[str, Any]:
        """Root and (when it exists) the number of images found: a scan, no decoding."""
        out: dict[str, Any] = {"source": "unlabelled", "root": str(cfg.data.root)}
        if not missing and cfg.data.root is not None and cfg.data.root.is_dir():
            try:
                out["train_images"] = len(cap(scan_unlabelled(cfg.data.root), cfg.data.max_train_images, cfg.seed))
            except DatasetError:
                pass
        return out

"""Training sources (``data.source``) as registered kinds: what a run's images are, checked, planned and read.

A kind is a :class:`SourceKind` registered with ``@SOURCE_KINDS.register("name")``; it answers four questions:

* :meth:`~SourceKind.problems`: what is missing before anything runs (``distill run`` preflight, ``--dry-run``);
* :meth:`~SourceKind.resolve`: where training and evaluation images live (:class:`Sources`), generating or
  downloading them when the config asks;
* :meth:`~SourceKind.train`: the training faces (:class:`TrainData`) for a teacher's template;
* :meth:`~SourceKind.describe`: the ``data`` line of the run plan.

The kinds: ``synthetic`` and ``folder`` (:mod:`distill.data.prepare`), ``recordio``
(:mod:`distill.data.recordio_source`). A new kind is one module and its registration (imported by
:mod:`distill.data.prepare`, which registers every kind); ``data.source`` in the config lists the names.

Example::

    from distill.data.prepare import source_kind   # prepare registers every kind
    kind = source_kind(cfg)                       # the registered kind of cfg.data.source
    problems = kind.problems(cfg)
    train = kind.train(cfg, "arcface_112", print, kind.resolve(cfg, print), None)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill.config import Config, ConfigError, PairsSpec
from distill.registry import Registry

from .align import AlignedFaces, align_images
from .folders import ImageList

Log = Callable[[str], None]


@dataclass
class Sources:
    """Where a run's images live (resolved once per run, shared by training and evaluation).

    Attributes:
        root: the training images' root (identity folders, or a RecordIO set).
        eval_root: where the evaluation protocols' images live.
        specs: the evaluation protocols (the synthetic set brings its own).
        exclude: pairs files whose people are never trained on.
        synthetic: the generated set, or None.
    """

    root: Path
    eval_root: Path
    specs: list[PairsSpec]
    exclude: list[Path]
    synthetic: Any = None


@dataclass
class TrainData:
    """Aligned training faces: ``faces`` uint8 ``(N, S, S, 3)`` (a memmap, or a lazy array for a RecordIO set
    or several sources), their paths (names) and labels (-1: unlabelled), and the record; ``images`` is the
    scanned list (None for RecordIO and several sources)."""

    images: Any
    faces: Any
    rel_paths: Sequence[str]
    labels: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)
    #: several sources (``data.sources``): the source index of each face, and each source's share (or None)
    groups: np.ndarray | None = None
    shares: list[float | None] | None = None
    #: the file each face was read from (None: no file, e.g. a RecordIO record), for the leak guard's digests
    files: Sequence[str | None] | None = None
    #: names of the people ``labels`` index (labelled sources; several sources: concatenated in label order)
    identities: Sequence[str] = ()


class SourceKind:
    """One kind of ``data.source`` (see the module docs); subclasses override what differs."""

    def problems(self, cfg: Config) -> list[str]:
        """What is missing for ``cfg`` (one sentence each, naming the key; never downloads)."""
        return []

    def resolve(self, cfg: Config, log: Log) -> Sources:  # pragma: no cover - every kind overrides it
        """Where this run's images are (generating or downloading them once if the config asks)."""
        raise NotImplementedError

    def train(self, cfg: Config, template: str, log: Log, sources: Sources,
              run_dir: Path | None) -> TrainData:  # pragma: no cover - every kind overrides it
        """The training faces aligned to ``template``; the split is written into ``run_dir`` when given."""
        raise NotImplementedError

    def describe(self, cfg: Config, missing: bool) -> dict[str, Any]:
        """The run plan's ``data`` entry (counts only when nothing is ``missing``: no image is decoded)."""
        return {"source": cfg.data.source}


SOURCE_KINDS: Registry[SourceKind] = Registry("training source")


def align(cfg: Config, root: Path, images: ImageList | list[str], template: str, log: Log, *,
          aligned: str | None = None) -> AlignedFaces:
    """Align ``images`` under ``root`` to ``template`` with the config's backend, no-face policy and cache;
    ``aligned``: the images are crops of that template already (no detection; re-framed if it differs).

    Raises:
        ConfigError: ``aligned`` cannot be re-framed to ``template`` (names data.aligned / eval.pairs[].aligned).
    """
    from .templates import ReframeError

    rel = images.rel_paths if isinstance(images, ImageList) else list(images)
    try:
        faces = align_images(root, rel, template=template, backend="none" if aligned else cfg.data.align_backend,
                             cache_dir=cfg.data.cache_dir / "aligned", no_face=cfg.data.no_face,
                             workers=cfg.data.workers, aligned_as=aligned)
    except ReframeError as e:
        raise ConfigError(f"images under {root} are declared aligned to {aligned} (data.aligned or "
                          f"eval.pairs[].aligned) but the teacher needs {template}: {e}. Give images the teacher's "
                          f"template can be cut from (photos, with data.aligned unset), or a teacher whose "
                          f"template is {aligned}") from None
    log(f"aligned {len(rel)} images from {root}: {faces.record.summary()}")
    return faces

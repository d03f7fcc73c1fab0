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

from distill.config import Config, PairsSpec
from distill.registry import Registry

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
    """Aligned training faces: ``faces`` uint8 ``(N, S, S, 3)`` (a memmap, or a lazy array for a RecordIO set),
    their paths (names) and labels, and the record; ``images`` is the scanned list (None for RecordIO)."""

    images: Any
    faces: Any
    rel_paths: Sequence[str]
    labels: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


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

"""From a config to training faces: where the images are, the identity-disjoint split, alignment.

:func:`resolve_sources` decides once per run where training and evaluation images live
(generating the synthetic set or downloading LFW when the config says so);
:func:`identity_split` splits the training root so that no evaluation person is trained on;
:func:`prepare_train` aligns the training images (through the cache) and records what happened.

Example::

    sources = resolve_sources(cfg, print)
    train = prepare_train(cfg, "dlib_150", print, sources=sources, run_dir=run_dir)
    train.faces.shape        # (N, 150, 150, 3) uint8 memmap
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.config import Config, ConfigError, PairsSpec, key_remedy
from distill.io import atomic_write_json

from .folders import ImageList, save_image_list, scan_identity_folder
from .sources import SOURCE_KINDS, Log, SourceKind, Sources, TrainData, align
from .splits import Split, identity_disjoint_split


def resolve_sources(cfg: Config, log: Log) -> Sources:
    """Where this run's images are (its :class:`~distill.data.sources.SourceKind` decides; once per run)."""
    return source_kind(cfg).resolve(cfg, log)


def source_kind(cfg: Config) -> SourceKind:
    """The registered kind of ``cfg.data.source`` (:data:`~distill.data.sources.SOURCE_KINDS`), or the
    :class:`~distill.data.multisource.SourceList` of ``cfg.data.sources``.

    Raises:
        UnknownNameError: a name no kind registered (the config's Literal prevents it)."""
    if cfg.data.sources:
        from .multisource import SourceList

        return SourceList(cfg)
    return SOURCE_KINDS.build(cfg.data.source)


@SOURCE_KINDS.register("synthetic", description="identities generated offline (the embedded default)")
class SyntheticSource(SourceKind):
    """``data.source: synthetic``: generated identities with their own test pairs."""

    def resolve(self, cfg: Config, log: Log) -> Sources:
        """Generate (or re-use) the synthetic set; its test pairs are the protocol unless eval.pairs names one."""
        from .synthetic import generate_synthetic, synthetic_dir

        sy = cfg.data.synthetic
        params = dict(identities=sy.identities, images_per_identity=sy.images_per_identity, seed=sy.seed,
                      size=sy.size, test_fraction=sy.test_fraction)
        synth = generate_synthetic(synthetic_dir(cfg.data.cache_dir, **params), **params)
        log(f"synthetic identities: {len(synth.identities)} ({'re-used' if synth.reused else 'generated'}) "
            f"in {synth.root}")
        specs = list(cfg.eval.pairs) or [PairsSpec(file=synth.test_pairs_path, name="synthetic-test")]
        return Sources(synth.root, synth.root, specs, [synth.test_pairs_path, *cfg.data.exclude_identities_in],
                       synth)

    def train(self, cfg: Config, template: str, log: Log, sources: Sources, run_dir: Path | None) -> TrainData:
        """The generated identity folders, split and aligned like a folder source."""
        return _train_from_folder(cfg, template, log, sources, run_dir)

    def describe(self, cfg: Config, missing: bool) -> dict[str, Any]:
        """Identities and images the generator will make."""
        sy = cfg.data.synthetic
        return {"source": "synthetic", "identities": sy.identities, "images": sy.identities * sy.images_per_identity,
                "test_identities": max(2, round(sy.identities * sy.test_fraction))}


@SOURCE_KINDS.register("folder", description="an identity-folder tree root/<identity>/<image>")
class FolderSource(SourceKind):
    """``data.source: folder``: an identity-folder tree, split identity-disjointly from the evaluation people."""

    def problems(self, cfg: Config) -> list[str]:
        """data.root and the exclusion files (LFW's may come from the download)."""
        out = []
        if cfg.data.root is None:
            out.append("data.root must name an identity-folder tree when data.source is 'folder'")
        elif not cfg.data.root.is_dir():
            out.append(f"training faces: data.root {cfg.data.root} does not exist (an identity-folder tree "
                       f"root/<identity>/<image>; {key_remedy(cfg, 'data.root')})")
        out += [f"data.exclude_identities_in: {p} does not exist" for p in cfg.data.exclude_identities_in
                if not p.is_file() and not cfg.eval.download_lfw]
        return out

    def resolve(self, cfg: Config, log: Log) -> Sources:
        """The folder as it stands, after downloading LFW's pairs and images if the config asks."""
        if cfg.eval.download_lfw and cfg.eval.pairs:
            from .download import ensure_lfw

            for lfw in dict.fromkeys(s.file.parent for s in cfg.eval.pairs if s.file is not None):
                ensure_lfw(lfw, download=True)
        return folder_sources(cfg)

    def train(self, cfg: Config, template: str, log: Log, sources: Sources, run_dir: Path | None) -> TrainData:
        """Scan, split, cap and align the folder's images."""
        return _train_from_folder(cfg, template, log, sources, run_dir)

    def describe(self, cfg: Config, missing: bool) -> dict[str, Any]:
        """Root, identities, exclusions and (when nothing is missing) the split's sizes: a scan, no decoding."""
        root = cfg.data.root
        n_ids = sum(1 for p in root.iterdir() if p.is_dir()) if root and root.is_dir() else None
        data: dict[str, Any] = {"source": "folder", "root": str(root), "identities": n_ids,
                                "exclude_identities_in": [str(p) for p in cfg.data.exclude_identities_in]}
        if cfg.data.holdout_fraction is not None:
            data["holdout_fraction"] = cfg.data.holdout_fraction
        return data if missing else {**data, **_split_sizes(cfg)}


def _split_sizes(cfg: Config) -> dict[str, int]:
    """Training images and identities after the identity-disjoint split (a folder scan, no image decoded)."""
    from .folders import DatasetError

    try:
        sources = folder_sources(cfg)
        split = identity_split(cfg, sources, scan_identity_folder(sources.root))
    except (DatasetError, OSError):  # the run itself reports these, with their remedy
        return {}
    train = split.train
    if cfg.data.max_train_images:
        n = min(len(train), cfg.data.max_train_images)
        return {"train_images": n, "held_out_identities": len(split.held_out)}
    return {"train_images": len(train), "train_identities": train.num_identities,
            "held_out_identities": len(split.held_out)}


def folder_sources(cfg: Config) -> Sources:
    """The :class:`Sources` of a ``data.source: folder`` config as it stands on disk (no download)."""
    assert cfg.data.root is not None
    exclude = list(cfg.data.exclude_identities_in)
    eval_root = Path(cfg.eval.images_root or cfg.data.root)
    if eval_root.resolve() == cfg.data.root.resolve():
        # evaluation people live in the training folder: never train on them
        people_files = [s.only_people_in or s.file for s in cfg.eval.pairs if not s.teacher_only and s.file]
        exclude += [f for f in dict.fromkeys(people_files) if f not in exclude]
    return Sources(cfg.data.root, eval_root, list(cfg.eval.pairs), exclude)


def identity_split(cfg: Config, sources: Sources, images: ImageList) -> Split:
    """The run's identity-disjoint split of ``images`` (deterministic: the same every time for a config)."""
    if sources.exclude or cfg.data.holdout_fraction is not None:
        return identity_disjoint_split(images, exclude_pairs=sources.exclude,
                                       holdout_fraction=cfg.data.holdout_fraction, seed=cfg.seed)
    # evaluation images come from another root (e.g. train on VGGFace2, test on LFW)
    return Split(images, [], {"identity_disjoint": f"by data set: evaluation images are under {sources.eval_root}, "
                              f"training images under {sources.root}",
                              "train_images": len(images), "held_out_identities": 0})


def prepare_train(cfg: Config, template: str, log: Log, *, run_dir: Path | None = None,
                  sources: Sources | None = None) -> TrainData:
    """The training faces of the config's source kind (a folder: scanned, split identity-disjointly, capped and
    aligned, the split written into ``run_dir``; a RecordIO set: read in place)."""
    return source_kind(cfg).train(cfg, template, log, sources or resolve_sources(cfg, log), run_dir)


def _train_from_folder(cfg: Config, template: str, log: Log, sources: Sources, run_dir: Path | None) -> TrainData:
    """Scan, split (identity-disjoint), cap and align an identity-folder tree; write the split into ``run_dir``."""
    for i, spec in enumerate(sources.specs):
        if spec.folder is not None and spec.folder.resolve() == sources.root.resolve() and not spec.teacher_only:
            raise ConfigError(f"eval.pairs[{i}].folder is data.root ({sources.root}): every person would be held "
                              f"out of training. Evaluate on people the student never saw: another folder, or "
                              f"data.holdout_fraction (held-out people of data.root are then evaluated)")
    images = scan_identity_folder(sources.root)
    split = identity_split(cfg, sources, images)
    train = split.train
    if cfg.data.max_train_images and len(train) > cfg.data.max_train_images:
        pick = np.random.default_rng(cfg.seed).choice(len(train), cfg.data.max_train_images, replace=False)
        train = train.subset(np.sort(pick))
    skipped = images.skipped_identities
    log(f"training set: {len(train)} images of {train.num_identities} identities "
        f"({len(split.held_out)} identities held out for testing"
        + (f"; {len(skipped)} identity folders skipped, no usable image: {', '.join(skipped[:5])}"
           f"{', ...' if len(skipped) > 5 else ''}; see data_record.json" if skipped else "") + ")")
    aligned = align(cfg, sources.root, train, template, log, aligned=cfg.data.aligned)
    record = {"split": split.record, "train_images": len(train), "train_identities": train.num_identities,
              "aligned_train_faces": len(aligned), "alignment": aligned.record.to_dict(),
              "skipped_identity_folders": skipped,
              "skipped_while_scanning": [list(s) for s in images.skipped]}
    if run_dir is not None:
        save_image_list(train, run_dir / "split" / "train_images.json")
        atomic_write_json(run_dir / "split" / "split.json", split.record)
    return TrainData(train, aligned.faces, aligned.rel_paths, train.labels[aligned.indices], record,
                     files=[str(sources.root / r) for r in aligned.rel_paths], identities=list(train.identities))


from . import recordio_source, unlabelled  # noqa: E402,F401 - register data.source recordio and unlabelled (they
# import sources, not this module)

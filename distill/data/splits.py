"""Identity-disjoint train/test splits: no test person is ever seen in training.

Either exclude every person a set of pairs files mentions (the LFW protocol:
train outside ``pairsDevTest.txt``, test on it), or hold out a seeded fraction
of identities. Both return the training images, the held-out identities and a
JSON-serialisable record for the run directory.

Example::

    images = scan_identity_folder(lfw / "lfw-deepfunneled")
    split = identity_disjoint_split(images, exclude_pairs=[lfw / "pairsDevTest.txt"])
    len(split.train), split.train.num_identities      # 10492, 4786
    atomic_write_json(run_dir / "split.json", split.record)
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from distill.data.folders import DatasetError, ImageList
from distill.data.pairs import PairsProtocol, read_pairs


class Split(NamedTuple):
    """``train, held_out, record = identity_disjoint_split(...)``."""

    train: ImageList
    held_out: list[str]
    record: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _list_hash(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()[:16]


def identity_disjoint_split(images: ImageList, *, exclude_pairs: Sequence[str | Path | PairsProtocol] = (),
                            holdout_fraction: float | None = None, seed: int = 0) -> Split:
    """Remove test identities from ``images``.

    Args:
        images: the scanned data set.
        exclude_pairs: pairs files (or read protocols) whose people must not be trained on.
        holdout_fraction: additionally (or instead) hold out this seeded fraction of identities.
        seed: seed for the hold-out draw.

    Returns:
        :class:`Split` ``(train, held_out, record)``; ``held_out`` is sorted and
        includes pairs-file people even when they have no image in ``images``.
    """
    if not exclude_pairs and holdout_fraction is None:
        raise ValueError("give exclude_pairs and/or holdout_fraction: without them the split is not identity-disjoint")
    held: set[str] = set()
    sources: list[dict[str, Any]] = []
    for item in exclude_pairs:
        if isinstance(item, PairsProtocol):
            people = item.people()
            src = {"pairs": str(item.source or item.name), "people": len(people)}
            if item.source is not None and Path(item.source).is_file():
                src["sha256"] = _sha256(Path(item.source))
        else:
            p = Path(item)
            people = read_pairs(p, images.root, check_exists=False).people()
            src = {"pairs": str(p), "sha256": _sha256(p), "people": len(people)}
        held |= people
        sources.append(src)

    record: dict[str, Any] = {"method": [], "seed": seed, "exclude_pairs": sources,
                              "holdout_fraction": holdout_fraction}
    if sources:
        record["method"].append("exclude_pairs_people")
    if holdout_fraction is not None:
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        candidates = [name for name in images.identities if name not in held]
        n_hold = max(1, int(round(holdout_fraction * len(candidates))))
        if n_hold >= len(candidates):
            raise DatasetError(f"holding out {holdout_fraction:.0%} of {len(candidates)} identities leaves none "
                               "to train on")
        order = np.random.default_rng(seed).permutation(len(candidates))
        held |= {candidates[i] for i in order[:n_hold]}
        record["method"].append("holdout_fraction")

    train = images.select_identities(name for name in images.identities if name not in held)
    if len(train) == 0:
        raise DatasetError(f"the split leaves no training images under {images.root}")
    held_out = sorted(held)
    assert not set(train.identities) & held  # the whole point of this module
    record.update({
        "root": str(images.root),
        "total_images": len(images), "total_identities": images.num_identities,
        "train_images": len(train), "train_identities": train.num_identities,
        "held_out_identities": len(held_out),
        "held_out_images": len(images) - len(train),
        "train_list_sha": _list_hash(train.rel_paths),
        "held_out": held_out,
    })
    return Split(train, held_out, record)

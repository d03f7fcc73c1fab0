"""Face data: identity folders, pairs protocols, identity-disjoint splits, synthetic faces,
alignment + cache, augmentation and deterministic views.

Example::

    from distill.data import generate_synthetic, identity_disjoint_split, build_augmentation

    syn = generate_synthetic(cache / "synthetic", identities=120, images_per_identity=8, seed=0)
    train, held_out, record = identity_disjoint_split(syn.images(), exclude_pairs=[syn.test_pairs_path])
    augment = build_augmentation(cfg.data.augment)
"""
from __future__ import annotations

import importlib
from typing import Any

from distill.data.augment import Augment, build_augmentation
from distill.data.folders import (IMAGE_EXTENSIONS, DatasetError, ImageList, SkippedFilesWarning,
                                  load_image_list, save_image_list, scan_identity_folder)
from distill.data.pairs import (MissingImagesError, PairsFormatError, PairsProtocol, all_pairs, read_pairs,
                                write_pairs)
from distill.data.splits import Split, identity_disjoint_split
from distill.data.synthetic import SyntheticSet, generate_synthetic, synthetic_dir, synthetic_params
from distill.data.views import EpochViewSampler, FaceViews, view_seed

# Alignment and image decoding pull in OpenCV, dlib and PIL: imported on first use, so
# `import distill.data` stays light.
_LAZY: dict[str, str] = {
    "load_rgb": "imageio",
    "ImageReadError": "imageio",
    "align_images": "align",
    "AlignedFaces": "align",
}


def __getattr__(name: str) -> Any:
    """Import the alignment and decoding names lazily (see ``_LAZY``)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"distill.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'distill.data' has no attribute {name!r}")


__all__ = [
    "Augment", "build_augmentation",
    "IMAGE_EXTENSIONS", "DatasetError", "ImageList", "SkippedFilesWarning", "load_image_list",
    "save_image_list", "scan_identity_folder",
    "MissingImagesError", "PairsFormatError", "PairsProtocol", "all_pairs", "read_pairs", "write_pairs",
    "Split", "identity_disjoint_split",
    "SyntheticSet", "generate_synthetic", "synthetic_dir", "synthetic_params",
    "EpochViewSampler", "FaceViews", "view_seed",
    *_LAZY,
]

"""insightface ``.bin`` validation sets as an evaluation protocol: ``eval.pairs: [{bin: path/lfw.bin}]``.

A ``.bin`` (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ``calfw.bin``, ``cplfw.bin``) holds 2N encoded
112 x 112 crops aligned to the ArcFace template and N is-same flags; pair i is images 2i and 2i+1
(:mod:`distill.data.binset` reads it with a restricted unpickler). The protocol scores those pairs in
``folds`` (10) folds of consecutive pairs, the layout of insightface's ``verification.py`` (``KFold``
without shuffling), so the accuracy compares with published tables; flip TTA is ``eval.flip_tta``.

The crops are used as they are for an ``arcface_112`` teacher; for a ``dlib_150`` teacher they are
re-framed by one similarity transform (:func:`~distill.data.templates.reframe_crop`: the head beyond the
112 crop is black); a ``facenet_160`` teacher is refused (its template is framed by a detection box).
``eval.pairs[].aligned`` declares another template for a non-standard file. Decoded and re-framed crops
are cached once per (file bytes, template) under ``data.cache_dir/bin`` (written atomically).

A ``.bin`` names no people: nothing checks that its people are absent from the training set (insightface's
``lfw.bin`` holds all of LFW); the log says so.

Example::

    faces = bin_faces(PairsSpec(bin="lfw.bin"), "arcface_112", Path(".cache/facedistill"), print)
    faces.faces.shape, len(faces.pairs)        # (12000, 112, 112, 3), 6000
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from distill.config import ConfigError, PairsSpec
from distill.fingerprint import file_sha256
from distill.io import atomic_write
from distill.progress import progress_bar

from .binset import BinSet, kfold_layout, load_bin
from .pairindex import PairIndex
from .templates import TEMPLATE_SIZE, ReframeError, reframe_crop, reframe_matrix

#: the template of insightface's .bin crops
BIN_TEMPLATE = "arcface_112"
#: bump when the cached crops would change for the same file and template
BIN_CACHE_VERSION = 1
_CHUNK = 256


@dataclass
class BinFaces:
    """A ``.bin`` protocol's faces ``(2N, S, S, 3)`` uint8 (memmap), an identity name per face (the two
    faces of a genuine pair share one; nothing is known across pairs) and its pairs (indices into ``faces``)."""

    faces: np.ndarray
    names: list[str]
    pairs: PairIndex


def _cache_file(spec: PairsSpec, src: str, template: str, cache_dir: Path) -> Path:
    digest = file_sha256(spec.bin)[:16]  # type: ignore[arg-type]
    return cache_dir / "bin" / f"{spec.bin.stem}-{digest}-{src}-to-{template}.v{BIN_CACHE_VERSION}.u8"  # type: ignore[union-attr]


def _decode_all(data: BinSet, label: str, src: str, template: str, path: Path) -> None:
    """Decode and re-frame every crop of ``data`` into ``path`` (atomically)."""
    size = TEMPLATE_SIZE[template]

    def write(f) -> None:  # noqa: ANN001 - a binary file object
        with progress_bar(data.num_images, desc=f"decode {label}", unit="img") as bar:
            for start in range(0, data.num_images, _CHUNK):
                idx = np.arange(start, min(start + _CHUNK, data.num_images))
                crops = np.stack([reframe_crop(data.image(int(i)), src, template) for i in idx])
                assert crops.shape[1:] == (size, size, 3)
                f.write(np.ascontiguousarray(crops, np.uint8).tobytes())
                bar.update(len(idx))

    atomic_write(path, write)


def bin_faces(spec: PairsSpec, template: str, cache_dir: Path, log: Callable[[str], None]) -> BinFaces:
    """The faces and pairs of the ``.bin`` set ``spec.bin`` in ``template`` (decoded once, then cached).

    Raises:
        BinFormatError: the file is not a ``.bin`` of the expected structure (names the file).
        ConfigError: its crops cannot be re-framed to ``template`` (names eval.pairs[].aligned).
    """
    src = spec.aligned or BIN_TEMPLATE
    if src != template:
        try:
            reframe_matrix(src, template)
        except ReframeError as e:
            raise ConfigError(f"eval.pairs {spec.label}: {spec.bin} holds {src} crops (eval.pairs[].aligned) and "
                              f"the model needs {template}: {e}. Evaluate a model with the {src} or dlib_150 "
                              "template on it, or use the set's original photos as a pairs-file protocol") from None
    data = load_bin(spec.bin)  # type: ignore[arg-type]
    path = _cache_file(spec, src, template, cache_dir)
    if not path.is_file():
        _decode_all(data, spec.label, src, template, path)
    size = TEMPLATE_SIZE[template]
    faces = np.memmap(path, np.uint8, "r", shape=(data.num_images, size, size, 3))
    n = len(data)
    first, second = data.pair_indices()
    names = [""] * data.num_images
    for i in range(n):
        names[first[i]] = f"{spec.label}/{i}"
        names[second[i]] = f"{spec.label}/{i}" if data.issame[i] else f"{spec.label}/{i}b"
    log(f"{spec.label}: {n} pairs from {spec.bin} ({src} crops{' re-framed to ' + template if src != template else ''}"
        f"); a .bin names no people, so its people are not checked against the training set")
    return BinFaces(faces, names, PairIndex(first, second, data.issame, kfold_layout(n, spec.folds)))

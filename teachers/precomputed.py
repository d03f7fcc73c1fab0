"""A black-box teacher: embeddings computed elsewhere (any model, any service), looked up by image key.

It cannot embed pixels, so it only works with the cached teacher mode
(``train.teacher_mode: cached``), where targets are looked up per image instead
of computed per augmented view; :meth:`PrecomputedTeacher.embed` says so.

File format (``teacher.weights``):

* ``.npz`` with ``keys``: ``(N,)`` strings (e.g. image paths relative to the data root, ``Name/Name_0001.jpg``)
  and ``embeddings``: ``(N, D)`` floats. Optional: ``normalized`` (bool scalar; default: inferred from
  the row norms), ``alignment`` (str: template the embeddings were made from; default ``dlib_150``).
* ``.npy`` of ``(N, D)`` embeddings with a sidecar text file ``<same name>.keys.txt``: one key per line,
  same order.

Example::

    np.savez("teacher_emb.npz", keys=np.array(keys), embeddings=emb.astype(np.float32))
    teacher = TEACHERS.build("precomputed", weights="teacher_emb.npz")
    targets = teacher.lookup(["Aaron_Peirsol/Aaron_Peirsol_0001.jpg"])   # (1, D) float32
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from distill.errors import InputError, MissingInputError
from distill.preprocess import ALIGNMENTS, Preprocessing

from .base import Teacher

_SIZES = {"dlib_150": 150, "facenet_160": 160, "arcface_112": 112}


class PrecomputedFileError(InputError, ValueError):
    """A precomputed-embedding file is missing, malformed, has NaN rows or lacks keys of the training images
    (CLI exit code 2); the message names the file and what to fix."""


class PrecomputedTeacher(Teacher):
    """Embeddings from a file keyed by image key; :meth:`lookup` only (``can_embed`` is False)."""

    can_embed = False

    def __init__(self, keys: Sequence[str], embeddings: np.ndarray, *, normalized: bool, alignment: str = "dlib_150",
                 source: str = "<memory>", name: str = "precomputed", precision: str = "fp32") -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(keys) != embeddings.shape[0]:
            raise PrecomputedFileError(f"{source}: expected {len(keys)} keys and (N, D) embeddings with N = number of "
                                       f"keys, got embeddings of shape {embeddings.shape}")
        bad = ~np.isfinite(embeddings).all(axis=1) if embeddings.size else np.zeros(0, bool)
        if bad.any():
            raise PrecomputedFileError(f"{source}: {int(bad.sum())} embedding rows contain NaN or inf (e.g. key "
                                       f"{keys[int(np.flatnonzero(bad)[0])]!r}); recompute them or drop those keys")
        if alignment not in ALIGNMENTS:
            raise PrecomputedFileError(f"{source}: alignment {alignment!r} is not one of {', '.join(ALIGNMENTS)}")
        super().__init__(name=name, preprocessing=Preprocessing(_SIZES[alignment], alignment=alignment),
                         embedding_dim=int(embeddings.shape[1]), normalized=normalized, precision=precision)
        self.keys = [str(k) for k in keys]
        self.index = {k: i for i, k in enumerate(self.keys)}
        if len(self.index) != len(self.keys):
            raise PrecomputedFileError(f"{source}: duplicate keys")
        self.source = source
        self.register_buffer("table", torch.from_numpy(embeddings.copy()), persistent=True)

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        """(B,) image keys (paths relative to data.root) -> (B, D) float32 embeddings.

        Raises:
            PrecomputedFileError: keys the file does not hold (named, with what its keys look like).
        """
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise PrecomputedFileError(
                f"{self.source}: no precomputed embedding for {len(missing)} image(s), e.g. {missing[:3]}. Its keys "
                f"look like {self.keys[:2]} (image paths relative to data.root); regenerate the file for this data "
                f"set, or point data.root at the folder its keys are relative to.")
        return self.table[[self.index[k] for k in keys]].float()

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Not available: a precomputed teacher only looks embeddings up by image key (:meth:`lookup`)."""
        raise RuntimeError(f"teacher {self.name!r} ({self.source}) holds precomputed embeddings keyed by image and "
                           "cannot embed pixels: use it with train.teacher_mode=cached (targets via .lookup(keys)); "
                           "online mode, augmented views and teacher evaluation need a real teacher")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def weights_fingerprint(self) -> str:
        """Digest of the embeddings file (cache keys change with it)."""
        h = hashlib.sha256("\n".join(self.keys).encode())
        h.update(self.table.numpy().tobytes())
        return h.hexdigest()[:16]


def load_precomputed(path: str | Path) -> tuple[list[str], np.ndarray, dict]:
    """Read a precomputed-embedding file (format in the module docstring): keys, embeddings, options."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"precomputed teacher embeddings {path} do not exist (teacher.weights)")
    opts: dict = {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            for k in ("keys", "embeddings"):
                if k not in z:
                    raise PrecomputedFileError(f"{path}: missing array {k!r} (has {sorted(z.files)}); see "
                                               f"teachers.precomputed")
            keys, emb = [str(k) for k in z["keys"]], z["embeddings"]
            if "normalized" in z:
                opts["normalized"] = bool(z["normalized"])
            if "alignment" in z:
                opts["alignment"] = str(z["alignment"])
    elif path.suffix == ".npy":
        sidecar = path.with_name(path.name[:-4] + ".keys.txt")
        if not sidecar.is_file():
            raise MissingInputError(f"{path}: a .npy needs its keys in {sidecar} (one per line)")
        emb = np.load(path, allow_pickle=False)
        keys = [line for line in sidecar.read_text().splitlines() if line]
    else:
        raise PrecomputedFileError(f"{path}: precomputed embeddings must be .npz or .npy (see teachers.precomputed)")
    return keys, emb, opts


def check_precomputed_weights(weights: str | None) -> list[str]:
    """Problems that would stop :func:`precomputed` reading ``weights`` (the embeddings file it needs)."""
    if weights is None:
        return ["the precomputed teacher needs teacher.weights (a local file)"]
    return [] if Path(weights).is_file() else [f"precomputed teacher weights {weights} do not exist (teacher.weights)"]


def precomputed(weights: str | Path | None = None, *, embedding_dim: int = 128, normalized: bool | None = None,
                alignment: str | None = None, precision: str = "fp32") -> PrecomputedTeacher:
    """Black-box teacher from ``weights`` (.npz/.npy, see module docstring).

    ``weights=None`` gives an empty table of ``embedding_dim`` columns (to describe the teacher); it has no
    default file, since the embeddings come from the user.
    """
    if weights is None:
        return PrecomputedTeacher([], np.zeros((0, embedding_dim), np.float32), normalized=bool(normalized),
                                  alignment=alignment or "dlib_150", precision=precision)
    keys, emb, opts = load_precomputed(weights)
    if normalized is None:
        normalized = opts.get("normalized", bool(len(emb)) and bool(
            np.allclose(np.linalg.norm(np.asarray(emb, np.float64), axis=1), 1.0, atol=1e-3)))
    return PrecomputedTeacher(keys, emb, normalized=bool(normalized), alignment=alignment or opts.get(
        "alignment", "dlib_150"), source=str(weights), precision=precision)

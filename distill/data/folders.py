"""Identity-folder data sets: ``root/<identity>/<image>`` (LFW, VGGFace2, CASIA-WebFace layout).

Scanning lists files only; decoding happens later, in alignment. Bad entries
(zero-byte files, non-image extensions, unreadable files or folders, broken
links and symlink loops, names that are not UTF-8, images outside an identity
folder) are skipped, reported in one warning and kept in
:attr:`ImageList.skipped` for the run record. Non-image files beside the
identity folders (pairs lists, README, manifest) are metadata and ignored
silently. The source folders are never modified.

Example::

    images = scan_identity_folder("../shared/data/lfw/lfw-deepfunneled")
    len(images), images.num_identities       # 13233, 5749
    images.paths()[0]                        # Path(.../AJ_Cook/AJ_Cook_0001.jpg)
    save_image_list(images, run_dir / "train_images.json")
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from distill.errors import InputError
from distill.io import atomic_write_json

#: file extensions (lower case) treated as images: what the decoder (PIL, distill.data.imageio) opens
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"})
#: operating-system and tool litter beside or inside identity folders: ignored silently (hidden names,
#: starting with ".", such as .DS_Store and macOS's ._* resource forks, are ignored too)
LITTER = frozenset({"__MACOSX", "Thumbs.db", "ehthumbs.db", "desktop.ini", "@eaDir", "$RECYCLE.BIN",
                    "System Volume Information", "Icon\r"})
#: the reason recorded for an identity folder that holds no usable image (it is skipped, not an error)
NO_USABLE_IMAGE = "identity folder with no usable image"

#: how many skipped entries the warning names before summarising
_WARN_LIST = 20


class DatasetError(InputError, ValueError):
    """The data set cannot be used as given (empty, missing, an identity without images)."""


class SkippedFilesWarning(UserWarning):
    """Some entries of a data set folder were skipped; the message lists them."""


@dataclass
class ImageList:
    """Images of a data set, grouped by identity.

    Attributes:
        root: the folder ``rel_paths`` are relative to.
        rel_paths: ``"<identity>/<file>"`` (POSIX separators), sorted by identity then file name.
        labels: int64 index into ``identities`` for each image.
        identities: identity (folder) names, sorted; every identity owns at least one image.
        skipped: ``(path, reason)`` for each entry left out while scanning.
    """

    root: Path
    rel_paths: list[str]
    labels: np.ndarray
    identities: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.rel_paths):
            raise ValueError(f"{len(self.rel_paths)} paths but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.identities)):
            raise ValueError("labels must index into identities")

    def __len__(self) -> int:
        return len(self.rel_paths)

    @property
    def num_identities(self) -> int:
        """Number of identities (folders) with at least one image."""
        return len(self.identities)

    def paths(self) -> list[Path]:
        """Absolute-or-as-given paths ``root / rel_path``."""
        return [self.root / p for p in self.rel_paths]

    @property
    def skipped_identities(self) -> list[str]:
        """Identity folders left out because they hold no usable image (see :data:`NO_USABLE_IMAGE`)."""
        return [p.rstrip("/") for p, why in self.skipped if why.startswith(NO_USABLE_IMAGE)]

    def identity_of(self, index: int) -> str:
        """Identity name of image ``index``."""
        return self.identities[int(self.labels[index])]

    def counts(self) -> np.ndarray:
        """Images per identity, aligned with :attr:`identities`."""
        return np.bincount(self.labels, minlength=len(self.identities))

    def subset(self, mask: Sequence[bool] | Sequence[int] | np.ndarray) -> "ImageList":
        """Images selected by a boolean mask or an index array, in their original order.

        Identities left without images are dropped and labels renumbered, so
        every identity of the result owns an image. ``skipped`` is carried over.
        """
        sel = np.asarray(mask)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {sel.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(sel)
        else:
            idx = np.sort(sel.astype(np.int64).ravel())
            if len(idx) and (idx[0] < 0 or idx[-1] >= len(self)):
                raise IndexError(f"subset index out of range 0..{len(self) - 1}")
        old = self.labels[idx]
        kept = np.unique(old)
        remap = np.full(len(self.identities), -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        return ImageList(self.root, [self.rel_paths[i] for i in idx], remap[old],
                         [self.identities[k] for k in kept], list(self.skipped))

    def select_identities(self, keep: Iterable[str]) -> "ImageList":
        """Only the images of the identities named in ``keep`` (unknown names are ignored)."""
        keep_set = set(keep)
        ids = np.array([name in keep_set for name in self.identities], dtype=bool)
        return self.subset(ids[self.labels] if len(self.labels) else np.zeros(0, dtype=bool))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (see :func:`save_image_list`)."""
        return {"root": str(self.root), "identities": self.identities, "rel_paths": self.rel_paths,
                "labels": self.labels.tolist(), "skipped": [list(s) for s in self.skipped]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageList":
        """Inverse of :meth:`to_dict`.
        
        Raises:
            DatasetError: a key is missing."""
        try:
            return cls(Path(d["root"]), list(d["rel_paths"]), np.asarray(d["labels"], dtype=np.int64),
                       list(d["identities"]), [tuple(s) for s in d.get("skipped", [])])
        except KeyError as e:
            raise DatasetError(f"image list is missing key {e}") from None


def save_image_list(images: ImageList, path: str | Path) -> Path:
    """Write ``images`` as JSON (atomically), e.g. into the run directory."""
    return atomic_write_json(path, images.to_dict())


def load_image_list(path: str | Path) -> ImageList:
    """Read a list written by :func:`save_image_list`."""
    import json

    path = Path(path)
    try:
        return ImageList.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, DatasetError) as e:
        raise DatasetError(f"{path}: not a valid image list ({e})") from None


def _printable(name: str) -> str:
    """A file name as text even when it is not valid UTF-8 (undecodable bytes as \\xNN)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # surrogate-escaped bytes from a non-UTF-8 name
        return False


def _check_file(entry: os.DirEntry) -> str | None:
    """Why ``entry`` (inside an identity folder) is not a usable image, or None."""
    if not _is_utf8(entry.name):
        return "file name is not valid UTF-8"
    if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image extension"
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError as e:  # broken link, symlink loop (ELOOP), permission
        return f"cannot stat ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(entry.path, os.R_OK):
        return "not readable (permissions)"
    return None


def scan_identity_folder(root: str | Path, *, exclude_identities: Iterable[str] | None = None) -> ImageList:
    """List ``root/<identity>/<image>`` files, one label per identity folder.

    Args:
        root: the data set folder; each sub-folder is one identity.
        exclude_identities: identity folder names to leave out (not scanned at all).

    Operating-system litter (:data:`LITTER`, hidden names) is ignored silently. An identity folder
    with no usable image (empty, only unreadable or non-image files) is skipped: it is listed in
    ``skipped`` with its reason and in :attr:`ImageList.skipped_identities`.

    Raises:
        DatasetError: ``root`` is missing or not a folder, or holds no usable image at all.

    Example::

        images = scan_identity_folder("/data/vggface2/train", exclude_identities={"n000001"})
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data set folder {root} does not exist (expected root/<identity>/<image>; check "
                           f"data.root, eval.images_root or the folder given on the command line)")
    if not root.is_dir():
        raise DatasetError(f"data set root {root} is not a folder (expected root/<identity>/<image>)")
    excluded = set(exclude_identities or ())
    skipped: list[tuple[str, str]] = []
    per_identity: list[tuple[str, list[str]]] = []

    with os.scandir(root) as it:
        top = sorted(it, key=lambda e: os.fsencode(e.name))
    for entry in top:
        if entry.name.startswith(".") or entry.name in LITTER:
            continue  # hidden files/folders (.DS_Store, .cache) and OS litter are not data
        shown = f"{_printable(entry.name)}"
        if not _is_utf8(entry.name):
            skipped.append((shown, "folder name is not valid UTF-8"))
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError as e:
            skipped.append((shown, f"cannot stat ({e.strerror or e})"))
            continue
        if not is_dir:
            if entry.is_symlink() and not os.path.exists(entry.path):
                skipped.append((shown, "broken link or symlink loop"))
            elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                skipped.append((shown, "image outside an identity folder"))
            # other files beside the identity folders (pairs lists, README, manifest) are metadata
            continue
        if entry.name in excluded:
            continue
        try:
            with os.scandir(entry.path) as inner:
                files = sorted(inner, key=lambda e: os.fsencode(e.name))
        except OSError as e:
            skipped.append((shown + "/", f"folder not readable ({e.strerror or e})"))
            continue
        good: list[str] = []
        bad_here: list[tuple[str, str]] = []
        for f in files:
            if f.name.startswith(".") or f.name in LITTER:
                continue
            rel = f"{entry.name}/{_printable(f.name)}"
            try:
                if f.is_dir(follow_symlinks=False):
                    bad_here.append((rel + "/", "nested folder (layout is root/<identity>/<image>)"))
                    continue
            except OSError:
                pass
            reason = _check_file(f)
            if reason is None:
                good.append(f"{entry.name}/{f.name}")
            else:
                bad_here.append((rel, reason))
        skipped.extend(bad_here)
        if not good:
            why = "; ".join(f"{p}: {r}" for p, r in bad_here[:3]) or "the folder is empty"
            skipped.append((shown + "/", f"{NO_USABLE_IMAGE} ({why})"))
            continue
        per_identity.append((entry.name, good))

    if not per_identity:
        raise DatasetError(f"no usable images under {root}: expected root/<identity>/<image> with extensions "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))}" + (f" ({len(skipped)} entries skipped, e.g. "
                           f"{skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    if skipped:
        listed = "\n  ".join(f"{p}: {r}" for p, r in skipped[:_WARN_LIST])
        more = f"\n  ... and {len(skipped) - _WARN_LIST} more" if len(skipped) > _WARN_LIST else ""
        warnings.warn(f"skipped {len(skipped)} entries under {root}:\n  {listed}{more}",
                      SkippedFilesWarning, stacklevel=2)

    identities = [name for name, _ in per_identity]
    rel_paths = [p for _, files in per_identity for p in files]
    labels = np.repeat(np.arange(len(identities), dtype=np.int64), [len(f) for _, f in per_identity])
    return ImageList(root, rel_paths, labels, identities, skipped)

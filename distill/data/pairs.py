"""LFW-style verification pairs files (official format, see shared/data/SOURCES.md).

* View 2 (``pairs.txt``): first line ``10<TAB>300``, then 10 folds, each 300
  same-person lines ``name<TAB>i<TAB>j`` followed by 300 different-person lines
  ``name1<TAB>i<TAB>name2<TAB>j``. ``fold`` is the official fold.
* View 1 (``pairsDevTrain.txt``, ``pairsDevTest.txt``): first line ``N``, then
  N same lines and N different lines. View 1 has no folds; for the usual 10-fold
  threshold cross-validation, pair ``k`` of each block gets fold ``k * 10 // N``
  (by position, so every fold holds the same share of same and different pairs).

Image index ``i`` of ``name`` is the file ``<name>/<name>_%04d<ext>``.

:func:`all_pairs` is the exhaustive alternative: every pair of a set of images
(e.g. all images of a file's people), for TAR at low FAR.

Example::

    pairs = read_pairs("../shared/data/lfw/pairsDevTest.txt", "../shared/data/lfw/lfw-deepfunneled")
    len(pairs), pairs.is_same.mean(), len(pairs.people())     # 1000, 0.5, 963
    a, b, same, fold = all_pairs(labels)                      # every i < j of the images with these labels
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from distill.errors import InputError, MissingInputError
from distill.io import atomic_write_text

#: folds View-1 files are split into (by position) for threshold cross-validation
VIEW1_FOLDS = 10


class PairsFormatError(InputError, ValueError):
    """A pairs file does not follow the LFW format or is not UTF-8 text; the message names file:line."""


class MissingImagesError(InputError, FileNotFoundError):
    """A pairs file names images that are not under the images root."""


@dataclass
class PairsProtocol:
    """Verification pairs, paths relative to ``images_root``.

    Attributes:
        name: file stem, e.g. ``"pairsDevTest"``.
        rel_path_a, rel_path_b: ``"<name>/<name>_0001.jpg"`` for each pair.
        is_same: bool, True for same-person pairs.
        fold: int64 fold id (0..9) for cross-validation.
        view: 1 or 2 (header format the file used).
    """

    name: str
    images_root: Path
    rel_path_a: list[str]
    rel_path_b: list[str]
    is_same: np.ndarray
    fold: np.ndarray
    view: int = 1
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.rel_path_a)

    @property
    def num_folds(self) -> int:
        """Number of cross-validation folds (10 for LFW)."""
        return int(self.fold.max()) + 1 if len(self.fold) else 0

    @property
    def person_a(self) -> list[str]:
        """The identity of each pair's first image (its folder name)."""
        return [p.split("/", 1)[0] for p in self.rel_path_a]

    @property
    def person_b(self) -> list[str]:
        """The identity of each pair's second image."""
        return [p.split("/", 1)[0] for p in self.rel_path_b]

    def people(self) -> set[str]:
        """Every identity a pair mentions (for identity-disjoint training)."""
        return set(self.person_a) | set(self.person_b)

    def image_rel_paths(self) -> list[str]:
        """The distinct images the pairs use, sorted."""
        return sorted(set(self.rel_path_a) | set(self.rel_path_b))

    def index_into(self, rel_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Positions of each pair's two images in ``rel_paths`` (e.g. :meth:`image_rel_paths`)."""
        pos = {p: i for i, p in enumerate(rel_paths)}
        try:
            return (np.array([pos[p] for p in self.rel_path_a], dtype=np.int64),
                    np.array([pos[p] for p in self.rel_path_b], dtype=np.int64))
        except KeyError as e:
            raise KeyError(f"pair image {e} is not in the given list") from None


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark is accepted).

    Raises:
        PairsFormatError: the file is not UTF-8; the message names the file, the line and the bytes.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        bad = data[e.start:e.end + 3]
        raise PairsFormatError(
            f"{path}:{line}: not UTF-8 text (bytes {bad!r} at offset {e.start}: {e.reason}); the file was probably "
            f"saved in another encoding (Latin-1 / Windows-1252?). Re-save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`, and point the config at "
            f"the new file") from None


def detect_image_ext(images_root: str | Path) -> str:
    """The image extension of an identity-folder tree's first image (``.jpg`` for LFW, ``.png`` synthetic)."""
    from .folders import IMAGE_EXTENSIONS

    root = Path(images_root)
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                for f in sorted(d.iterdir()):
                    if f.suffix.lower() in IMAGE_EXTENSIONS:
                        return f.suffix
    return ".jpg"


def _image(name: str, idx: str, ext: str, where: str) -> str:
    try:
        i = int(idx)
    except ValueError:
        raise PairsFormatError(f"{where}: image number {idx!r} is not an integer") from None
    if i < 0:
        raise PairsFormatError(f"{where}: image number {i} is negative")
    return f"{name}/{name}_{i:04d}{ext}"


def read_pairs(path: str | Path, images_root: str | Path, *, ext: str = ".jpg",
               check_exists: bool = True) -> PairsProtocol:
    """Read a View-1 or View-2 LFW pairs file.

    Args:
        path: the pairs file.
        images_root: the identity-folder root the image names resolve against.
        ext: image file extension (``".jpg"`` for LFW, ``".png"`` for the synthetic set).
        check_exists: raise :class:`MissingImagesError` listing the first missing images.

    Raises:
        MissingInputError: ``path`` is missing.
        PairsFormatError: malformed header or line (names ``file:line``).
        MissingImagesError: referenced images that do not exist.
    """
    path, images_root = Path(path), Path(images_root)
    if not path.is_file():
        raise MissingInputError(f"pairs file {path} does not exist")
    lines = read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise PairsFormatError(f"{path}:1: empty pairs file")
    header = lines[0].split()
    try:
        nums = [int(x) for x in header]
    except ValueError:
        nums = []
    if len(nums) == 2 and nums[0] > 0 and nums[1] > 0:
        view, folds, per = 2, nums[0], nums[1]
    elif len(nums) == 1 and nums[0] > 0:
        view, folds, per = 1, 1, nums[0]
    else:
        raise PairsFormatError(f"{path}:1: header must be 'N' (View 1) or 'FOLDS<TAB>N' (View 2), "
                               f"got {lines[0]!r}")
    expected = folds * 2 * per
    if len(lines) - 1 != expected:
        raise PairsFormatError(f"{path}: header {lines[0].strip()!r} promises {expected} pairs, "
                               f"the file has {len(lines) - 1} pair lines")
    a: list[str] = []
    b: list[str] = []
    same = np.zeros(expected, dtype=bool)
    fold = np.zeros(expected, dtype=np.int64)
    for k, line in enumerate(lines[1:]):
        where = f"{path}:{k + 2}"
        block, pos = divmod(k, per)              # block 2f = same pairs of fold f, 2f+1 = different
        want_same = block % 2 == 0
        fields = line.split()
        if want_same:
            if len(fields) != 3:
                raise PairsFormatError(f"{where}: expected a same-person line 'name<TAB>i<TAB>j', got {line!r}")
            a.append(_image(fields[0], fields[1], ext, where))
            b.append(_image(fields[0], fields[2], ext, where))
        else:
            if len(fields) != 4:
                raise PairsFormatError(
                    f"{where}: expected a different-person line 'name1<TAB>i<TAB>name2<TAB>j', got {line!r}")
            if fields[0] == fields[2]:
                raise PairsFormatError(f"{where}: a different-person pair names {fields[0]!r} twice")
            a.append(_image(fields[0], fields[1], ext, where))
            b.append(_image(fields[2], fields[3], ext, where))
        same[k] = want_same
        fold[k] = block // 2 if view == 2 else pos * VIEW1_FOLDS // per
    protocol = PairsProtocol(path.stem, images_root, a, b, same, fold, view, path)
    if check_exists:
        missing = [p for p in protocol.image_rel_paths() if not (images_root / p).is_file()]
        if missing:
            shown = "\n  ".join(missing[:10])
            raise MissingImagesError(
                f"{path} references {len(missing)} image(s) not found under {images_root}, e.g.:\n  {shown}\n"
                f"Check images_root (the folder holding <name>/<name>_NNNN{ext}) and ext.")
    return protocol


def all_pairs(labels: np.ndarray, folds: int = VIEW1_FOLDS
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of ``len(labels)`` images: ``(idx_a, idx_b, is_same, fold)``.

    Genuine (``is_same``) = same label, impostor = different labels; pairs come in
    ``np.triu_indices`` order (row-major). ``idx_*`` and ``fold`` are int64, so N images
    cost ``N (N - 1) / 2 * 25`` bytes (LFW DevTest people: 2,741 images, 3.76M pairs, ~94 MB).

    Example::

        a, b, same, fold = all_pairs(np.array([0, 0, 1]))
        # a = [0, 0, 1], b = [1, 2, 2], same = [True, False, False], fold = [0, 0, 0]
    """
    labels = np.asarray(labels).ravel()
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    _, person = np.unique(labels, return_inverse=True)   # dense person index, whatever the label type
    a, b = np.triu_indices(labels.size, k=1)
    a, b = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
    # fold = first image's person mod folds: a person's genuine pairs all share one fold, so k-fold
    # thresholds are never chosen on genuine pairs of a person they are tested on
    return a, b, person[a] == person[b], (person[a] % folds).astype(np.int64)


def sample_pairs(labels: np.ndarray, n: int, *, folds: int = VIEW1_FOLDS, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded sample of ``n`` genuine and ``n`` impostor pairs of the images with ``labels``.

    Same return as :func:`all_pairs` (``idx_a < idx_b``, folds by the first image's person), without
    replacement; fewer when the images do not have that many pairs of a kind. Deterministic for a
    given ``seed``; memory stays O(n) for any number of images.
    """
    labels = np.asarray(labels).ravel()
    _, person = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng(seed)
    by_person = [np.flatnonzero(person == k) for k in range(person.max() + 1 if person.size else 0)]
    genuine = [(int(i), int(j)) for members in by_person for x, i in enumerate(members) for j in members[x + 1:]]
    if len(genuine) > n:
        genuine = [genuine[k] for k in rng.choice(len(genuine), n, replace=False)]
    n_imp = sum(len(m) for m in by_person) ** 2 // 2 - len(genuine)
    impostor: set[tuple[int, int]] = set()
    want = min(n, max(0, n_imp))
    for _ in range(50):
        if len(impostor) >= want or len(by_person) < 2:
            break
        a = rng.integers(0, len(labels), 2 * want)
        b = rng.integers(0, len(labels), 2 * want)
        for i, j in zip(a.tolist(), b.tolist()):
            if person[i] != person[j] and len(impostor) < want:
                impostor.add((min(i, j), max(i, j)))
    pairs = sorted(genuine) + sorted(impostor)
    idx = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    a, b = idx[:, 0], idx[:, 1]
    return a, b, person[a] == person[b], (person[a] % folds).astype(np.int64)


SamePair = tuple[str, int, int]
DifferentPair = tuple[str, int, str, int]


def write_pairs(path: str | Path, same: Sequence[SamePair], different: Sequence[DifferentPair]) -> Path:
    """Write a View-1 style pairs file (header ``N``; N same then N different lines), atomically.

    Example::

        write_pairs(out / "pairsDevTest.txt", [("ann", 1, 2)], [("ann", 1, "bob", 3)])
    """
    if len(same) != len(different):
        raise ValueError(f"View-1 files hold as many same as different pairs, got {len(same)} and {len(different)}")
    if not same:
        raise ValueError("no pairs to write")
    for name in {n for row in same for n in row[:1]} | {n for row in different for n in (row[0], row[2])}:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"identity name {name!r} cannot be written to a pairs file (empty or has whitespace)")
    rows = [str(len(same))]
    for name, i, j in same:
        rows.append(f"{name}\t{int(i)}\t{int(j)}")
    for n1, i, n2, j in different:
        if n1 == n2:
            raise ValueError(f"different-person pair names {n1!r} twice")
        rows.append(f"{n1}\t{int(i)}\t{n2}\t{int(j)}")
    return atomic_write_text(path, "\n".join(rows) + "\n")

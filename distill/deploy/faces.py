"""Real aligned faces for deployment checks: parity, int8 calibration, gallery enrolment and probes.

Every face goes through :func:`distill.data.align.align_images` (with its cache), aligned to the
template the model declares, so exported models are checked on exactly what they will be fed.

Example::

    root = default_lfw_images()                       # ../shared/data/lfw/lfw-deepfunneled
    rel = sample_identity_images(root, 16, seed=0)    # spread over identities
    faces = align_rel_paths(root, rel, template="dlib_150", cache_dir=".cache/facedistill").faces
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from distill.data.folders import IMAGE_EXTENSIONS, scan_identity_folder

#: default cache folder (the config's ``data.cache_dir`` default); aligned crops live in ``<it>/aligned``
DEFAULT_CACHE_DIR = Path(".cache/facedistill")
#: where LFW images are looked for when no image folder is given
LFW_IMAGES = Path("data") / "lfw" / "lfw-deepfunneled"


def default_lfw_images() -> Path | None:
    """The shared LFW image folder: ``$FACEDISTILL_SHARED/data/lfw/lfw-deepfunneled``, else ``../shared/...``
    relative to the working directory or the repository; ``None`` when none exists."""
    candidates = []
    if os.environ.get("FACEDISTILL_SHARED"):
        candidates.append(Path(os.environ["FACEDISTILL_SHARED"]) / LFW_IMAGES)
    candidates += [Path.cwd().parent / "shared" / LFW_IMAGES,
                   Path(__file__).resolve().parents[3] / "shared" / LFW_IMAGES]
    return next((c for c in candidates if c.is_dir()), None)


def sample_identity_images(root: str | Path, n: int, *, seed: int = 0,
                           exclude_identities: Iterable[str] = ()) -> list[str]:
    """``n`` image paths (relative to ``root``) spread over as many identities as possible.

    ``root`` is an identity-folder tree (``root/<identity>/<image>``); a flat folder of images
    works too. Deterministic for a given ``seed``; identities in ``exclude_identities`` are
    never used (e.g. the people of the evaluation pairs, so calibration stays disjoint).
    """
    root = Path(root)
    excluded = set(exclude_identities)
    flat = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if flat and not any(p.is_dir() for p in root.iterdir()):
        rng = np.random.default_rng(seed)
        return [flat[i] for i in sorted(rng.choice(len(flat), min(n, len(flat)), replace=False))]
    images = scan_identity_folder(root, exclude_identities=excluded)
    by_id: dict[int, list[str]] = defaultdict(list)
    for rel, lab in zip(images.rel_paths, images.labels):
        by_id[int(lab)].append(rel)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images.identities))
    picked: list[str] = []
    round_ = 0
    while len(picked) < n and any(len(v) > round_ for v in by_id.values()):
        for k in order:  # round-robin: one image per identity per round
            files = by_id[int(k)]
            if len(files) > round_:
                picked.append(files[round_])
                if len(picked) == n:
                    break
        round_ += 1
    return picked


def align_rel_paths(root: str | Path, rel_paths: Sequence[str], *, template: str, backend: str = "dlib",
                    cache_dir: str | Path = DEFAULT_CACHE_DIR, no_face: str = "center", progress: bool = True):
    """:func:`~distill.data.align.align_images` with the pipeline's cache layout (``cache_dir/aligned``)."""
    from distill.data.align import align_images

    return align_images(root, list(rel_paths), template=template, backend=backend,
                        cache_dir=Path(cache_dir) / "aligned", no_face=no_face, progress=progress)


def align_files(paths: Sequence[str | Path], *, template: str, backend: str = "dlib",
                cache_dir: str | Path = DEFAULT_CACHE_DIR, no_face: str = "center",
                progress: bool = False) -> tuple[np.ndarray, list[Path], dict[str, str]]:
    """Align image files from anywhere: ``(faces (N,S,S,3) uint8, kept paths, {path: skip reason})``.

    Faces come back in input order; unreadable files are left out and named in the third value.
    """
    files = [Path(p).resolve() for p in paths]
    groups: dict[Path, list[int]] = defaultdict(list)
    for i, f in enumerate(files):
        groups[f.parent].append(i)
    found: dict[int, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for parent, idx in groups.items():
        af = align_rel_paths(parent, [files[i].name for i in idx], template=template, backend=backend,
                             cache_dir=cache_dir, no_face=no_face, progress=progress)
        for k, pos in enumerate(af.indices):
            found[idx[int(pos)]] = np.asarray(af.faces[k])
        for rel, why in af.record.skipped.items():
            skipped[str(parent / rel)] = why
    keep = sorted(found)
    faces = np.stack([found[i] for i in keep]) if keep else np.zeros((0, 1, 1, 3), np.uint8)
    return faces, [files[i] for i in keep], skipped


@dataclass
class ProbeFace:
    """One face of a probe photo: the photo, its rank by size (0 = largest), how many faces the photo has,
    the face's box ``[x1, y1, x2, y2]`` in image pixels, and its aligned crop ``(S, S, 3)`` uint8."""

    image: Path
    index: int
    faces_in_image: int
    box: list[float]
    crop: np.ndarray


def probe_faces(paths: Sequence[str | Path], *, template: str, backend: str = "dlib"
                ) -> tuple[list[ProbeFace], dict[str, str]]:
    """Every face of each probe photo, aligned to ``template`` (no cache: probes are few and each face counts).

    ``backend="none"``: each photo is one aligned crop. Returns the faces (photo order, largest face first
    within a photo) and ``{path: reason}`` for photos that gave none: ``"no face found ..."`` or why the file
    could not be read.
    """
    from distill.data.align import make_landmarker, resize_crop
    from distill.data.imageio import ImageReadError, load_rgb
    from distill.data.templates import TEMPLATE_SIZE, crop_face

    landmarker = make_landmarker(backend) if backend != "none" else None
    out: list[ProbeFace] = []
    skipped: dict[str, str] = {}
    for p in map(Path, paths):
        try:
            img = load_rgb(p)
        except ImageReadError as e:
            skipped[str(p)] = str(e)
            continue
        if landmarker is None:
            h, w = img.shape[:2]
            out.append(ProbeFace(p, 0, 1, [0.0, 0.0, float(w), float(h)], resize_crop(img, TEMPLATE_SIZE[template])))
            continue
        try:
            found = landmarker.detect_all(img)
        except Exception as e:  # noqa: BLE001 - a detector failing on one photo fails that photo alone
            skipped[str(p)] = f"no face found: the {backend} detector failed ({type(e).__name__}: {e})"
            continue
        faces = []
        for f in found:
            try:
                faces.append((f, crop_face(img, f, template)))
            except ValueError:  # a degenerate box: not a usable face
                continue
        if not faces:
            skipped[str(p)] = f"no face found by {backend}"
        out += [ProbeFace(p, i, len(faces), [round(float(v), 1) for v in f.box], crop)
                for i, (f, crop) in enumerate(faces)]
    return out, skipped

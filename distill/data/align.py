"""Face alignment to the templates the teachers expect, with a resumable memory-mapped cache.

Templates (names fixed in :data:`distill.preprocess.ALIGNMENTS`):

* ``dlib_150``: dlib's own chip, ``dlib.get_face_chip_details(shape, size=150, padding=0.25)``
  (what dlib's face-recognition ResNet was trained on).
* ``facenet_160``: detection box + margin 14 (in output pixels), resized to 160, as
  ``facenet_pytorch``'s ``MTCNN`` / ``extract_face`` does.
* ``arcface_112``: 5-point similarity transform to the standard ArcFace 112x112 template.

Backends: ``dlib`` (HOG frontal detector, upsample 1 then 2, + the 5-point shape
predictor), ``mtcnn`` (facenet_pytorch MTCNN: box + eyes, nose, mouth corners) and
``none`` (images are already aligned crops: just resized). Every landmark backend
can produce every template; the geometry, and the constants (measured on LFW) that
convert between the two 5-point conventions, live in :mod:`distill.data.templates`.

Several faces: the one whose box contains the image centre (the largest of
those), else the one nearest the centre. No face: ``no_face="center"`` uses a
fixed centred crop with LFW-like framing (counted in the record), ``"skip"``
leaves the image out (listed with its reason). Unreadable files are always
skipped with their reason; one bad file never stops a run.

Example::

    from distill.data.align import align_images
    aligned = align_images("/data/lfw/lfw-deepfunneled", ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg"],
                           template="dlib_150", backend="dlib", cache_dir=".cache/facedistill")
    aligned.faces.shape            # (1, 150, 150, 3) uint8 memmap
    print(aligned.record.summary())
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from distill import io as dio
from distill.data import imageio
from distill.data.templates import TEMPLATE_SIZE, Face, center_face, crop_face, select_face
from distill.preprocess import ALIGNMENTS

BACKENDS = ("dlib", "mtcnn", "none")
NO_FACE_POLICIES = ("center", "skip")
#: detection runs on a copy whose longer side is at most this (landmarks are mapped back)
DETECT_MAX_SIDE = 1000
#: bump when crops would change for the same inputs (invalidates every cache entry)
CACHE_VERSION = 1

__all__ = ["align_images", "AlignedFaces", "AlignmentRecord", "DlibLandmarker", "MTCNNLandmarker", "Detection",
           "make_landmarker", "resize_crop", "crop_face", "Face", "TEMPLATE_SIZE", "BACKENDS", "NO_FACE_POLICIES"]


def _detect_copy(img: np.ndarray) -> tuple[np.ndarray, float]:
    """A copy no larger than DETECT_MAX_SIDE and the factor mapping its coordinates back."""
    side = max(img.shape[:2])
    if side <= DETECT_MAX_SIDE:
        return img, 1.0
    f = DETECT_MAX_SIDE / side
    small = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
    return small, img.shape[1] / small.shape[1]


# --------------------------------------------------------------------------- backends
@dataclass
class Detection:
    face: Face | None
    faces_found: int = 0
    upsampled: bool = False  # dlib needed upsample 2
    error: str | None = None  # the detector itself failed on this image


def detect_safely(landmarker: Any, images: Sequence[np.ndarray]) -> list[Detection]:
    """``landmarker.detect`` on a batch; if it raises, image by image, so one bad image fails alone."""
    try:
        return list(landmarker.detect(images))
    except Exception:  # noqa: BLE001 - isolate the culprit below
        pass
    out = []
    for img in images:
        try:
            out.append(landmarker.detect([img])[0])
        except Exception as e:  # noqa: BLE001 - recorded as the image's skip reason
            out.append(Detection(None, error=f"{type(e).__name__}: {' '.join(str(e).split())}"))
    return out


class DlibLandmarker:
    """dlib HOG frontal detector (upsample 1, then 2 if nothing found) + 5-point shape predictor."""

    name = "dlib"

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as frm

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        return [self._one(img) for img in images]

    def _one(self, img: np.ndarray) -> Detection:
        small, f = _detect_copy(img)
        upsampled = False
        rects = self.detector(small, 1)
        if len(rects) == 0:
            rects, upsampled = self.detector(small, 2), True
        if len(rects) == 0:
            return Detection(None, 0)
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64) * f
        i = select_face(boxes, img.shape)
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        shape = self.predictor(img, self._dlib.rectangle(x1, y1, x2, y2))
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        return Detection(Face("dlib5", pts, boxes[i]), len(rects), upsampled)


class MTCNNLandmarker:
    """facenet_pytorch's MTCNN (weights ship in the wheel); images of one size are detected in one batch.

    ``threads``: torch CPU threads while detecting. MTCNN runs thousands of tiny ops (one area
    resize per candidate box); on CPU they were 4x faster single-threaded than with 2 threads
    (6.4 vs 1.5 images/s on 2 busy cores), so the default is 1. ``None`` leaves torch's setting.
    """

    name = "mtcnn"

    def __init__(self, device: str = "cpu", threads: int | None = 1) -> None:
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(keep_all=True, device=device)
        self.threads = threads if str(device).startswith("cpu") else None

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        import torch

        if self.threads is None:
            return self._detect(images)
        saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._detect(images)
        finally:
            torch.set_num_threads(saved)

    def _detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        out: list[Detection | None] = [None] * len(images)
        smalls = [_detect_copy(img) for img in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (s, _) in enumerate(smalls):
            if min(s.shape[:2]) < self.mtcnn.min_face_size:  # no pyramid level fits (MTCNN would raise)
                out[i] = Detection(None, 0)
                continue
            groups.setdefault(s.shape, []).append(i)
        for idx in groups.values():
            batch = np.stack([smalls[i][0] for i in idx])
            boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
            for j, i in enumerate(idx):
                if boxes[j] is None or len(boxes[j]) == 0:
                    out[i] = Detection(None, 0)
                    continue
                f = smalls[i][1]
                b = np.asarray(boxes[j], np.float64) * f
                k = select_face(b, images[i].shape)
                pts = np.asarray(points[j][k], np.float64) * f
                out[i] = Detection(Face("mtcnn5", pts, b[k], float(probs[j][k])), len(b))
        return out  # type: ignore[return-value]


def make_landmarker(backend: str, device: str = "cpu") -> DlibLandmarker | MTCNNLandmarker:
    if backend == "dlib":
        return DlibLandmarker()
    if backend == "mtcnn":
        return MTCNNLandmarker(device)
    raise ValueError(f"unknown landmark backend {backend!r}; use 'dlib' or 'mtcnn'")


def resize_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Backend ``none``: an already-aligned crop, resized to the template size."""
    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if max(img.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


# --------------------------------------------------------------------------- results
@dataclass
class AlignmentRecord:
    """What happened to every image of one :func:`align_images` call."""

    template: str
    backend: str
    no_face: str
    total: int = 0
    aligned: int = 0
    center: int = 0                      #: no face found, centred fallback crop kept
    skipped: dict[str, str] = field(default_factory=dict)  #: rel_path -> reason
    no_face_paths: list[str] = field(default_factory=list)  #: every image without a face (kept or not)
    upsampled: int = 0                   #: dlib found the face only at upsample 2
    multiple_faces: int = 0              #: images with several faces (the central one was taken)
    decoded: int = 0                     #: files decoded by this call (0 on a fully cached pass)
    from_cache: int = 0
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return self.aligned + self.center

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept": self.kept}

    def summary(self) -> str:
        rate = f", {self.decoded / self.seconds:.1f} images/s" if self.decoded and self.seconds > 0 else ""
        return (f"alignment {self.template}/{self.backend}: {self.total} images, {self.aligned} aligned, "
                f"{self.center} centre fallback, {len(self.skipped)} skipped, {self.multiple_faces} with several "
                f"faces, {self.upsampled} found at upsample 2; {self.decoded} decoded, {self.from_cache} cached"
                f"{rate}")


@dataclass
class AlignedFaces:
    """Aligned uint8 faces ``(N, S, S, 3)`` (a read-only memmap when cached) and where they came from.

    ``indices[k]`` is the position in the input ``rel_paths`` of face ``k`` (skipped images are absent).

    Example (pre-aligned crops already in memory)::

        af = AlignedFaces.from_crops(crops, template="arcface_112")   # resized to 112
    """

    faces: np.ndarray
    rel_paths: list[str]
    template: str
    backend: str
    record: AlignmentRecord
    indices: np.ndarray
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.rel_paths)

    @property
    def size(self) -> int:
        return TEMPLATE_SIZE[self.template]

    @classmethod
    def from_crops(cls, crops: np.ndarray | Sequence[np.ndarray], template: str,
                   rel_paths: Sequence[str] | None = None) -> "AlignedFaces":
        """Already-aligned uint8 RGB crops (any size) -> faces resized to the template size (backend ``none``)."""
        _check_template(template)
        size = TEMPLATE_SIZE[template]
        faces = np.stack([resize_crop(np.asarray(c, np.uint8), size) for c in crops]) if len(crops) else \
            np.zeros((0, size, size, 3), np.uint8)
        if faces.ndim != 4 or faces.shape[-1] != 3:
            raise ValueError(f"expected RGB crops (H, W, 3), got stacked shape {faces.shape}")
        names = list(rel_paths) if rel_paths is not None else [f"crop_{i:06d}" for i in range(len(faces))]
        if len(names) != len(faces):
            raise ValueError(f"{len(faces)} crops but {len(names)} rel_paths")
        rec = AlignmentRecord(template, "none", "center", total=len(faces), aligned=len(faces))
        return cls(faces, names, template, "none", rec, np.arange(len(faces)))


def _check_template(template: str) -> None:
    if template not in ALIGNMENTS:
        raise ValueError(f"unknown alignment template {template!r}; known: {', '.join(ALIGNMENTS)}")


# --------------------------------------------------------------------------- cache
class _Store:
    """Append-only slot file ``faces.u8`` + ``index.json`` for one (template, backend).

    Crops are appended and fsynced *before* the index that references them is atomically
    replaced, so a crash leaves at worst unreferenced bytes (trimmed on the next open).
    A changed source file gets a new slot; its old slot is never overwritten while a
    reader may still map it.
    """

    def __init__(self, cache_dir: str | Path, template: str, backend: str) -> None:
        self.dir = Path(cache_dir) / "aligned" / f"{template}-{backend}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.template, self.backend = template, backend
        self.size = TEMPLATE_SIZE[template]
        self.slot_bytes = self.size * self.size * 3
        self.data_path, self.index_path = self.dir / "faces.u8", self.dir / "index.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.slots = 0
        self._pending: list[tuple[str, dict[str, Any], np.ndarray | None]] = []
        self._touched = False  # entries changed in place (a new mtime or a backfilled digest)
        self._load()

    def _load(self) -> None:
        if self.index_path.exists():
            try:
                doc = json.loads(self.index_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise RuntimeError(f"alignment cache index {self.index_path} is unreadable ({e}); "
                                   f"delete the folder {self.dir} to rebuild it") from None
            if doc.get("version") == CACHE_VERSION and doc.get("size") == self.size:
                self.entries, self.slots = doc["entries"], int(doc["slots"])
        have = self.data_path.stat().st_size // self.slot_bytes if self.data_path.exists() else 0
        if have < self.slots:  # data lost behind the index's back: forget entries we cannot read
            self.entries = {k: e for k, e in self.entries.items() if e.get("slot") is None or e["slot"] < have}
            self.slots = have
        if self.data_path.exists() and self.data_path.stat().st_size != self.slots * self.slot_bytes:
            os.truncate(self.data_path, self.slots * self.slot_bytes)  # bytes of an interrupted flush

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer per store (other processes wait), so slots are never handed out twice."""
        with open(self.dir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._load()  # another process may have written while we waited
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def key(path: Path) -> str:
        return str(path.resolve())

    @staticmethod
    def digest(key: str) -> str:
        with open(key, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).hexdigest()

    def lookup(self, key: str, st: os.stat_result) -> dict[str, Any] | None:
        """The cached entry when the file is unchanged: same size and mtime, or same size and content.

        The content check keeps the cache valid across a copy of the data set that did not keep
        mtimes (a re-provisioned share, ``cp`` without ``-p``); a hit records the new mtime.
        """
        e = self.entries.get(key)
        if e is None or e["size"] != st.st_size:
            return None
        if e["mtime_ns"] == st.st_mtime_ns:
            if "digest" not in e:  # entries written before digests existed: backfill, cheaply
                e["digest"] = self.digest(key)
                self._touched = True
            return e
        if e.get("digest") is not None and e["digest"] == self.digest(key):
            e["mtime_ns"] = st.st_mtime_ns
            self._touched = True
            return e
        return None

    def add(self, key: str, st: os.stat_result, crop: np.ndarray | None, status: str,
            reason: str | None = None, info: dict[str, Any] | None = None) -> None:
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": self.digest(key), "status": status,
                 "reason": reason, "info": info or {}, "slot": None}
        self._pending.append((key, entry, crop))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        if not self._pending and not self._touched:
            return
        self._touched = False
        with open(self.data_path, "ab") as f:
            for key, entry, crop in self._pending:
                if crop is not None:
                    assert crop.shape == (self.size, self.size, 3) and crop.dtype == np.uint8
                    f.write(np.ascontiguousarray(crop).tobytes())
                    entry["slot"] = self.slots
                    self.slots += 1
                self.entries[key] = entry
            f.flush()
            os.fsync(f.fileno())
        self._pending.clear()
        dio.atomic_write_text(self.index_path, json.dumps(
            {"version": CACHE_VERSION, "template": self.template, "backend": self.backend, "size": self.size,
             "slots": self.slots, "entries": self.entries}, separators=(",", ":")))

    def faces(self, slots: np.ndarray) -> np.ndarray:
        """Read-only memmap of ``slots`` in order: a view of the store when contiguous, else a gathered copy."""
        n, s = len(slots), self.size
        if n == 0:
            return np.zeros((0, s, s, 3), np.uint8)
        if np.array_equal(slots, np.arange(slots[0], slots[0] + n)):
            return np.memmap(self.data_path, np.uint8, "r", offset=int(slots[0]) * self.slot_bytes, shape=(n, s, s, 3))
        digest = hashlib.sha1(np.asarray(slots, np.int64).tobytes()).hexdigest()[:20]
        view = self.dir / "views" / f"{digest}.u8"
        if not (view.exists() and view.stat().st_size == n * self.slot_bytes):
            src = np.memmap(self.data_path, np.uint8, "r", shape=(self.slots, s, s, 3))

            def write(f: Any) -> None:
                for a in range(0, n, 1024):
                    f.write(np.ascontiguousarray(src[slots[a:a + 1024]]).tobytes())

            dio.atomic_write(view, write)
        return np.memmap(view, np.uint8, "r", shape=(n, s, s, 3))


# --------------------------------------------------------------------------- the entry point
def align_images(root: str | Path, rel_paths: Sequence[str], *, template: str, backend: str,
                 cache_dir: str | Path, no_face: str = "center", progress: bool = True,
                 batch_size: int = 32, flush_every: int = 512, device: str = "cpu",
                 landmarker: DlibLandmarker | MTCNNLandmarker | None = None) -> AlignedFaces:
    """Align ``root/rel_path`` for every path, through the cache in ``cache_dir``.

    Only images not yet cached (or whose size/mtime changed) are decoded; an
    interrupted call keeps what it finished (flushed every ``flush_every`` images
    and on any exception) and the next call resumes. Returns the kept faces in
    input order; ``record`` counts aligned / centre-fallback / skipped (with reasons).

    Example::

        af = align_images(root, paths, template="arcface_112", backend="mtcnn", cache_dir=".cache/fd")
        af.faces[0]          # (112, 112, 3) uint8
        af.record.skipped    # {'bad/file.jpg': 'truncated image (...)'}
    """
    _check_template(template)
    if backend not in BACKENDS:
        raise ValueError(f"unknown alignment backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if no_face not in NO_FACE_POLICIES:
        raise ValueError(f"unknown no_face policy {no_face!r}; use 'center' or 'skip'")
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    root = Path(root)
    rel_paths = [str(p) for p in rel_paths]
    rec = AlignmentRecord(template, backend, no_face, total=len(rel_paths))
    store = _Store(cache_dir, template, backend)
    keys: list[str | None] = [None] * len(rel_paths)
    missing: dict[int, str] = {}
    decodes0 = imageio.decode_count()
    with store.locked():
        todo: list[tuple[int, str, os.stat_result]] = []
        for i, rel in enumerate(rel_paths):
            path = root / rel
            try:
                st = path.stat()
            except OSError as e:
                missing[i] = f"cannot read file: {e.strerror or e}"
                continue
            keys[i] = key = store.key(path)
            if store.lookup(key, st) is None:
                todo.append((i, key, st))
        rec.from_cache = len(rel_paths) - len(missing) - len(todo)
        if todo and backend != "none" and landmarker is None:
            landmarker = make_landmarker(backend, device)
        bar = tqdm(total=len(todo), desc=f"align {template}/{backend}", unit="img", disable=not progress)
        try:
            for a in range(0, len(todo), batch_size):
                _align_batch(todo[a:a + batch_size], root, rel_paths, store, template, backend, landmarker)
                bar.update(len(todo[a:a + batch_size]))
                if store.pending >= flush_every:
                    store.flush()
        finally:
            store.flush()  # keep finished work even when interrupted
            bar.close()
    rec.decoded = imageio.decode_count() - decodes0

    kept_slots, kept_paths, kept_idx = [], [], []
    for i, rel in enumerate(rel_paths):
        if i in missing:
            rec.skipped[rel] = missing[i]
            continue
        e = store.entries[keys[i]]  # type: ignore[index]
        info = e.get("info", {})
        rec.upsampled += int(bool(info.get("upsampled")))
        rec.multiple_faces += int(info.get("faces", 0) > 1)
        if e["status"] == "error":
            rec.skipped[rel] = e["reason"]
            continue
        if e["status"] == "center":
            rec.no_face_paths.append(rel)
            if no_face == "skip":
                rec.skipped[rel] = e["reason"]
                continue
            rec.center += 1
        else:
            rec.aligned += 1
        kept_slots.append(e["slot"])
        kept_paths.append(rel)
        kept_idx.append(i)
    faces = store.faces(np.asarray(kept_slots, np.int64))
    rec.seconds = time.perf_counter() - t0
    return AlignedFaces(faces, kept_paths, template, backend, rec, np.asarray(kept_idx, np.int64), root)


def _align_batch(items: list[tuple[int, str, os.stat_result]], root: Path, rel_paths: list[str], store: _Store,
                 template: str, backend: str, landmarker: Any) -> None:
    size = TEMPLATE_SIZE[template]
    images: list[np.ndarray] = []
    ok: list[tuple[str, os.stat_result]] = []
    for i, key, st in items:
        try:
            images.append(imageio.load_rgb(root / rel_paths[i]))
            ok.append((key, st))
        except imageio.ImageReadError as e:
            store.add(key, st, None, "error", e.reason)
    if not images:
        return
    if backend == "none":
        for (key, st), img in zip(ok, images):
            store.add(key, st, resize_crop(img, size), "aligned")
        return
    for (key, st), img, det in zip(ok, images, detect_safely(landmarker, images)):
        info = {"faces": det.faces_found, "upsampled": det.upsampled}
        if det.error is not None:
            store.add(key, st, None, "error", f"{backend} detector failed: {det.error}", info)
            continue
        try:
            if det.face is not None:
                store.add(key, st, crop_face(img, det.face, template), "aligned", info=info)
                continue
            reason = f"no face found by {backend}" + (" (upsample 1 and 2)" if backend == "dlib" else "")
        except ValueError as e:  # a degenerate box: treat like no face
            reason = f"unusable face: {e}"
        try:
            store.add(key, st, crop_face(img, center_face(img.shape), template), "center", reason, info)
        except ValueError as e:  # e.g. an image a few pixels wide
            store.add(key, st, None, "error", f"{reason}; centre crop impossible: {e}", info)

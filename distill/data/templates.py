"""Alignment-template geometry: where a face's landmarks go in each template, and the crop itself.

* ``dlib_150``: dlib's ``get_face_chip_details(shape, size=150, padding=0.25)`` chip.
* ``facenet_160``: MTCNN box + a margin of :data:`FACENET_160_MARGIN` (32) ORIGINAL-image pixels
  (half on each side, clipped), cropped and resized bilinearly to 160: David Sandberg's
  ``align_dataset_mtcnn.py --image_size 160 --margin 32``, how FaceNet 20180408-102900 was evaluated.
  (facenet_pytorch's ``extract_face``, margin in output pixels, stays available as :func:`extract_box`.)
* ``arcface_112``: least-squares similarity from 5 points to the standard ArcFace 112x112 template.

Two landmark conventions exist (dlib's eye corners + nose base, MTCNN's eye centres, nose tip and
mouth corners); the constants below, measured on LFW, convert between them.

Example::

    from distill.data.templates import Face, crop_face
    chip = crop_face(img, Face("mtcnn5", points, box), "dlib_150")   # (150, 150, 3) uint8
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
TEMPLATE_SIZE: dict[str, int] = {"dlib_150": 150, "facenet_160": 160, "arcface_112": 112}
#: bumped when a template's crops change for the same detections (alignment caches must key on it);
#: facenet_160 2: Sandberg's margin in original pixels (1 was facenet_pytorch's margin 14 in output pixels)
TEMPLATE_VERSION: dict[str, int] = {"dlib_150": 1, "facenet_160": 2, "arcface_112": 1}
DLIB_PADDING = 0.25
#: facenet_pytorch's default margin (in OUTPUT pixels) for :func:`extract_box`
FACENET_MARGIN = 14
#: facenet_160's margin in ORIGINAL-image pixels (Sandberg's align_dataset_mtcnn convention). On LFW
#: DevTest (OpenCV DNN + the 20180408-102900 graph, 10-fold CV) 32 px gave 98.70%, 44 px 98.10,
#: 16 px 97.90, facenet_pytorch's margin 14 in output pixels 95.7.
FACENET_160_MARGIN = 32

#: standard ArcFace 112x112 positions of (left eye, right eye, nose tip, left and right mouth corner),
#: "left" meaning the image's left; the same order as MTCNN's landmarks.
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

# Where MTCNN's five landmarks fall, on average, inside dlib's own 150x150 chips (padding 0.25),
# and MTCNN's box (centre x, centre y, width, height) in the same chip frame. Derived with
# `python -m benchmarks.alignment derive --n 400 --seed 0`: 400 seeded LFW deep-funneled images,
# 398 where dlib and MTCNN found the same face; each MTCNN point/box mapped through dlib's chip
# transform (from its 5-point shape), then averaged. Per-point std 2-6 px (eyes 2-3, mouth 5-6).
MTCNN_IN_DLIB150 = np.array([[47.874, 46.070], [102.305, 46.131], [75.075, 78.111],
                             [50.664, 105.868], [98.606, 105.950]], dtype=np.float64)
MTCNN_BOX_IN_DLIB150 = np.array([72.357, 64.368, 121.302, 161.432], dtype=np.float64)
# Centre fallback with LFW-like framing: mean MTCNN landmarks and box (x1, y1, x2, y2) as fractions
# of the side of the image's centred square, from the same run (LFW images are 250x250).
LFW_MTCNN_POINTS = np.array([[0.41918, 0.45380], [0.58826, 0.44991], [0.50615, 0.55041],
                             [0.43217, 0.63887], [0.58131, 0.63548]], dtype=np.float64)
LFW_MTCNN_BOX = np.array([0.30829, 0.25973, 0.68456, 0.76021], dtype=np.float64)


@dataclass(frozen=True)
class Face:
    """One detected face in image coordinates.

    ``kind`` names the landmark convention: ``"dlib5"`` (dlib: outer/inner corners of the
    image-right eye, then of the image-left eye, then the base of the nose) or ``"mtcnn5"``
    (image-left eye, image-right eye, nose tip, left and right mouth corner).
    """

    kind: Literal["dlib5", "mtcnn5"]
    points: np.ndarray  # (5, 2) float x, y
    box: np.ndarray     # (4,) x1, y1, x2, y2
    score: float = 1.0


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama's closed form; returns a 2x3 matrix ``M`` with ``dst ~ M @ [x, y, 1]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / len(src)
    scale = (sig * d).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points ``(N, 2)`` mapped by the 2x3 affine ``m``."""
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine transform."""
    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Affine ``outer(inner(x))``."""
    a = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return a[:2]


def _dlib_shape(face: Face) -> Any:
    import dlib

    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    parts = [dlib.point(int(round(x)), int(round(y))) for x, y in face.points]
    return dlib.full_object_detection(dlib.rectangle(x1, y1, x2, y2), parts)


def dlib_chip_matrix(face: Face, size: int = 150, padding: float = DLIB_PADDING) -> np.ndarray:
    """Image -> chip affine of ``dlib.get_face_chip_details(shape, size, padding)`` (dlib5 faces).

    Same mapping as dlib's ``get_mapping_to_chip``: the chip rectangle rotated by ``angle`` about
    its centre, its corners sent to the chip's corners.
    """
    import dlib

    d = dlib.get_face_chip_details(_dlib_shape(face), size=size, padding=padding)
    r = d.rect
    c = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    ca, sa = math.cos(d.angle), math.sin(d.angle)
    rot = np.array([[ca, -sa], [sa, ca]])
    corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]])
    src = (corners - c) @ rot.T + c
    dst = np.array([[0, 0], [d.cols - 1, 0], [d.cols - 1, d.rows - 1]], np.float64)
    return cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def template_matrix(face: Face, template: str) -> np.ndarray:
    """Image -> chip affine for the warp templates (``dlib_150``, ``arcface_112``)."""
    if template == "dlib_150":
        if face.kind == "dlib5":
            return dlib_chip_matrix(face)
        return similarity_transform(face.points, MTCNN_IN_DLIB150)
    if template == "arcface_112":
        if face.kind == "mtcnn5":
            return similarity_transform(face.points, ARCFACE_112)
        # dlib points -> dlib chip -> (where MTCNN landmarks sit in that chip) -> ArcFace template
        return compose(similarity_transform(MTCNN_IN_DLIB150, ARCFACE_112), dlib_chip_matrix(face))
    raise ValueError(f"{template!r} is not a warp template")


def facenet_box(face: Face) -> np.ndarray:
    """The MTCNN-style detection box (x1, y1, x2, y2) for ``facenet_160``."""
    if face.kind == "mtcnn5":
        return np.asarray(face.box, np.float64)
    # dlib: MTCNN's mean box in the dlib chip frame, mapped back to the image (axis-aligned)
    m = dlib_chip_matrix(face)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))  # chip px per image px
    cx, cy = apply_affine(invert_affine(m), MTCNN_BOX_IN_DLIB150[:2])[0]
    w, h = MTCNN_BOX_IN_DLIB150[2:] / scale
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _facenet_crop_box(box: np.ndarray, shape: tuple[int, ...], size: int, margin: int) -> tuple[int, int, int, int]:
    """The pixel rectangle ``facenet_pytorch.extract_face`` crops: margin in output pixels, int, clipped."""
    h, w = shape[:2]
    mx = margin * (box[2] - box[0]) / (size - margin)
    my = margin * (box[3] - box[1]) / (size - margin)
    x1, y1 = int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0))
    x2, y2 = int(min(box[2] + mx / 2, w)), int(min(box[3] + my / 2, h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError(f"face box {np.round(box, 1).tolist()} is outside the {w}x{h} image")
    return x1, y1, x2, y2


def sandberg_crop_box(box: np.ndarray, shape: tuple[int, ...],
                      margin: int = FACENET_160_MARGIN) -> tuple[int, int, int, int]:
    """The pixel rectangle (x1, y1, x2, y2), end-exclusive, that ``facenet_160`` crops from an image of ``shape``.

    Sandberg's ``align_dataset_mtcnn.py``: ``bb = box -/+ margin / 2`` in original-image pixels,
    clipped to the image, truncated to int (``np.int32``). Raises ValueError when less than 2 px remain.
    """
    h, w = shape[:2]
    x1, y1 = int(max(box[0] - margin / 2, 0)), int(max(box[1] - margin / 2, 0))
    x2, y2 = int(min(box[2] + margin / 2, w)), int(min(box[3] + margin / 2, h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError(f"face box {np.round(box, 1).tolist()} is outside the {w}x{h} image")
    return x1, y1, x2, y2


def facenet_matrix(face: Face, shape: tuple[int, ...], margin: int = FACENET_160_MARGIN) -> np.ndarray:
    """Image -> chip affine of ``facenet_160``: the :func:`sandberg_crop_box` rectangle stretched onto
    160x160 (anisotropic when the box is not square), pixel centres aligned as :func:`sandberg_crop` resizes."""
    size = TEMPLATE_SIZE["facenet_160"]
    x1, y1, x2, y2 = sandberg_crop_box(facenet_box(face), shape, margin)
    sx, sy = size / (x2 - x1), size / (y2 - y1)
    # resize convention: chip pixel centre u + 0.5 samples image coordinate x1 + (u + 0.5) / sx
    return np.array([[sx, 0, 0.5 * sx - 0.5 - x1 * sx], [0, sy, 0.5 * sy - 0.5 - y1 * sy]], np.float64)


def chip_matrix(face: Face, template: str, shape: tuple[int, ...]) -> np.ndarray:
    """Image -> chip affine of ``template`` for ``face`` in an image of ``shape`` (for mapping points).

    For ``facenet_160`` this is the (possibly anisotropic) crop-and-resize of :func:`facenet_matrix`.
    """
    if template != "facenet_160":
        return template_matrix(face, template)
    return facenet_matrix(face, shape)


def warp(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Bilinear affine warp to ``size x size`` (black outside the image), pre-shrinking big images."""
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.5:  # strong downscale: shrink first (area filter) so bilinear does not alias
        k = int(1 / scale)
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(1, round(w / k)), max(1, round(h / k))), interpolation=cv2.INTER_AREA)
        fx, fy = w / small.shape[1], h / small.shape[0]
        m = compose(m, np.array([[fx, 0, 0], [0, fy, 0]], np.float64))
        img = small
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def extract_box(img: np.ndarray, box: np.ndarray, size: int = 160, margin: int = FACENET_MARGIN) -> np.ndarray:
    """``facenet_pytorch.extract_face`` semantics on a numpy image: margin in output pixels, clipped box,
    area resize (non-square boxes are stretched, as there)."""
    x1, y1, x2, y2 = _facenet_crop_box(box, img.shape, size, margin)
    return cv2.resize(img[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)


def sandberg_crop(img: np.ndarray, box: np.ndarray, size: int = 160, margin: int = FACENET_160_MARGIN) -> np.ndarray:
    """``align_dataset_mtcnn.py`` on one box: crop :func:`sandberg_crop_box`, resize to ``size x size``
    with PIL's bilinear filter (what its ``scipy.misc.imresize(..., interp='bilinear')`` ran; antialiased
    when shrinking). uint8 RGB (H, W, 3) in, (size, size, 3) out."""
    from PIL import Image

    x1, y1, x2, y2 = sandberg_crop_box(box, img.shape, margin)
    crop = Image.fromarray(np.ascontiguousarray(img[y1:y2, x1:x2]))
    return np.array(crop.resize((size, size), Image.BILINEAR))


def crop_face(img: np.ndarray, face: Face, template: str) -> np.ndarray:
    """Aligned uint8 ``(S, S, 3)`` crop of ``face`` in ``template``."""
    size = TEMPLATE_SIZE[template]
    if template == "facenet_160":
        return sandberg_crop(img, facenet_box(face), size)
    if template == "dlib_150" and face.kind == "dlib5":
        import dlib  # dlib's own chip extraction, pixel for pixel

        return np.ascontiguousarray(dlib.get_face_chip(img, _dlib_shape(face), size=size, padding=DLIB_PADDING))
    return warp(img, template_matrix(face, template), size)


#: where the five MTCNN-order landmarks sit in a crop of each 5-point template: the templates a crop can be
#: re-framed between by one similarity transform (facenet_160 is framed by a detection box, not by points)
TEMPLATE_POINTS: dict[str, np.ndarray] = {"arcface_112": ARCFACE_112, "dlib_150": MTCNN_IN_DLIB150}


class ReframeError(ValueError):
    """A crop aligned to one template cannot be turned into another (the message names both and why)."""


def reframe_matrix(src: str, dst: str) -> np.ndarray:
    """The ``2 x 3`` affine from a ``src``-template crop to a ``dst``-template crop: the similarity transform
    taking ``src``'s landmark positions onto ``dst``'s (:data:`TEMPLATE_POINTS`; the dlib_150 positions are
    the LFW means measured for the MTCNN -> dlib_150 conversion, so the result is the chip that conversion
    gives, not dlib's own chip). Where ``dst`` frames more of the head than ``src`` holds, the border is black.

    Raises:
        ReframeError: either template is framed otherwise (``facenet_160``)."""
    missing = [t for t in (src, dst) if t not in TEMPLATE_POINTS]
    if missing:
        raise ReframeError(f"crops aligned to {src} cannot be re-framed for {dst}: {missing[0]} is framed by a "
                           f"detection box, not by 5 landmarks, so no transform of the crop gives it; "
                           f"re-framing works between {' and '.join(TEMPLATE_POINTS)}")
    return similarity_transform(TEMPLATE_POINTS[src], TEMPLATE_POINTS[dst])


def resize_square(crop: np.ndarray, size: int) -> np.ndarray:
    """An aligned crop resized to ``size x size`` (area filter when shrinking, bilinear when growing; as is
    when it already has that size)."""
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if max(crop.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def reframe_crop(crop: np.ndarray, src: str, dst: str) -> np.ndarray:
    """A uint8 ``(H, W, 3)`` crop aligned to template ``src`` (any size: scaled to the template's first)
    -> the ``(S, S, 3)`` crop of template ``dst``: resized when ``src == dst``, else warped by
    :func:`reframe_matrix`.

    Raises:
        ReframeError: no 5-point transform joins the two templates."""
    size = TEMPLATE_SIZE[dst]
    if src == dst:
        return resize_square(crop, size)
    m = reframe_matrix(src, dst)
    s = TEMPLATE_SIZE[src]
    if crop.shape[0] != s or crop.shape[1] != s:  # fold the crop's own scale into the transform
        m = compose(m, np.array([[s / crop.shape[1], 0, 0], [0, s / crop.shape[0], 0]], np.float64))
    return warp(crop, m, size)


def center_face(shape: tuple[int, ...]) -> Face:
    """The no-face fallback: LFW's mean face placed in the image's centred square."""
    h, w = shape[:2]
    side = min(h, w)
    off = np.array([(w - side) / 2, (h - side) / 2])
    return Face("mtcnn5", LFW_MTCNN_POINTS * side + off, LFW_MTCNN_BOX * side + np.tile(off, 2), 0.0)


def select_face(boxes: np.ndarray, shape: tuple[int, ...]) -> int:
    """Index of the face to keep: the largest box containing the image centre, else the nearest one."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    cy, cx = shape[0] / 2, shape[1] / 2
    inside = (boxes[:, 0] <= cx) & (cx <= boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy <= boxes[:, 3])
    if inside.any():
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return int(np.argmax(np.where(inside, area, -np.inf)))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return int(np.argmin(((centres - [cx, cy]) ** 2).sum(1)))

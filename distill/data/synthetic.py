"""Synthetic face identities: the embedded default data set that needs no download.

A deterministic procedural painter (numpy + OpenCV). Each identity is a fixed
set of face parameters (face shape, skin tone from the Monk Skin Tone scale,
hair colour and style, eye/brow/nose/mouth geometry and colour, glasses,
beard); each image is a fresh nuisance draw (small rotation/scale/shift, yaw,
lighting, expression, background, clothing, blur, noise, partial occlusion).
Framing follows LFW deep-funneled (250x250, face centred at about the same
scale), so the same detector + alignment code path runs on it, and a real
face-recognition network separates the identities (see tests/test_synthetic.py).

Layout written by :func:`generate_synthetic`::

    out_dir/person_0000/person_0000_0001.png ...
    out_dir/pairsDevTrain.txt     View-1 pairs among the training identities
    out_dir/pairsDevTest.txt      View-1 pairs among the held-out identities
    out_dir/manifest.json         parameters + their hash (re-use detection)

Example::

    syn = generate_synthetic(cache / "synthetic", identities=120, images_per_identity=8, seed=0)
    images = syn.images()                  # ImageList of all identities
    test = syn.test_pairs()                # PairsProtocol on held-out people
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from distill.progress import progress_bar

from distill.data.folders import DatasetError, ImageList, scan_identity_folder
from distill.data.pairs import PairsProtocol, read_pairs, write_pairs
from distill.io import atomic_write_json

#: bump when the painter changes: a new version never re-uses an old folder
GENERATOR_VERSION = 1
TRAIN_PAIRS, TEST_PAIRS, MANIFEST = "pairsDevTrain.txt", "pairsDevTest.txt", "manifest.json"

#: Monk Skin Tone scale (Google, 2022), sRGB; tones 2..9 (1 and 10 are the extremes)
MONK_SKIN_TONES = np.array([
    (246, 237, 228), (243, 231, 219), (247, 234, 208), (234, 218, 186), (215, 189, 150),
    (160, 126, 86), (130, 92, 67), (96, 65, 52), (58, 49, 42), (41, 36, 32)], dtype=np.float32)
HAIR_COLOURS = np.array([
    (28, 24, 22), (55, 38, 28), (95, 65, 42), (140, 100, 62), (200, 165, 105),
    (135, 60, 32), (140, 138, 135), (215, 212, 205)], dtype=np.float32)
HAIR_WEIGHTS = np.array([0.3, 0.22, 0.16, 0.1, 0.08, 0.05, 0.06, 0.03])
IRIS_COLOURS = np.array([
    (45, 28, 18), (85, 52, 28), (115, 95, 50), (75, 115, 70), (70, 110, 165), (115, 125, 135)],
    dtype=np.float32)
HAIR_STYLES = ("short", "fringe", "side_part", "long", "bald", "curly")


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class FaceIdentity:
    """Everything that makes one synthetic person recognisable (fixed across their images)."""

    face_w: float          # half-width of the face, px at 250
    face_h: float          # half-height
    jaw_taper: float       # 0 square jaw .. 0.45 pointed chin
    forehead: float        # forehead width factor
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: str
    hairline: float        # how low the hair comes (fraction of face_h above the eyes)
    eye_dx: float          # half the distance between eye centres
    eye_y: float           # eye height relative to the face centre (negative = up)
    eye_w: float
    eye_h: float
    eye_tilt: float        # degrees, outer corners up (+)
    iris: tuple[float, float, float]
    brow_gap: float        # brow above the eye
    brow_thick: float
    brow_arch: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    lip: tuple[float, float, float]
    ear_size: float
    glasses: int           # 0 none, 1 round, 2 rectangular
    glasses_colour: tuple[float, float, float]
    beard: int             # 0 none, 1 moustache, 2 goatee, 3 full beard
    mole: tuple[float, float] | None
    cheek_red: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "FaceIdentity":
        """A random identity (face shape, colours, features) drawn from ``rng``."""
        t = rng.uniform(0.5, 7.999)  # continuous position between tones 1-2 and 9
        k = int(t)
        skin = MONK_SKIN_TONES[k] * (k + 1 - t) + MONK_SKIN_TONES[k + 1] * (t - k)
        skin = np.clip(skin * rng.uniform(0.95, 1.05) + np.array([rng.normal(0, 4), 0, -abs(rng.normal(0, 3))]),
                       0, 255)
        hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_WEIGHTS)] * rng.uniform(0.85, 1.15)
        lip_base = np.array([170, 75, 80]) * (0.55 + 0.45 * skin.mean() / 255)
        lip = np.clip(0.3 * skin + 0.6 * lip_base * rng.uniform(0.8, 1.05), 0, 255)
        face_w = rng.uniform(42, 56)
        beard = int(rng.choice(4, p=[0.65, 0.12, 0.1, 0.13]))
        return cls(
            face_w=face_w, face_h=face_w * rng.uniform(1.22, 1.5), jaw_taper=rng.uniform(0.05, 0.45),
            forehead=rng.uniform(0.9, 1.05), skin=tuple(skin.tolist()), hair=tuple(np.clip(hair, 0, 255).tolist()),
            hair_style=str(rng.choice(HAIR_STYLES, p=[0.25, 0.15, 0.2, 0.2, 0.08, 0.12])),
            hairline=rng.uniform(0.45, 0.8),
            eye_dx=face_w * rng.uniform(0.36, 0.47), eye_y=rng.uniform(-0.22, -0.1), eye_w=rng.uniform(8.5, 12.5),
            eye_h=rng.uniform(3.2, 5.4), eye_tilt=rng.uniform(-6, 8),
            iris=tuple((IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))] * rng.uniform(0.85, 1.15)).tolist()),
            brow_gap=rng.uniform(8, 15), brow_thick=rng.uniform(2.5, 6), brow_arch=rng.uniform(0, 5),
            brow_tilt=rng.uniform(-8, 12), nose_len=rng.uniform(0.22, 0.36), nose_w=rng.uniform(8, 14),
            mouth_y=rng.uniform(0.45, 0.6), mouth_w=rng.uniform(14, 22), lip_thick=rng.uniform(3.5, 7),
            lip=tuple(lip.tolist()), ear_size=rng.uniform(0.8, 1.2),
            glasses=int(rng.choice(3, p=[0.72, 0.14, 0.14])),
            glasses_colour=tuple((rng.uniform(0, 1) ** 2 * np.array([120, 90, 70]) + 15).tolist()),
            beard=beard, mole=(float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.1, 0.5)))
            if rng.random() < 0.3 else None, cheek_red=rng.uniform(0, 0.08))


@dataclass(frozen=True)
class Nuisance:
    """What changes from one photo of a person to the next."""

    angle: float           # in-plane rotation, degrees
    scale: float
    dx: float
    dy: float
    yaw: float             # -1..1, fake out-of-plane turn (features slide sideways)
    pitch: float
    light_dir: tuple[float, float]
    light_amb: float
    brightness: float
    warmth: float
    smile: float
    mouth_open: float
    brow_raise: float
    blink: float
    background: tuple[float, float, float]
    background2: tuple[float, float, float]
    clothes: tuple[float, float, float]
    blur: float
    noise: float
    occlusion: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in px at 250
    occlusion_colour: tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Nuisance":
        """Random per-image nuisance (pose, light, expression, background) drawn from ``rng``."""
        occ = None
        if rng.random() < 0.12:  # a hand/object over a lower or side part of the face
            w, h = rng.uniform(30, 60), rng.uniform(25, 45)
            x0 = rng.choice([rng.uniform(40, 80), rng.uniform(150, 190) - w])
            y0 = rng.uniform(150, 185)
            occ = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        return cls(
            angle=rng.normal(0, 4), scale=rng.uniform(0.94, 1.06), dx=rng.normal(0, 3), dy=rng.normal(0, 3),
            yaw=float(np.clip(rng.normal(0, 0.25), -0.55, 0.55)), pitch=float(np.clip(rng.normal(0, 0.15), -.3, .3)),
            light_dir=(rng.uniform(-0.7, 0.7), rng.uniform(-0.6, 0.3)), light_amb=rng.uniform(0.45, 0.7),
            brightness=rng.uniform(0.8, 1.15), warmth=rng.normal(0, 0.05),
            smile=rng.uniform(-0.2, 1.0), mouth_open=max(0.0, rng.uniform(-0.6, 1.0)),
            brow_raise=rng.normal(0, 1.2), blink=max(0.0, rng.uniform(-4, 1)),
            background=tuple(rng.uniform(20, 235, 3).tolist()), background2=tuple(rng.uniform(20, 235, 3).tolist()),
            clothes=tuple(rng.uniform(10, 230, 3).tolist()), blur=max(0.0, rng.uniform(-0.5, 1.3)),
            noise=rng.uniform(0, 5), occlusion=occ, occlusion_colour=tuple(rng.uniform(30, 220, 3).tolist()))


# --------------------------------------------------------------------------- painting
_SHIFT = 4  # cv2 sub-pixel bits


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, t0: float = 0.0,
             t1: float = 2 * math.pi, n: int = 40) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


class _Mask:
    """A 0..1 float mask that is zero outside a box: painting only inside the box keeps this fast."""

    __slots__ = ("y0", "x0", "a")

    def __init__(self, y0: int, x0: int, a: np.ndarray) -> None:
        self.y0, self.x0, self.a = y0, x0, a

    @property
    def box(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.a.shape[0]), slice(self.x0, self.x0 + self.a.shape[1])

    def crop(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        out = np.zeros((y1 - y0, x1 - x0), np.float32)
        ya, xa = max(y0, self.y0), max(x0, self.x0)
        yb, xb = min(y1, self.y0 + self.a.shape[0]), min(x1, self.x0 + self.a.shape[1])
        if yb > ya and xb > xa:
            out[ya - y0:yb - y0, xa - x0:xb - x0] = self.a[ya - self.y0:yb - self.y0, xa - self.x0:xb - self.x0]
        return out

    def __mul__(self, other: "_Mask | float") -> "_Mask":
        if isinstance(other, _Mask):
            (ys, xs) = self.box
            return _Mask(self.y0, self.x0, self.a * other.crop(ys.start, xs.start, ys.stop, xs.stop))
        return _Mask(self.y0, self.x0, self.a * np.float32(other))

    def maximum(self, other: "_Mask") -> "_Mask":
        y0, x0 = min(self.y0, other.y0), min(self.x0, other.x0)
        y1 = max(self.y0 + self.a.shape[0], other.y0 + other.a.shape[0])
        x1 = max(self.x0 + self.a.shape[1], other.x0 + other.a.shape[1])
        return _Mask(y0, x0, np.maximum(self.crop(y0, x0, y1, x1), other.crop(y0, x0, y1, x1)))


class _Canvas:
    """Float RGB image in 0..255 with soft-edged polygon painting; geometry is given at 250 px."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.img = np.zeros((size, size, 3), np.float32)
        self.k = size / 250.0

    def mask(self, polys: list[np.ndarray], soft: float = 0.0, lines: float = 0.0, closed: bool = True) -> _Mask:
        """Filled (or, with ``lines``, stroked) anti-aliased polygons, blurred by ``soft`` px."""
        pts = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in polys]) * self.k
        pad = int(math.ceil(3.5 * soft * self.k + lines * self.k + 2))
        x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - pad, 0)
        x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + pad + 1, self.size)
        if x1 <= x0 or y1 <= y0:
            return _Mask(0, 0, np.zeros((0, 0), np.float32))
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        scaled = [_pts(np.asarray(p, np.float64).reshape(-1, 2) * self.k - (x0, y0)) for p in polys]
        if lines > 0:
            cv2.polylines(m, scaled, closed, 255, max(1, int(round(lines * self.k))), cv2.LINE_AA, _SHIFT)
        else:
            cv2.fillPoly(m, scaled, 255, cv2.LINE_AA, _SHIFT)
        mf = m.astype(np.float32) * np.float32(1 / 255.0)
        if soft > 0:
            mf = cv2.GaussianBlur(mf, (0, 0), soft * self.k, borderType=cv2.BORDER_CONSTANT)
        return _Mask(int(y0), int(x0), mf)

    def paint(self, mask: _Mask, colour: Any, alpha: float = 1.0) -> None:
        """Alpha-blend ``colour`` (RGB, or an (S,S,3) or mask-box-sized texture) through ``mask``."""
        if mask.a.size == 0:
            return
        box = mask.box
        m = (mask.a * np.float32(alpha))[..., None]
        col = np.asarray(colour, np.float32)
        region = self.img[box]
        region *= 1 - m
        if col.ndim == 3 and col.shape[:2] != mask.a.shape:
            col = col[box]
        region += m * col

    def shade(self, mask: _Mask, factor: np.ndarray | float) -> None:
        """Multiply by ``factor`` (a number, or an (S,S) or mask-box-sized map) through ``mask``."""
        if mask.a.size == 0:
            return
        box = mask.box
        f = np.asarray(factor, np.float32)
        if f.ndim == 2 and f.shape != mask.a.shape:
            f = f[box]
        f = 1 + (f - 1) * mask.a
        self.img[box] *= f[..., None]


def render_face(p: FaceIdentity, n: Nuisance, size: int = 250, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Paint one face: identity ``p`` under nuisance ``n``; uint8 (size, size, 3) RGB.

    ``seed`` drives only texture (skin, hair, background blobs, sensor noise).
    """
    rng = np.random.default_rng(seed)  # texture noise only
    c = _Canvas(size)
    S = 250.0

    # background: two-colour gradient + soft blobs, painted at 1/8 scale (it is all low frequency)
    bs = max(8, size // 8)
    by_, bx_ = np.mgrid[0:bs, 0:bs].astype(np.float32) / bs
    g = (bx_ * 0.6 + by_ * 0.4)[..., None]
    bg = np.asarray(n.background, np.float32) * (1 - g) + np.asarray(n.background2, np.float32) * g
    for _ in range(3):
        (bx, by), br = rng.uniform(0, 1, 2), rng.uniform(0.08, 0.28)
        d2 = ((bx_ - bx) ** 2 + ((by_ - by) / rng.uniform(0.5, 1.5)) ** 2) / (br * br)
        w = (0.5 * np.exp(-d2 * d2))[..., None]
        bg = bg * (1 - w) + rng.uniform(20, 235, 3).astype(np.float32) * w
    c.img[:] = cv2.resize(bg, (size, size), interpolation=cv2.INTER_CUBIC)

    cx, cy = S / 2, S / 2 + 3
    a, b = p.face_w, p.face_h
    skin = np.asarray(p.skin, np.float32)
    hair = np.asarray(p.hair, np.float32)
    yaw, pitch = n.yaw, n.pitch
    fx = cx + yaw * a * 0.28            # where the facial midline sits after the turn
    fy = cy + pitch * b * 0.12

    def feat(x_rel: float, y_rel: float) -> tuple[float, float]:
        """Face-frame point -> image: the side turned away gets compressed."""
        squeeze = 1 - 0.25 * yaw * np.sign(x_rel) if x_rel else 1.0
        return fx + x_rel * squeeze, fy + y_rel

    # long hair behind the head, shoulders, neck
    if p.hair_style == "long":
        c.paint(c.mask([np.concatenate([_ellipse(cx, cy - 0.1 * b, a * 1.25, b * 1.1, t0=math.pi, t1=2 * math.pi),
                                         [[cx + a * 1.3, cy + b * 1.25], [cx - a * 1.3, cy + b * 1.25]]])], soft=2),
                hair * 0.85)
    sh = c.mask([np.array([[cx - a * 2.4, S + 5], [cx - a * 2.2, cy + b * 1.25], [cx - a * 0.6, cy + b * 1.0],
                           [cx + a * 0.6, cy + b * 1.0], [cx + a * 2.2, cy + b * 1.25], [cx + a * 2.4, S + 5]])],
                soft=1)
    c.paint(sh, n.clothes)
    neck = c.mask([np.array([[cx - a * 0.55, cy + b * 0.4], [cx + a * 0.55, cy + b * 0.4],
                             [cx + a * 0.6, cy + b * 1.2], [cx - a * 0.6, cy + b * 1.2]])], soft=1)
    c.paint(neck, skin * 0.72)

    # ears, then the face contour
    ear_y = cy + p.eye_y * b + 10
    for side in (-1, 1):
        ex = cx + side * a * (0.98 - 0.12 * yaw * side)
        c.paint(c.mask([_ellipse(ex, ear_y, 8 * p.ear_size, 16 * p.ear_size)], soft=1), skin * 0.92)
    t = np.linspace(0, 2 * math.pi, 90, endpoint=False)
    st = np.sin(t)
    wx = np.where(st > 0, 1 - p.jaw_taper * st ** 2, p.forehead + (1 - p.forehead) * (1 - st ** 2))
    contour = np.stack([cx + a * np.cos(t) * wx, cy + b * st], axis=1)
    face = c.mask([contour], soft=1.0)
    c.paint(face, skin)
    lit = face.maximum(neck)  # everything the head light falls on

    # skin texture and cheek colour
    small = max(8, size // 8)  # low-frequency blotches: draw small, blur, upsample
    blotch = cv2.GaussianBlur(rng.standard_normal((small, small), np.float32), (0, 0), 0.75 * small / 32)
    blotch = cv2.resize(blotch / (blotch.std() + 1e-6), (size, size), interpolation=cv2.INTER_CUBIC)
    c.shade(face, 1 + 0.05 * blotch)
    for side in (-1, 1):
        ck = c.mask([_ellipse(*feat(side * a * 0.55, b * 0.15), 14, 10)], soft=8)
        c.paint(ck * face, (200, 80, 80), alpha=p.cheek_red * 3)

    # eye sockets and eyes
    eye_y = p.eye_y * b
    eyes: list[tuple[float, float]] = []
    for side in (-1, 1):
        ex, ey = feat(side * p.eye_dx, eye_y)
        eyes.append((ex, ey))
        w = p.eye_w * (1 - 0.25 * yaw * side)
        c.shade(c.mask([_ellipse(ex, ey - 2, w * 1.5, p.eye_h * 2.4)], soft=5), 0.72)
        tilt = -side * p.eye_tilt
        h = p.eye_h * (1 - 0.85 * min(n.blink, 1.0))
        top = _ellipse(ex, ey, w, h * 1.1, tilt, math.pi, 2 * math.pi, 20)
        bot = _ellipse(ex, ey, w, h * 0.8, tilt, 0, math.pi, 20)
        almond = np.concatenate([top, bot])
        eye_m = c.mask([almond], soft=0.4)
        c.paint(eye_m, (235, 232, 228))
        iris_m = c.mask([_ellipse(ex + yaw * 2, ey, p.eye_h * 1.05 + 1.2, p.eye_h * 1.05 + 1.2)], soft=0.4) * eye_m
        c.paint(iris_m, p.iris)
        c.paint(c.mask([_ellipse(ex + yaw * 2, ey, 1.8, 1.8)]) * eye_m, (12, 10, 10))
        c.paint(c.mask([_ellipse(ex + yaw * 2 + 1.2, ey - 1.2, 0.8, 0.8)]) * eye_m, (250, 250, 250), 0.8)
        c.paint(c.mask([top], lines=1.8, closed=False), (25, 20, 20))  # upper lid + lashes
        c.paint(c.mask([bot], lines=0.8, closed=False), skin * 0.6, 0.6)
        # brow
        by = ey - p.brow_gap - n.brow_raise
        bx = np.linspace(-1.15, 1.2, 12)
        brow = np.stack([ex + side * bx * w * 1.05,
                         by - p.brow_arch * (1 - bx ** 2) - bx * p.brow_tilt * 0.25], axis=1)
        thick = p.brow_thick * (1.1 - 0.35 * (bx + 1.15) / 2.35)
        poly = np.concatenate([brow - np.stack([np.zeros_like(thick), thick / 2], 1),
                               (brow + np.stack([np.zeros_like(thick), thick / 2], 1))[::-1]])
        c.paint(c.mask([poly], soft=0.8), hair * 0.8 if p.hair_style != "bald" else skin * 0.35, 0.92)

    # nose: side shadow, tip, nostrils
    nose_tip_y = eye_y + p.nose_len * b * 2.0
    nx, ny = feat(yaw * 4, nose_tip_y)
    side = 1 if n.light_dir[0] < 0 else -1
    bridge = np.array([[fx - side * 3, fy + eye_y + 4], [fx - side * 7 + yaw * 4, ny - 2],
                       [fx - side * 2 + yaw * 4, ny - 2], [fx, fy + eye_y + 4]])
    c.shade(c.mask([bridge], soft=2.5), 0.82)
    c.shade(c.mask([_ellipse(nx, ny + 1, p.nose_w * 0.75, 5)], soft=3), 0.8)
    c.paint(c.mask([_ellipse(nx, ny - 2, p.nose_w * 0.35, 3.5)], soft=2), skin * 1.08 + 8, 0.6)
    for s in (-1, 1):  # alar creases, then nostrils
        c.shade(c.mask([_ellipse(nx + s * p.nose_w * 0.75, ny - 1, 2.2, 5, -s * 15)], soft=1.2), 0.7)
    for s in (-1, 1):
        c.paint(c.mask([_ellipse(nx + s * p.nose_w * 0.42, ny + 1.5, 2.6, 1.5, s * 20)], soft=0.6), skin * 0.3, 0.85)
    c.shade(c.mask([_ellipse(nx, ny + 7, p.nose_w * 0.6, 2.5)], soft=2), 0.85)

    # mouth
    mx, my = feat(yaw * 3, p.mouth_y * b)
    mw = p.mouth_w * (1 + 0.08 * n.smile)
    curve = 3.0 * n.smile
    xs = np.linspace(-1, 1, 15)
    mid = np.stack([mx + xs * mw, my - curve * (xs ** 2 - 0.3)], 1)
    open_h = 6 * n.mouth_open
    upper = np.stack([mx + xs * mw, my - curve * (xs ** 2 - 0.3) - p.lip_thick * 0.8 * (1 - xs ** 2) ** 0.7
                      + 1.2 * np.exp(-(xs * 4) ** 2)], 1)
    lower = np.stack([mx + xs * mw, my - curve * (xs ** 2 - 0.3) + (p.lip_thick + open_h) * (1 - xs ** 2) ** 0.6], 1)
    c.paint(c.mask([np.concatenate([upper, lower[::-1]])], soft=0.7), p.lip)
    if open_h > 1:
        inner = np.stack([mx + xs * mw * 0.85, my - curve * (xs ** 2 - 0.3) + open_h * (1 - xs ** 2) ** 0.8], 1)
        mouth_in = c.mask([np.concatenate([mid[1:-1] + [0, 0.5], inner[1:-1][::-1]])], soft=0.5)
        c.paint(mouth_in, (45, 20, 22))
        c.paint(mouth_in * c.mask([_ellipse(mx, my + 1, mw * 0.6, min(2.5, open_h / 2))]), (225, 220, 210))
    c.paint(c.mask([mid], lines=1.3, closed=False), np.asarray(p.lip) * 0.35, 0.9)
    c.shade(c.mask([_ellipse(mx, my + p.lip_thick + 7, mw * 0.5, 2.5)], soft=2), 0.88)

    # beard and moustache: hair texture inside the lower face
    if p.beard:
        polys = []
        if p.beard in (1, 3):
            polys.append(np.concatenate([np.stack([mx + xs * mw * 1.2, my - p.lip_thick - 2 - 3 * (1 - xs ** 2)], 1),
                                         np.stack([mx + xs * mw * 1.1, my - p.lip_thick - 9 + 0 * xs], 1)[::-1]]))
        if p.beard == 2:
            polys.append(_ellipse(mx, my + p.lip_thick + 14, mw * 0.7, 13))
        m = c.mask(polys, soft=1.5) if polys else None
        if p.beard == 3:  # the face below the cheekbones, fading in
            rows = (np.arange(face.y0, face.y0 + face.a.shape[0], dtype=np.float32) + 0.5) / c.k
            ramp = np.clip((rows - (fy + eye_y + 35)) / 12, 0, 1) * (rows >= fy + p.mouth_y * b - 14)
            low = _Mask(face.y0, face.x0, face.a * ramp[:, None].astype(np.float32))
            m = low if m is None else m.maximum(low)
        assert m is not None
        m = m * face
        tex = cv2.GaussianBlur(rng.standard_normal(m.a.shape, np.float32), (0, 0), 0.8 * c.k)
        c.paint(m, hair * (0.9 + 0.25 * tex[..., None]), 0.85)

    if p.mole is not None:
        c.paint(c.mask([_ellipse(*feat(p.mole[0] * a, p.mole[1] * b), 1.8, 1.8)], soft=0.5), skin * 0.4, 0.9)

    # hair on top
    hl = fy + eye_y - p.hairline * b
    if p.hair_style != "bald":
        cap = _ellipse(cx, cy - 0.1 * b, a * 1.08, b * 0.98, t0=math.pi * 0.97, t1=math.pi * 2.03)
        if p.hair_style == "fringe":
            edge = np.stack([np.linspace(cx + a * 1.02, cx - a * 1.02, 20),
                             hl + 10 + 4 * np.sin(np.linspace(0, 9, 20))], 1)
        elif p.hair_style == "side_part":
            xs2 = np.linspace(1, -1, 20)
            edge = np.stack([cx + xs2 * a * 1.02, hl - 6 + 14 * (xs2 + 1) / 2 * (1 - xs2 ** 2) + 8 * xs2 ** 4], 1)
        else:
            xs2 = np.linspace(1, -1, 20)
            edge = np.stack([cx + xs2 * a * 1.02, hl + 14 * xs2 ** 4], 1)
        # hair at the temples runs down to the ears
        cap = np.concatenate([[[cx - a * 1.02, ear_y - 6]], cap, [[cx + a * 1.02, ear_y - 6]], edge])
        hm = c.mask([cap], soft=1.2)
        if p.hair_style == "curly":
            for _ in range(18):
                ang = rng.uniform(math.pi, 2 * math.pi)
                r = rng.uniform(0.95, 1.12)
                hm = hm.maximum(c.mask([_ellipse(cx + a * r * math.cos(ang), cy - 0.1 * b + b * r * math.sin(ang),
                                                     9, 9)], soft=1))
        if p.hair_style == "long":
            for s in (-1, 1):
                hm = hm.maximum(c.mask([np.array([[cx + s * a * 1.1, ear_y - 20], [cx + s * a * 0.92, ear_y - 20],
                                                      [cx + s * a * 0.95, cy + b * 0.9],
                                                      [cx + s * a * 1.25, cy + b * 1.2]])], soft=1.5))
        strands = cv2.GaussianBlur(rng.standard_normal(hm.a.shape, np.float32), (0, 0),
                                   sigmaX=0.6 * c.k, sigmaY=4 * c.k)
        c.paint(hm, hair * (1 + 0.22 * strands[..., None]))
        lit = lit.maximum(hm)

    # glasses
    if p.glasses:
        gcol = np.asarray(p.glasses_colour)
        rims = []
        for ex, ey in eyes:
            if p.glasses == 1:
                rims.append(_ellipse(ex, ey + 1, p.eye_w * 1.45, p.eye_w * 1.15))
            else:
                w2, h2 = p.eye_w * 1.4, p.eye_w * 0.8
                rims.append(np.array([[ex - w2, ey - h2 + 2], [ex + w2, ey - h2], [ex + w2, ey + h2],
                                      [ex - w2, ey + h2 - 1]]))
        lens = c.mask(rims)
        c.paint(lens, (200, 210, 220), 0.12)
        c.paint(c.mask(rims, lines=1.7), gcol)
        (lx, ly), (rx, ry) = eyes
        c.paint(c.mask([np.array([[lx + p.eye_w * 1.4, ly - 2], [fx, ly - 5], [rx - p.eye_w * 1.4, ry - 2]])],
                       lines=2.0, closed=False), gcol)
        for (ex, ey), s in zip(eyes, (-1, 1)):
            c.paint(c.mask([np.array([[ex + s * p.eye_w * 1.5, ey - 3], [cx + s * a * 1.0, ear_y - 4]])],
                           lines=2.0, closed=False), gcol)

    # lighting: a Lambertian ellipsoid head lit from light_dir, over the head region
    lx, ly = n.light_dir
    lz = math.sqrt(max(0.05, 1 - lx * lx - ly * ly))
    ys, xs_ = lit.box
    uy = np.clip(((np.arange(ys.start, ys.stop, dtype=np.float32) + 0.5) / c.k - cy) / (b * 1.1), -1, 1)[:, None]
    ux = np.clip(((np.arange(xs_.start, xs_.stop, dtype=np.float32) + 0.5) / c.k - fx) / (a * 1.1), -1, 1)[None]
    uz = np.sqrt(np.clip(1 - ux ** 2 - uy ** 2, 0, 1))
    lam = np.clip(ux * lx + uy * ly + uz * lz, 0, 1)
    c.shade(lit, n.light_amb + (1 - n.light_amb) * 1.25 * lam)

    # specular sheen on forehead, nose and cheekbones (what makes features readable on dark skin)
    sheen = [_ellipse(fx + lx * 8, fy - b * 0.55, a * 0.35, b * 0.12), _ellipse(nx, ny - 6, 3, 7)]
    sheen += [_ellipse(*feat(s_ * a * 0.5, b * 0.02), 7, 4) for s_ in (-1, 1)]
    gloss = 0.25 * (1 - float(np.mean(p.skin)) / 255) + 0.04
    c.paint(c.mask(sheen, soft=5) * face, (255, 245, 235), gloss)

    if n.occlusion is not None:
        x0, y0, x1, y1 = n.occlusion
        c.paint(c.mask([np.array([[x0, y0], [x1, y0 + 4], [x1 - 3, y1], [x0 + 2, y1 - 3]])], soft=1.5),
                n.occlusion_colour)

    # camera: global exposure, white balance, similarity transform, blur, noise
    img = c.img * n.brightness * np.array([1 + n.warmth, 1, 1 - n.warmth], np.float32)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), n.angle, n.scale)
    m[:, 2] += (n.dx * c.k, n.dy * c.k)
    img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if n.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), n.blur * c.k)
    # uniform noise of the same std: as good a sensor model here, and much cheaper than normal draws
    img += (rng.random(img.shape, np.float32) - np.float32(0.5)) * np.float32(n.noise * math.sqrt(12))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- data set
@dataclass
class SyntheticSet:
    """A generated identity folder with its View-1 pairs files.

    Attributes:
        root: ``out_dir`` (``root/<identity>/<identity>_NNNN<ext>``).
        identities, train_identities, test_identities: sorted names; train and test are disjoint.
        manifest: the parameters, their hash and per-identity face parameters.
        reused: True when an existing folder with the same parameters was re-used.
    """

    root: Path
    identities: list[str]
    train_identities: list[str]
    test_identities: list[str]
    ext: str
    manifest: dict[str, Any]
    reused: bool

    @property
    def train_pairs_path(self) -> Path:
        """The View-1 pairs file of the training identities."""
        return self.root / TRAIN_PAIRS

    @property
    def test_pairs_path(self) -> Path:
        """The View-1 pairs file of the held-out test identities."""
        return self.root / TEST_PAIRS

    def images(self) -> ImageList:
        """Every generated image (all identities; split with :mod:`distill.data.splits`)."""
        return scan_identity_folder(self.root)

    def train_pairs(self) -> PairsProtocol:
        """The training identities' pairs protocol."""
        return read_pairs(self.train_pairs_path, self.root, ext=self.ext)

    def test_pairs(self) -> PairsProtocol:
        """The test identities' pairs protocol."""
        return read_pairs(self.test_pairs_path, self.root, ext=self.ext)


def synthetic_params(identities: int, images_per_identity: int, seed: int, size: int = 250,
                     test_fraction: float = 0.3, ext: str = ".png") -> dict[str, Any]:
    """The parameters that define a synthetic set, and their hash (``params["hash"]``)."""
    params: dict[str, Any] = {"generator_version": GENERATOR_VERSION, "identities": int(identities),
                              "images_per_identity": int(images_per_identity), "seed": int(seed), "size": int(size),
                              "test_fraction": float(test_fraction), "ext": ext}
    params["hash"] = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return params


def _identity_name(i: int, n: int) -> str:
    return f"person_{i:0{max(4, len(str(n - 1)))}d}"


def _sample_pairs(rng: np.random.Generator, people: list[str], k: int, cap: int
                  ) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, str, int]]]:
    """Up to ``cap`` same and as many different pairs among ``people`` (image numbers 1..k), sorted like LFW."""
    all_same = [(p, i, j) for p in people for i in range(1, k + 1) for j in range(i + 1, k + 1)]
    n = min(cap, len(all_same))
    same = [all_same[t] for t in rng.choice(len(all_same), n, replace=False)]
    diff: set[tuple[str, int, str, int]] = set()
    while len(diff) < n:  # C(people,2)*k^2 >= n always holds here, so this ends quickly
        a, b = sorted(rng.choice(len(people), 2, replace=False))
        diff.add((people[a], int(rng.integers(1, k + 1)), people[b], int(rng.integers(1, k + 1))))
    return sorted(same), sorted(diff)


def _encode(img: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return buf.tobytes()


def _reuse(out_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete folder generated with ``params``, None when ``out_dir`` is absent/empty."""
    if not out_dir.exists():
        return None
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            return None
        raise DatasetError(f"{out_dir} exists and is not a synthetic data set (no {MANIFEST}); "
                           "choose another output folder")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("params", {}).get("hash") != params["hash"]:
        raise DatasetError(f"{out_dir} holds a synthetic set made with other parameters "
                           f"({manifest.get('params')}); delete it or use a folder per parameter hash, "
                           f"e.g. synthetic_dir(cache_dir, ...) -> .../{params['hash']}")
    missing = [f for f in manifest["files"] if not (out_dir / f).is_file()]
    if missing:
        raise DatasetError(f"{out_dir} is incomplete ({len(missing)} files missing, e.g. {missing[0]}); "
                           "delete the folder to regenerate it")
    return manifest


def synthetic_dir(cache_dir: str | Path, **kwargs: Any) -> Path:
    """A folder under ``cache_dir`` named by the parameter hash: each parameter set gets its own."""
    return Path(cache_dir) / "synthetic" / synthetic_params(**kwargs)["hash"]


def generate_synthetic(out_dir: str | Path, identities: int = 120, images_per_identity: int = 8, seed: int = 0,
                       size: int = 250, test_fraction: float = 0.3, *, ext: str = ".png",
                       max_pairs: tuple[int, int] = (1100, 500), progress: bool = True) -> SyntheticSet:
    """Write ``identities`` x ``images_per_identity`` face images plus View-1 pairs files, or re-use them.

    Same arguments -> same bytes. The folder appears atomically (generated in a
    temporary sibling and renamed into place, manifest last); calling again with
    the same arguments re-uses it, with other arguments it is an error.

    Args:
        out_dir: target folder (created; must be absent, empty, or an earlier run with the same arguments).
        identities: number of people (>= 4: two or more for each side of the split).
        images_per_identity: photos per person (>= 2).
        seed: generator seed.
        size: image side in pixels; geometry scales with it (250 = LFW framing).
        test_fraction: share of people held out; ``pairsDevTest.txt`` uses only them,
            ``pairsDevTrain.txt`` only the others.
        ext: ``".png"`` (lossless) or ``".jpg"``.
        max_pairs: (train, test) cap on same pairs (as many different pairs are written), LFW's 1100/500.

    Example::

        syn = generate_synthetic("/tmp/faces", identities=40, images_per_identity=6, seed=1)
        syn.test_pairs().is_same.sum()
    """
    if identities < 4:
        raise ValueError(f"identities must be >= 4 (two per side of the train/test split), got {identities}")
    if images_per_identity < 2:
        raise ValueError(f"images_per_identity must be >= 2 (same-person pairs), got {images_per_identity}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if ext not in (".png", ".jpg"):
        raise ValueError(f"ext must be '.png' or '.jpg', got {ext!r}")
    out_dir = Path(out_dir)
    params = synthetic_params(identities, images_per_identity, seed, size, test_fraction, ext)
    names = [_identity_name(i, identities) for i in range(identities)]
    n_test = int(min(max(round(test_fraction * identities), 2), identities - 2))
    order = np.random.default_rng([seed, 7]).permutation(identities)
    test_ids = sorted(names[i] for i in order[:n_test])
    train_ids = sorted(names[i] for i in order[n_test:])

    manifest = _reuse(out_dir, params)
    if manifest is not None:
        return SyntheticSet(out_dir, names, train_ids, test_ids, ext, manifest, reused=True)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        files: list[str] = []
        people: dict[str, Any] = {}
        bar = progress_bar(total=identities * images_per_identity, desc="synthetic faces", unit="img", disable=not progress)
        for i, name in enumerate(names):
            face = FaceIdentity.sample(np.random.default_rng([seed, i]))
            people[name] = asdict(face)
            (tmp / name).mkdir()
            for k in range(images_per_identity):
                nuisance = Nuisance.sample(np.random.default_rng([seed, i, k, 1]))
                img = render_face(face, nuisance, size, seed=[seed, i, k, 2])
                rel = f"{name}/{name}_{k + 1:04d}{ext}"
                # plain writes are safe here: the whole folder is renamed into place at the end
                (tmp / rel).write_bytes(_encode(img, ext))
                files.append(rel)
                bar.update()
        bar.close()
        rng = np.random.default_rng([seed, 11])
        same, diff = _sample_pairs(rng, train_ids, images_per_identity, max_pairs[0])
        write_pairs(tmp / TRAIN_PAIRS, same, diff)
        same, diff = _sample_pairs(rng, test_ids, images_per_identity, max_pairs[1])
        write_pairs(tmp / TEST_PAIRS, same, diff)
        manifest = {"params": params, "train_identities": train_ids, "test_identities": test_ids,
                    "files": files, "people": people}
        atomic_write_json(tmp / MANIFEST, manifest)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked by _reuse); a non-empty one makes rmdir fail loudly
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # another process finished the same set first: use theirs if it matches
            existing = _reuse(out_dir, params)
            if existing is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return SyntheticSet(out_dir, names, train_ids, test_ids, ext, existing, reused=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SyntheticSet(out_dir, names, train_ids, test_ids, ext, manifest, reused=False)

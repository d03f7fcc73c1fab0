"""Robust image decoding: any common file -> uint8 RGB ``(H, W, 3)``, or a typed error with a reason.

Handles grey, palette, grey+alpha/RGBA (alpha composited on black), 16-bit
PNG (scaled to 8 bits, not clipped), CMYK JPEG, PGM/PPM and EXIF rotation.
Corrupt, truncated, empty and non-image files raise :class:`ImageReadError`
whose message is one line: the path and the reason.

Decompression bombs: the size is checked from the header *before* any pixel
is decoded. JPEGs larger than ``max_pixels`` are accepted and decoded directly
at a reduced scale (libjpeg DCT scaling via ``PIL.Image.draft``: 1/2, 1/4 or
1/8, so the full image never sits in memory); any other format over the limit
is refused.

Every call that opens a file counts as one decode (:func:`decode_count`), so
callers (the alignment cache) can prove that a pass decoded nothing.

Example::

    from distill.data.imageio import load_rgb, ImageReadError
    try:
        img = load_rgb("lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg")   # (250, 250, 3) uint8
    except ImageReadError as e:
        print(e.reason)
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: default pixel limit (36 MP, e.g. 6000x6000); larger JPEGs are decoded at 1/2..1/8 scale
MAX_PIXELS = 36_000_000

_lock = threading.Lock()
_decodes = 0


class ImageReadError(Exception):
    """A file could not be turned into an RGB image. ``str(e)`` is one line: ``path: reason``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")


def decode_count() -> int:
    """Number of files :func:`load_rgb` has opened in this process (for cache tests and reports)."""
    return _decodes


def _count() -> None:
    global _decodes
    with _lock:
        _decodes += 1


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 RGB array. Alpha is composited on black (premultiplied)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(im).astype(np.uint16)
        g = (a >> 8).astype(np.uint8)  # 16-bit -> 8-bit by scale, not clip
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "I":  # 32-bit int grey (some 16-bit PNG/TIFF decoders): scale by the observed range
        a = np.asarray(im).astype(np.int64)
        hi = 65535 if a.max(initial=0) > 255 else 255
        g = (np.clip(a, 0, hi) * 255 // hi).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        hi = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        g = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    if mode != "RGB":
        im = im.convert("RGB")  # L, 1, P, CMYK (PIL undoes Adobe inversion), YCbCr, ...
    return np.asarray(im, dtype=np.uint8)


def load_rgb(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to a C-contiguous uint8 ``(H, W, 3)`` RGB array.

    Raises :class:`ImageReadError` (one-line reason) for a missing, empty,
    corrupt, truncated or non-image file, or an image over ``max_pixels`` that
    cannot be decoded at reduced scale (only JPEG can).
    """
    path = Path(path)
    _count()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot stat file: {e.strerror or e}") from None
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # our own limit below replaces PIL's warning; PIL still raises past 2x its limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ImageReadError(path, f"invalid image size {w}x{h}")
                if w * h > max_pixels:
                    if im.format != "JPEG":
                        raise ImageReadError(path, (
                            f"image is {w}x{h} = {w * h / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit "
                            f"(decompression-bomb guard; only JPEG can be decoded at reduced scale). "
                            f"Downscale the file below {max_pixels / 1e6:.0f} MP, or save it as JPEG"))
                    target = _draft_target(w, h, max_pixels)
                    if target is None:
                        raise ImageReadError(path, (
                            f"image is {w}x{h} = {w * h / 1e6:.0f} MP: over the {max_pixels / 1e6:.0f} MP limit "
                            f"even at 1/8 scale (decompression-bomb guard)"))
                    im.draft("RGB" if im.mode not in ("L", "CMYK") else im.mode, target)
                im.load()
                # in place: the default returns a copy even when there is nothing to rotate (10 ms at 6 MP)
                ImageOps.exif_transpose(im, in_place=True)
                return np.ascontiguousarray(_to_rgb(im))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image (format not recognised)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"decompression bomb refused: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageReadError(path, f"truncated image ({msg})") from None
        raise ImageReadError(path, f"corrupt image ({type(e).__name__}: {msg})") from None
    except MemoryError:
        raise ImageReadError(path, "out of memory while decoding") from None


def _draft_target(w: int, h: int, max_pixels: int) -> tuple[int, int] | None:
    """Smallest JPEG DCT down-scaling (1/2, 1/4, 1/8) that brings ``w*h`` under ``max_pixels``."""
    for scale in (2, 4, 8):
        tw, th = -(-w // scale), -(-h // scale)
        if tw * th <= max_pixels:
            return tw, th
    return None

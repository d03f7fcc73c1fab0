"""load_rgb on real files of every awkward kind, written into tmp_path."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from distill.data import imageio
from distill.data.imageio import ImageReadError, decode_count, load_rgb


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(np.uint8)


def _check(a: np.ndarray, h: int, w: int) -> None:
    assert a.dtype == np.uint8 and a.shape == (h, w, 3) and a.flags.c_contiguous


def test_rgb_jpeg_and_png_roundtrip(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    png = load_rgb(tmp_path / "a.png")
    _check(png, 48, 64)
    assert np.array_equal(png, rgb)
    jpg = load_rgb(tmp_path / "a.jpg")
    _check(jpg, 48, 64)
    assert np.abs(jpg.astype(int) - rgb).mean() < 3


def test_grey_palette_and_pgm(tmp_path):
    grey = _gradient()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    Image.fromarray(grey, "L").save(tmp_path / "g.pgm")
    for name in ("g.png", "g.pgm"):
        a = load_rgb(tmp_path / name)
        _check(a, 48, 64)
        assert np.array_equal(a[..., 0], grey) and np.array_equal(a[..., 1], grey) and np.array_equal(a[..., 2], grey)
    pal = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    p = load_rgb(tmp_path / "p.png")
    _check(p, 48, 64)
    assert np.array_equal(p, np.asarray(pal.convert("RGB")))


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :10, 3] = 255   # opaque half keeps its colour
    rgba[:, 10:, 3] = 0     # transparent half becomes black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = load_rgb(tmp_path / "a.png")
    _check(a, 10, 20)
    assert (a[:, :10] == 200).all() and (a[:, 10:] == 0).all()
    la = np.stack([np.full((10, 20), 100, np.uint8), np.full((10, 20), 128, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.abs(load_rgb(tmp_path / "la.png").astype(int) - 50).max() <= 1


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    g16 = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # up to ~64k
    Image.fromarray(g16).save(tmp_path / "g16.png")
    a = load_rgb(tmp_path / "g16.png")
    _check(a, 48, 64)
    assert np.array_equal(a[..., 0], (g16 >> 8).astype(np.uint8))
    assert a.max() > 200  # clipping to 255 would saturate; scaling keeps the ramp
    import cv2
    rgb16 = (_gradient().astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # real 16-bit RGB PNG (cv2 writes BGR)
    b = load_rgb(tmp_path / "rgb16.png")
    assert np.array_equal(b, _gradient())


def test_cmyk_jpeg(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    a = load_rgb(tmp_path / "c.jpg")
    _check(a, 48, 64)
    assert np.abs(a.astype(int) - rgb).mean() < 6


def test_exif_rotation_is_applied(tmp_path):
    im = Image.fromarray(_gradient())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif)
    _check(load_rgb(tmp_path / "r.jpg"), 64, 48)


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "truncated"),
    ("garbage_jpeg", "truncated"),
    ("broken_png", "corrupt"),
    ("missing", "not found"),
])
def test_bad_files_raise_typed_one_line_errors(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.jpg"
    buf = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n" * 10)
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage_jpeg":  # valid JPEG signature, then noise
        path.write_bytes(data[:4] + np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "broken_png":  # flipped byte inside the compressed pixel data
        png = io.BytesIO()
        Image.fromarray(_gradient(50, 50)).save(png, "PNG")
        raw = bytearray(png.getvalue())
        raw[raw.find(b"IDAT") + 10] ^= 0xFF
        path = tmp_path / "broken.png"
        path.write_bytes(bytes(raw))
    before = decode_count()
    with pytest.raises(ImageReadError) as ei:
        load_rgb(path)
    assert decode_count() == before + 1
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg and reason in ei.value.reason, msg


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path):
    # 10000x10000 1-bit PNG: a few KB on disk, 300 MB if decoded to RGB
    Image.new("1", (10000, 10000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    with pytest.raises(ImageReadError) as ei:
        load_rgb(tmp_path / "bomb.png")
    assert "10000x10000" in ei.value.reason and "limit" in ei.value.reason


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path):
    Image.new("L", (10000, 10000), 90).save(tmp_path / "big.jpg", quality=50)
    a = load_rgb(tmp_path / "big.jpg")  # default 36 MP limit -> 1/2 scale by DCT scaling
    assert a.shape == (5000, 5000, 3) and a.shape[0] * a.shape[1] <= imageio.MAX_PIXELS
    assert abs(int(a[2500, 2500, 0]) - 90) <= 2
    small = load_rgb(tmp_path / "big.jpg", max_pixels=2_000_000)  # needs 1/8
    assert small.shape == (1250, 1250, 3)
    with pytest.raises(ImageReadError, match="even at 1/8 scale"):
        load_rgb(tmp_path / "big.jpg", max_pixels=1_000_000)


def test_real_lfw_image(lfw_root):
    a = load_rgb(lfw_root / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    _check(a, 250, 250)
    assert 40 < a.mean() < 220

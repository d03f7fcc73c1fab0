"""insightface .bin validation sets (distill.data.binset): small .bin files built here from real LFW crops in
the field's layout (pair i = images 2i, 2i+1), Python 2 / numpy-array / protocol variants, refusal of
pickles that would run code (without running it), malformed and truncated files, the KFold layout and
flip test-time augmentation."""
from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from distill.data.binset import BinFormatError, BinSet, kfold_layout, load_bin
from distill.data.pairs import read_pairs
from distill.errors import InputError, MissingInputError

try:  # compared against when installed; hand-computed layouts are checked either way
    from sklearn.model_selection import KFold
except ImportError:  # pragma: no cover - depends on the install
    KFold = None

N_SAME = N_DIFF = 150


def _crop(path: Path) -> np.ndarray:
    """A 250x250 LFW image -> its middle 150x150 -> 112x112 (BGR, as cv2 reads it)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    h, w = img.shape[:2]
    y, x = (h - 150) // 2, (w - 150) // 2
    return cv2.resize(img[y:y + 150, x:x + 150], (112, 112), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def lfw_bins(lfw_root: Path) -> tuple[list[bytes], list[bool]]:
    """300 DevTest pairs (150 same, then 150 different) as JPEG bytes in the field's layout + flags."""
    pairs = read_pairs(lfw_root / "pairsDevTest.txt", lfw_root / "lfw-deepfunneled")
    chosen = list(range(N_SAME)) + list(range(len(pairs) // 2, len(pairs) // 2 + N_DIFF))
    bins: list[bytes] = []
    cache: dict[str, bytes] = {}
    for p in chosen:
        for rel in (pairs.rel_path_a[p], pairs.rel_path_b[p]):
            if rel not in cache:
                ok, enc = cv2.imencode(".jpg", _crop(pairs.images_root / rel), [cv2.IMWRITE_JPEG_QUALITY, 90])
                assert ok
                cache[rel] = enc.tobytes()
            bins.append(cache[rel])
    return bins, [bool(pairs.is_same[p]) for p in chosen]


def _write(path: Path, obj: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _rgb(buf: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes and str as Python 2 does its str (SHORT_BINSTRING/BINSTRING), at protocol 2, and names
    numpy's module as numpy 1.x did: the file Python 2 insightface wrote."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("ascii"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_dumps(obj: Any) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    data = f.getvalue().replace(b"numpy._core.", b"numpy.core.")
    assert pickle.SHORT_BINSTRING in data or pickle.BINSTRING in data
    return data


# --- real crops -------------------------------------------------------------------------------------------

def test_lfw_bin_loads_decodes_and_pairs(lfw_bins: tuple[list[bytes], list[bool]], tmp_path: Path) -> None:
    bins, issame = lfw_bins
    vs = load_bin(_write(tmp_path / "lfw.bin", (bins, issame)))
    assert isinstance(vs, BinSet) and vs.path == tmp_path / "lfw.bin"
    assert len(vs) == N_SAME + N_DIFF and vs.num_images == 2 * len(vs)
    assert vs.issame.dtype == bool and vs.issame.shape == (len(vs),)
    np.testing.assert_array_equal(vs.issame, issame)
    assert vs.issame[:N_SAME].all() and not vs.issame[N_SAME:].any()
    a, b = vs.pair_indices()
    assert a.dtype == b.dtype == np.int64
    np.testing.assert_array_equal(a, np.arange(len(vs)) * 2)
    np.testing.assert_array_equal(b, np.arange(len(vs)) * 2 + 1)
    for i in range(vs.num_images):  # every image: the same bytes, decoded as cv2 decodes them, RGB
        assert vs.encoded(i) == bins[i]
        img = vs.image(i)
        assert img.dtype == np.uint8 and img.shape == (112, 112, 3) and img.flags.c_contiguous
        np.testing.assert_array_equal(img, _rgb(bins[i]))
    stack = vs.images(a[:5])
    assert stack.shape == (5, 112, 112, 3)
    np.testing.assert_array_equal(stack[3], _rgb(bins[6]))
    np.testing.assert_array_equal(vs.image(-1), _rgb(bins[-1]))
    assert vs.images([]).shape == (0, 0, 0, 3)
    with pytest.raises(IndexError, match="out of range"):
        vs.image(vs.num_images)


def test_layout_variants_load_alike(lfw_bins: tuple[list[bytes], list[bool]], tmp_path: Path) -> None:
    """Python 3 protocol 2 (bytes via _codecs.encode), Python 2 str bins, numpy uint8 bins (1-D and cv2's
    (K, 1)) at every protocol, numpy bools and 0/1 ints: the same set."""
    bins, issame = list(lfw_bins[0][:40]), lfw_bins[1][:20]
    arrays = [np.frombuffer(b, np.uint8).copy() for b in bins]
    variants: dict[str, bytes] = {
        "py3-proto2": pickle.dumps((bins, issame), protocol=2),
        "py2-str": _py2_dumps((bins, issame)),
        "py2-numpy": _py2_dumps((arrays, [np.bool_(f) for f in issame])),
        "bytearray-tuple": pickle.dumps([[bytearray(b) for b in bins], tuple(int(f) for f in issame)]),
        "bytearray-proto2": pickle.dumps(([bytearray(b) for b in bins], issame), protocol=2),
        "bytearray-proto3": pickle.dumps(([bytearray(b) for b in bins], issame), protocol=3),
        "column-arrays": pickle.dumps(([a.reshape(-1, 1) for a in arrays], issame), protocol=4),
    }
    for proto in (2, 3, 4, 5):
        variants[f"numpy-proto{proto}"] = pickle.dumps(
            (arrays, [np.bool_(f) for f in issame]), protocol=proto)
    assert b"_codecs" in variants["py3-proto2"] and b"numpy.core.multiarray" in variants["py2-numpy"]
    assert b"_frombuffer" in variants["numpy-proto5"]
    for name, data in variants.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
        vs = load_bin(tmp_path / f"{name}.bin")
        assert len(vs) == 20, name
        np.testing.assert_array_equal(vs.issame, issame, err_msg=name)
        assert [vs.encoded(i) for i in range(40)] == bins, name
        assert all(type(vs.encoded(i)) is bytes for i in range(40)), name
        np.testing.assert_array_equal(vs.image(7), _rgb(bins[7]), err_msg=name)


def test_grey_and_png_images_decode_to_rgb(tmp_path: Path) -> None:
    grey = (np.arange(112 * 112) % 251).astype(np.uint8).reshape(112, 112)
    colour = np.dstack([grey, 255 - grey, grey // 2])
    enc = [cv2.imencode(ext, im)[1].tobytes() for ext, im in ((".png", grey), (".jpg", grey),
                                                              (".png", colour), (".png", colour))]
    vs = load_bin(_write(tmp_path / "g.bin", (enc, [False, True])))
    np.testing.assert_array_equal(vs.image(0), np.repeat(grey[..., None], 3, axis=2))  # lossless grey PNG
    assert vs.image(1).shape == (112, 112, 3)
    np.testing.assert_array_equal(vs.image(2), colour[:, :, ::-1])  # BGR written -> RGB read


# --- refusal without running anything ---------------------------------------------------------------------

class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return builtins.eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_code_carrying_pickles_are_refused_unrun(lfw_bins: tuple[list[bytes], list[bool]], tmp_path: Path,
                                                 protocol: int) -> None:
    bins, issame = lfw_bins[0][:4], lfw_bins[1][:2]
    marker = tmp_path / "pwned"
    system = rf"{os.system.__module__}\.system"  # posix.system on Linux
    builtin = "builtins" if protocol >= 3 else "__builtin__"  # pickle writes Python 2's name below protocol 3
    cases = [
        (system, (bins + [_Shell(marker)], issame + [True])),      # after valid images
        (rf"{builtin}\.eval", (bins[:2] + [_Eval(marker)] + bins[3:], issame)),
        (system, _Shell(marker)),                                  # the whole file is the payload
        (rf"{builtin}\.eval", (bins, [True, _Eval(marker)])),     # among the flags
    ]
    for glob, obj in cases:
        f = _write(tmp_path / "evil.bin", obj, protocol=protocol)
        with pytest.raises(BinFormatError, match=f"global {glob},") as exc:
            load_bin(f)
        assert str(f) in str(exc.value) and "nothing from the file was run" in str(exc.value)
        assert not marker.exists()
        with pytest.raises(BinFormatError):  # the same refusal on every call
            load_bin(f)
    assert isinstance(exc.value, InputError) and isinstance(exc.value, ValueError)
    pickle.loads(f.read_bytes())  # the control: an unrestricted load of the last file runs it
    assert marker.exists()


def test_py2_builtin_and_other_numpy_globals_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    f = tmp_path / "py2.bin"  # Python 2 spelling: fix_imports would map __builtin__ to builtins
    f.write_bytes(b"c__builtin__\neval\n(S\"__import__('pathlib').Path(%r).touch()\"\ntR." % str(marker).encode())
    with pytest.raises(BinFormatError, match=r"global __builtin__\.eval"):
        load_bin(f)
    f.write_bytes(b"cnumpy\nload\n(S'x.npy'\ntR.")
    with pytest.raises(BinFormatError, match=r"global numpy\.load"):
        load_bin(f)
    f.write_bytes(b"cnumpy.core.multiarray\n_reconstruct\n(cos\nsystem\nI0\ntR.")  # allowed callable, bad arg
    with pytest.raises(BinFormatError, match=r"global os\.system"):
        load_bin(f)
    f.write_bytes(b"c__builtin__\nbytearray\n(I1000000000000\ntR.")  # bytearray(n) would allocate n bytes
    with pytest.raises(BinFormatError, match="bytearray is allowed only from bytes"):
        load_bin(f)
    assert not marker.exists()


def test_build_cannot_modify_numpy(tmp_path: Path) -> None:
    """A BUILD whose state sets attributes on an allowed global fails and leaves numpy untouched."""
    import numpy._core.numeric as numeric

    before = numeric._frombuffer.__defaults__
    f = tmp_path / "build.bin"
    for mod in (b"numpy._core.numeric\n_frombuffer", b"numpy\nndarray", b"numpy\ndtype"):
        f.write_bytes(b"c" + mod + b"\n(N(dS'__defaults__'\n(I1\ntstb.")
        with pytest.raises(BinFormatError, match="not a readable pickle"):
            load_bin(f)
    assert numeric._frombuffer.__defaults__ == before
    np.testing.assert_array_equal(np.frombuffer(b"\x01\x02", np.uint8), [1, 2])


# --- malformed files --------------------------------------------------------------------------------------

def test_wrong_structures_are_refused(lfw_bins: tuple[list[bytes], list[bool]], tmp_path: Path) -> None:
    bins, issame = lfw_bins[0][:6], lfw_bins[1][:3]
    cases = {
        "holds a dict": {"bins": bins, "issame": issame},
        "3-element tuple": (bins, issame, issame),
        "6 images for 2 pairs": (bins, issame[:2]),
        r"bins\[0\] is a str": (["a", "b", "c", "d", "e", "f"], issame),
        r"bins\[0\] is a int64 array": ([np.arange(4)] + bins[1:], issame),
        r"issame_list\[2\] is 2": (bins, [True, False, 2]),
        r"issame_list\[0\] is 'yes'": (bins, ["yes", True, False]),
        "issame_list is a ndarray": (bins, np.array(issame)),
        "no pairs": ([], []),
    }
    for i, (msg, obj) in enumerate(cases.items()):
        f = _write(tmp_path / f"bad{i}.bin", obj)
        with pytest.raises(BinFormatError, match=msg) as exc:
            load_bin(f)
        assert str(f) in str(exc.value) and "build_eval_pack.py" in str(exc.value)


def test_truncated_empty_missing_and_undecodable(lfw_bins: tuple[list[bytes], list[bool]], tmp_path: Path) -> None:
    bins, issame = lfw_bins[0][:20], lfw_bins[1][:10]
    whole = pickle.dumps((bins, issame), protocol=pickle.HIGHEST_PROTOCOL)
    for cut in (len(whole) // 3, len(whole) - 1, 1):
        (tmp_path / "t.bin").write_bytes(whole[:cut])
        with pytest.raises(BinFormatError, match=r"t\.bin: it is (truncated|not a readable pickle)"):
            load_bin(tmp_path / "t.bin")
    (tmp_path / "text.bin").write_bytes(b"this is not a pickle\n")
    with pytest.raises(BinFormatError, match="not a readable pickle"):
        load_bin(tmp_path / "text.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(BinFormatError, match="empty"):
        load_bin(tmp_path / "empty.bin")
    with pytest.raises(MissingInputError, match="nope.bin"):
        load_bin(tmp_path / "nope.bin")
    broken = bins[:3] + [bins[3][: len(bins[3]) // 8], b"", b"GIF89a not really"] + bins[6:]
    vs = load_bin(_write(tmp_path / "broken.bin", (broken, issame)))  # decoding is lazy: loads
    for i in (4, 5):
        with pytest.raises(BinFormatError, match=rf"image {i} \(pair 2, \d+ bytes\) cannot be decoded"):
            vs.image(i)
    with pytest.raises(BinFormatError, match="image 5"):
        vs.images([0, 1, 5])
    png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    for side, msg in ((10000, "claims 10000x10000 pixels"), (20000, "refused as a decompression bomb")):
        ihdr = b"IHDR" + struct.pack(">II", side, side) + png[24:29]  # IHDR claims side x side, valid CRC
        huge = png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]
        vs = load_bin(_write(tmp_path / "bomb.bin", ([huge, bins[1]], [True])))
        with pytest.raises(BinFormatError, match=msg):
            vs.image(0)


# --- folds ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,sizes", [(300, 10, [30] * 10), (6000, 10, [600] * 10), (303, 10, [31] * 3 + [30] * 7),
                                       (7, 3, [3, 2, 2]), (10, 10, [1] * 10), (19, 10, [2] * 9 + [1])])
def test_kfold_layout_matches_sklearn(n: int, k: int, sizes: list[int]) -> None:
    fold = kfold_layout(n, k)
    assert fold.dtype == np.int64 and fold.shape == (n,)
    np.testing.assert_array_equal(np.bincount(fold, minlength=k), sizes)
    assert (np.diff(fold) >= 0).all() and (np.diff(fold) <= 1).all()  # consecutive blocks in order
    np.testing.assert_array_equal(fold, np.repeat(np.arange(k), sizes))
    if KFold is not None:
        ref = np.empty(n, dtype=np.int64)
        for f, (_, test) in enumerate(KFold(n_splits=k, shuffle=False).split(np.arange(n))):
            ref[test] = f
        np.testing.assert_array_equal(fold, ref)


def test_kfold_layout_default_and_errors() -> None:
    np.testing.assert_array_equal(kfold_layout(20), np.repeat(np.arange(10), 2))
    for n, k in ((5, 10), (10, 1), (10, 0)):
        with pytest.raises(ValueError):
            kfold_layout(n, k)

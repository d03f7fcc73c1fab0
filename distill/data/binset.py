"""insightface ``.bin`` validation sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ``calfw.bin``,
``cplfw.bin``), loaded without running code from the file.

Format (insightface ``recognition/arcface_mxnet/common/build_eval_pack.py`` writes it, ``load_bin`` in
``recognition/arcface_torch/eval/verification.py`` reads it): a pickle of ``(bins, issame_list)``, where

* ``bins`` is a list of 2N encoded images (JPEG/PNG bytes of 112x112 crops aligned to the ArcFace
  template); pair ``i`` is images ``2i`` and ``2i + 1``. Each element is ``bytes`` (a ``str`` in
  Python 2 files) or a uint8 numpy array of the encoded bytes (``cv2.imencode``'s output, 1-D or
  ``(K, 1)``);
* ``issame_list`` is a list of N flags: ``bool``, ``numpy.bool_`` or the ints 0/1.

Files are written with ``pickle.HIGHEST_PROTOCOL``: protocol 2 from Python 2 (read here, like
insightface does, with ``encoding="bytes"`` when the default ASCII decoding fails), up to 5 from
Python 3 (numpy arrays then arrive through ``numpy._core.numeric._frombuffer``).

Safety: :func:`load_bin` unpickles with a restricted ``Unpickler`` whose ``find_class`` hands out only
what that structure needs (numpy array, dtype and scalar reconstruction, ``bytearray`` from bytes, and
a Latin-1-only ``_codecs.encode`` for Python 3 protocol-2 bytes), each as a stand-in object that a crafted ``BUILD``
cannot modify. Any other global is refused with :class:`BinFormatError` naming the file and the global,
before anything from the file runs. The loaded object must then match the structure exactly.

Images stay encoded in memory (a 6000-image ``lfw.bin`` is ~30 MB); :meth:`BinSet.image` decodes one
with OpenCV on demand.

Example::

    from distill.data.binset import load_bin, kfold_layout

    vs = load_bin("faces_emore/lfw.bin")
    len(vs), vs.num_images, vs.issame.mean()                  # 6000, 12000, 0.5
    a, b = vs.pair_indices()                                  # (0, 2, 4, ...), (1, 3, 5, ...)
    faces = vs.images(range(8))                               # (8, 112, 112, 3) uint8 RGB
    fold = kfold_layout(len(vs))                              # 10 consecutive blocks of 600 pairs
"""
from __future__ import annotations

import io
import operator
import pickle
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from distill.data.imageio import MAX_PIXELS
from distill.errors import InputError, MissingInputError

__all__ = ["BinFormatError", "BinSet", "load_bin", "kfold_layout"]

#: images whose header claims more pixels than imageio's limit are refused (decompression-bomb guard; the
#: field's sets are 112x112)

_REMEDY = ("An insightface validation .bin is a pickle of (bins, issame_list): 2N encoded face crops (pair i = "
           "images 2i and 2i+1) and N same/different flags. Use a .bin from a source you trust: regenerate it with "
           "insightface's recognition/arcface_mxnet/common/build_eval_pack.py, or download it again (the training "
           "sets listed in insightface's recognition/_datasets_/README.md ship them, e.g. faces_emore.zip holds "
           "lfw.bin, cfp_fp.bin and agedb_30.bin)")


class BinFormatError(InputError, ValueError):
    """A ``.bin`` validation set is not the insightface format, is truncated, asks the unpickler for a
    global it refuses, or holds an undecodable image; the message names the file and what is wrong."""


def _error(path: Path, what: str) -> BinFormatError:
    return BinFormatError(f"{path}: {what}. {_REMEDY}")


# --- the restricted unpickler ---------------------------------------------------------------------------
# Each allowed global is handed out as an instance of a class with empty __slots__: no __dict__ and no
# settable attributes, so a crafted BUILD opcode cannot alter numpy's functions through the pickle.

class _NdarrayType:
    """Stands in for ``numpy.ndarray``: only :class:`_Reconstruct` accepts it (as its subtype)."""

    __slots__ = ()


_NDARRAY = _NdarrayType()


class _Reconstruct:
    """``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)``: an empty array that ``BUILD``
    then fills through ``ndarray.__setstate__`` (numpy's pickle protocol <= 4)."""

    __slots__ = ()

    def __call__(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError(f"_reconstruct of {type(subtype).__name__}, not numpy.ndarray")
        return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


class _FromBuffer:
    """``numpy._core.numeric._frombuffer(buf, dtype, shape, order, axis_order=None)`` (protocol 5)."""

    __slots__ = ()

    def __call__(self, buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
        if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("_frombuffer needs a bytes buffer and a numpy dtype")
        array = np.frombuffer(buf, dtype=dtype)
        if order == "K" and axis_order is not None:
            return array.reshape(shape, order="C").transpose(axis_order)
        return array.reshape(shape, order=order)


class _Scalar:
    """``numpy.core.multiarray.scalar(dtype, data)``: a numpy scalar (e.g. ``numpy.bool_``)."""

    __slots__ = ()

    def __call__(self, dtype: Any, data: Any = None) -> Any:
        if isinstance(data, str):  # a Python 2 str read with the default ASCII decoding
            data = data.encode("latin-1")
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy scalar needs a plain dtype and its bytes")
        return np.frombuffer(data, dtype=dtype, count=1)[0]


class _CodecsEncode:
    """``_codecs.encode(text, "latin1")``: how Python 3 writes ``bytes`` at pickle protocol 2."""

    __slots__ = ()

    def __call__(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1":
            raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 text")
        return text.encode("latin-1")


class _ByteArray:
    """``bytearray(data)`` for a bins element pickled at protocol 2-4 (bytes, or Python 2's latin-1 str);
    never ``bytearray(n)``, which would allocate n bytes on the file's say-so."""

    __slots__ = ()

    def __call__(self, data: Any = b"", encoding: Any = None) -> bytearray:
        if isinstance(data, str) and str(encoding).lower().replace("-", "") == "latin1":
            data = data.encode("latin-1")
        if not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("bytearray is allowed only from bytes")
        return bytearray(data)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _CodecsEncode(),
    ("builtins", "bytearray"): _ByteArray(),
    ("__builtin__", "bytearray"): _ByteArray(),  # Python 2's name, and Python 3's at protocol 2
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _Reconstruct()
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _Scalar()
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _FromBuffer()


class _SafeUnpickler(pickle.Unpickler):
    """An ``Unpickler`` whose ``find_class`` resolves only :data:`_ALLOWED`; anything else raises
    :class:`BinFormatError` naming the file and the global, before it is imported or called."""

    def __init__(self, data: bytes, path: Path, encoding: str) -> None:
        super().__init__(io.BytesIO(data), encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _error(self._path, (
                f"refused to load it: the pickle asks for the global {module}.{name}, which a validation .bin "
                f"never holds (only numpy arrays/bools and bytes are allowed); nothing from the file was run. "
                f"It is not an insightface .bin, or it was altered")) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _error(self._path, "refused to load it: the pickle holds a persistent id, which a .bin never has")


def _unpickle(path: Path, data: bytes) -> Any:
    """The file's object, unpickled like insightface's ``load_bin`` (default ASCII strings, then
    ``encoding="bytes"`` for Python 2 files) but through :class:`_SafeUnpickler`."""
    for encoding in ("ASCII", "bytes"):
        try:
            return _SafeUnpickler(data, path, encoding).load()
        except BinFormatError:
            raise
        except UnicodeDecodeError:
            if encoding == "bytes":
                raise _error(path, "it is not a readable pickle (undecodable text)") from None
        except EOFError:
            raise _error(path, f"it is truncated (the pickle ends early; {len(data)} bytes)") from None
        except Exception as e:  # untrusted input: any failure of the unpickler is a format error
            msg = str(e) or type(e).__name__
            what = "truncated" if "truncated" in msg.lower() else "not a readable pickle"
            raise _error(path, f"it is {what} ({type(e).__name__}: {msg})") from None
    raise AssertionError("unreachable")


# --- structure --------------------------------------------------------------------------------------------

def _as_bytes(path: Path, i: int, b: Any) -> bytes:
    """``bins[i]`` as bytes: bytes, bytearray, or a uint8 array of shape (K,) or (K, 1)."""
    if isinstance(b, bytes):
        return b
    if isinstance(b, bytearray):
        return bytes(b)
    if isinstance(b, np.ndarray):
        if b.dtype == np.uint8 and (b.ndim == 1 or (b.ndim == 2 and b.shape[1] == 1)):
            return b.tobytes()
        raise _error(path, f"bins[{i}] is a {b.dtype} array of shape {b.shape}, not the encoded image's bytes "
                           f"(a 1-D uint8 array)")
    raise _error(path, f"bins[{i}] is a {type(b).__name__}, not an encoded image (bytes or a uint8 array)")


def _as_flag(path: Path, i: int, f: Any) -> bool:
    """``issame_list[i]`` as a bool: bool, numpy bool, or an int 0/1."""
    if isinstance(f, (bool, np.bool_)):
        return bool(f)
    if isinstance(f, (int, np.integer)) and int(f) in (0, 1):
        return bool(f)
    raise _error(path, f"issame_list[{i}] is {f!r} ({type(f).__name__}), not a same/different flag "
                       f"(a bool or 0/1)")


def _check_structure(path: Path, obj: Any) -> tuple[list[bytes], np.ndarray]:
    """``(bins, issame)`` from the unpickled object, or :class:`BinFormatError` saying what differs."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        kind = f"a {len(obj)}-element {type(obj).__name__}" if isinstance(obj, (tuple, list)) else \
            f"a {type(obj).__name__}"
        raise _error(path, f"it holds {kind}, not the pair (bins, issame_list)")
    bins, issame = obj
    for name, value in (("bins", bins), ("issame_list", issame)):
        if not isinstance(value, (list, tuple)):
            raise _error(path, f"{name} is a {type(value).__name__}, not a list")
    if not issame:
        raise _error(path, "it holds no pairs (issame_list is empty)")
    if len(bins) != 2 * len(issame):
        raise _error(path, f"it holds {len(bins)} images for {len(issame)} pairs; a .bin holds 2 images per "
                           f"pair ({2 * len(issame)})")
    encoded = [_as_bytes(path, i, b) for i, b in enumerate(bins)]
    flags = np.array([_as_flag(path, i, f) for i, f in enumerate(issame)], dtype=bool)
    return encoded, flags


# --- the set ----------------------------------------------------------------------------------------------

class BinSet:
    """A loaded ``.bin`` validation set: N pairs over 2N encoded images, decoded on demand.

    Attributes:
        path: the file it was read from.
        issame: bool ``(N,)``, True where pair ``i`` (images ``2i``, ``2i + 1``) shows one person.
    """

    __slots__ = ("path", "issame", "_encoded")

    def __init__(self, path: Path, encoded: list[bytes], issame: np.ndarray) -> None:
        if len(encoded) != 2 * len(issame):
            raise ValueError(f"{len(encoded)} images for {len(issame)} pairs (need 2 per pair)")
        self.path = Path(path)
        self.issame = np.asarray(issame, dtype=bool)
        self._encoded = encoded

    def __len__(self) -> int:
        """Number of pairs N."""
        return len(self.issame)

    def __repr__(self) -> str:
        return f"BinSet({str(self.path)!r}, pairs={len(self)}, same={int(self.issame.sum())})"

    @property
    def num_images(self) -> int:
        """Number of images, 2N."""
        return len(self._encoded)

    def _index(self, i: Any) -> int:
        k = operator.index(i)
        n = len(self._encoded)
        if not -n <= k < n:
            raise IndexError(f"image {k} out of range: {self.path} holds {n} images")
        return k % n

    def encoded(self, i: int) -> bytes:
        """The encoded bytes (JPEG/PNG) of image ``i`` (``0 <= i < 2N``; negative counts from the end).

        Raises:
            IndexError: ``i`` is out of range.
        """
        return self._encoded[self._index(i)]

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` decoded with ``cv2.imdecode(..., IMREAD_COLOR)``: uint8 RGB ``(H, W, 3)`` (112x112 for
        the field's sets; grey images come back with 3 equal channels). Not resized: insightface's
        ``load_bin`` resizes the short side to 112 when the width differs.

        Raises:
            IndexError: ``i`` is out of range.
            BinFormatError: the bytes are not a decodable image, or claim more than :data:`MAX_PIXELS`.
        """
        import cv2

        k = self._index(i)
        buf = self._encoded[k]
        where = f"image {k} (pair {k // 2}, {len(buf)} bytes)"
        why = _oversize(buf)
        if why is not None:
            raise _error(self.path, f"{where} {why}")
        try:
            bgr = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            bgr = None
        if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
            raise _error(self.path, f"{where} cannot be decoded (not a JPEG/PNG, or corrupt)")
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def images(self, indices: Iterable[int]) -> np.ndarray:
        """Images ``indices`` decoded (:meth:`image`) and stacked: uint8 RGB ``(K, H, W, 3)``;
        ``(0, 0, 0, 3)`` for no indices.

        Raises:
            IndexError, BinFormatError: as :meth:`image`; BinFormatError also when the images differ in size.
            TypeError: ``indices`` are not integers.
        """
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices).reshape(-1)
        if idx.size == 0:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"image indices must be integers, got {idx.dtype}")
        first = self.image(int(idx[0]))
        out = np.empty((idx.size,) + first.shape, dtype=np.uint8)
        out[0] = first
        for n, k in enumerate(idx[1:], start=1):
            im = self.image(int(k))
            if im.shape != first.shape:
                raise _error(self.path, f"image {int(k)} is {im.shape[1]}x{im.shape[0]} but image {int(idx[0])} is "
                                        f"{first.shape[1]}x{first.shape[0]}; a .bin's crops share one size")
            out[n] = im
        return out

    def pair_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Image indices of each pair: int64 ``(N,)`` arrays ``(0, 2, 4, ...)`` and ``(1, 3, 5, ...)``."""
        n = len(self)
        return np.arange(0, 2 * n, 2, dtype=np.int64), np.arange(1, 2 * n, 2, dtype=np.int64)


def _oversize(buf: bytes) -> str | None:
    """Why the image header says the image is too large to decode (PIL reads the header, no pixels), or None
    (within :data:`MAX_PIXELS`, or a header PIL does not know: OpenCV then decides)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below replaces PIL's warning
        try:
            with Image.open(io.BytesIO(buf)) as im:
                w, h = im.size
        except Image.DecompressionBombError as e:
            return f"is refused as a decompression bomb ({e})"
        except Exception:  # not an image PIL recognises
            return None
    if w * h > MAX_PIXELS:
        return f"claims {w}x{h} pixels, over the {MAX_PIXELS / 1e6:.0f} MP limit (decompression-bomb guard)"
    return None


def load_bin(path: str | Path) -> BinSet:
    """Read an insightface ``.bin`` validation set safely (see the module docs for the format and the
    restricted unpickler). Follows ``load_bin`` in insightface ``recognition/arcface_torch/eval/
    verification.py``, minus decoding: images stay encoded until :meth:`BinSet.image`.

    Raises:
        MissingInputError: ``path`` does not exist or is not a file.
        BinFormatError: the file is empty, truncated, not a pickle, asks for a refused global (nothing
            from it is run), or does not hold ``(bins, issame_list)`` with ``len(bins) == 2 * len(issame)``,
            bytes/uint8-array images and bool/0-1 flags.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"validation set {path} does not exist or is not a file; point the config at an "
                                f"insightface .bin file (e.g. lfw.bin)")
    data = path.read_bytes()
    if not data:
        raise _error(path, "the file is empty (0 bytes)")
    encoded, issame = _check_structure(path, _unpickle(path, data))
    return BinSet(path, encoded, issame)


def kfold_layout(n_pairs: int, k: int = 10) -> np.ndarray:
    """Fold id of each pair for the field's 10-fold threshold cross-validation: int64 ``(n_pairs,)``.

    Identical to the test folds of ``sklearn.model_selection.KFold(n_splits=k, shuffle=False)``, which
    insightface's ``calculate_roc``/``calculate_val`` use (``eval/verification.py``): k consecutive blocks,
    the first ``n_pairs % k`` one pair longer.

    Raises:
        ValueError: ``k < 2`` or ``n_pairs < k`` (KFold refuses both).
    """
    n_pairs, k = operator.index(n_pairs), operator.index(k)
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2 folds, got {k}")
    if n_pairs < k:
        raise ValueError(f"cannot split {n_pairs} pairs into {k} folds (need at least {k} pairs)")
    sizes = np.full(k, n_pairs // k, dtype=np.int64)
    sizes[: n_pairs % k] += 1
    return np.repeat(np.arange(k, dtype=np.int64), sizes)

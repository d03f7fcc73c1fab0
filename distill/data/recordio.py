"""Read MXNet RecordIO face training sets (insightface / arcface_torch ``train.rec``) without MXNet.

Large face training sets (MS1MV2: 5.8 M images, Glint360K: 17 M) are distributed as three files in one
folder, 112x112 JPEG crops aligned to the ArcFace template:

* ``train.rec``: the records, framed as in dmlc-core ``include/dmlc/recordio.h``. Each frame is a
  little-endian uint32 magic ``0xced7230a``, a uint32 ``lrec`` (upper 3 bits ``cflag``, lower 29 bits the
  length), the bytes, then zero padding to a multiple of 4. A payload that holds the magic at a 4-byte
  aligned position is split there (``cflag`` 1 = first part, 2 = middle, 3 = last; 0 = whole record), and
  the reader joins the parts by putting the magic back between them.
* ``train.idx``: text lines ``key<TAB>offset``, the byte offset of each record's first frame
  (``mxnet.recordio.MXIndexedRecordIO``).
* ``property``: text ``num_classes,height,width`` (e.g. ``85742,112,112``).

A payload is ``mxnet.recordio.pack``'s: an IRHeader (``<IfQQ``: flag uint32, label float32, id uint64,
id2 uint64; 24 bytes), then ``flag`` float32 labels when ``flag > 0`` (the label is then that array), then
the encoded image. insightface's layout (arcface_torch ``MXFaceDataset``, insightface's ``face2rec2.py``
and ``dataset_merge.py``): the record with key 0 is a header whose label is ``(first_identity_key,
end_key)``; images are keys ``1 .. first_identity_key - 1``; keys ``first_identity_key .. end_key - 1``
are identity records whose label ``(start, end)`` is that identity's range of image keys. Without such a
header every key in the index is an image.

Example::

    from distill.data.recordio import RecordIOFaces
    faces = RecordIOFaces("faces_emore")          # faces_emore/{train.rec, train.idx, property}
    len(faces), faces.num_classes                 # 5822653, 85742
    faces.image(0).shape                          # (112, 112, 3) uint8 RGB
    faces.labels()[:3]                            # array([0, 0, 0]) (int64 identity per image)

A set without its ``.idx`` gets one from a single pass over the ``.rec``::

    python -m distill.data.recordio index faces_emore/train.rec
"""
from __future__ import annotations

import argparse
import logging
import os
import struct
import sys
import threading
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import numpy as np

from distill.errors import EXIT_INPUT, InputError, MissingInputError
from distill.io import atomic_write

logger = logging.getLogger(__name__)

#: dmlc-core RecordIOWriter::kMagic (little-endian on disk: ``0a 23 d7 ce``)
MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
#: the frame before each part: magic, lrec (cflag << 29 | length)
_FRAME = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1
#: mxnet.recordio's IRHeader: flag, label, id, id2 (native ``IfQQ`` has no padding: same as ``<IfQQ``)
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24 bytes
#: the file names of an insightface data set folder
REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"
#: a header read reads this many bytes first (the IRHeader and up to 10 float32 labels)
_HEAD_BYTES = IR_SIZE + 40

_INDEX_COMMAND = "python -m distill.data.recordio index"


class RecordIOError(InputError, ValueError):
    """A RecordIO file, its index or a record cannot be used; the message names the file and a remedy."""


# --------------------------------------------------------------------------------------------- payload
@dataclass(frozen=True)
class IRHeader:
    """The header ``mxnet.recordio.pack`` puts before each payload (``mxnet.recordio.IRHeader``).

    Attributes:
        flag: number of float32 labels after the header (0: the label is the scalar ``label``).
        label: the scalar label (``flag == 0``) or the ``flag`` labels as a tuple (mxnet gives an ndarray).
        id: record id; mxnet's im2rec and insightface's writers store the record's key here.
        id2: second id (unused by insightface; 0 or 1).
    """

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int

    @property
    def identity(self) -> int:
        """The identity class as arcface_torch reads it: ``label`` if scalar, else ``label[0]``."""
        label = self.label if isinstance(self.label, float) else self.label[0]
        return int(label)


def unpack(record: bytes, *, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a payload into its :class:`IRHeader` and the bytes after it (``mxnet.recordio.unpack``).

    Args:
        record: a joined payload (:meth:`RecordFile.read`).
        where: names the record in error messages (e.g. ``"train.rec key 17"``).

    Returns:
        ``(header, body)``; ``body`` is the encoded image for an image record, empty for insightface's
        header and identity records.

    Raises:
        RecordIOError: the payload is shorter than the 24-byte IRHeader or than its ``flag`` labels.
    """
    if len(record) < IR_SIZE:
        raise RecordIOError(
            f"{where}: payload of {len(record)} bytes is shorter than the {IR_SIZE}-byte IRHeader, so it was not "
            f"written by mxnet.recordio.pack (im2rec.py and insightface's face2rec2.py write one before every "
            f"image). Rebuild the set with one of them, or read its raw payloads with RecordFile.read")
    flag, label, id_, id2 = _IR.unpack_from(record)
    if flag == 0:
        return IRHeader(flag, label, id_, id2), record[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(record) < end:
        raise RecordIOError(
            f"{where}: IRHeader says {flag} float32 labels follow it ({end} bytes in all) but the payload has "
            f"{len(record)} bytes: the record is damaged or is not an mxnet.recordio.pack record. Copy the .rec "
            f"again from its source, or rebuild it with im2rec.py / insightface's face2rec2.py")
    labels = tuple(float(x) for x in struct.unpack_from(f"<{flag}f", record, IR_SIZE))
    return IRHeader(flag, labels, id_, id2), record[end:]


# --------------------------------------------------------------------------------------------- framing
def _align4(n: int) -> int:
    return (n + 3) & ~3


def _not_recordio(rec_path: Path, offset: int, found: bytes) -> RecordIOError:
    if offset == 0:
        return RecordIOError(
            f"{rec_path} is not an MXNet RecordIO file: bad magic {found.hex(' ')} at offset 0 (a .rec starts "
            f"with 0a 23 d7 ce, dmlc-core's 0xced7230a). Point to the train.rec written by MXNet im2rec.py or "
            f"insightface (its folder holds train.rec, train.idx and property)")
    return RecordIOError(
        f"{rec_path}: bad magic {found.hex(' ')} at offset {offset}, where a record should start (expected "
        f"0a 23 d7 ce): the index does not belong to this .rec, or the .rec is damaged. Rebuild the index with "
        f"`{_INDEX_COMMAND} {rec_path} --force`; if the error stays, copy the .rec again from its source")


def _truncated(rec_path: Path, offset: int, need: int, size: int) -> RecordIOError:
    return RecordIOError(
        f"{rec_path}: truncated record: the record at offset {offset} needs bytes up to {need} but the file "
        f"ends at {size}, so the copy or download was cut short. Copy the .rec again and compare its size "
        f"with the source's")


def _check_cflag(rec_path: Path, offset: int, first: bool, cflag: int) -> None:
    """dmlc-core's order: 0 alone, or 1 then any 2s then 3."""
    if (cflag in (0, 1)) == first and cflag <= 3:
        return
    what = ("starts in the middle of a split record" if first else
            "interrupts a split record that has not ended")
    raise RecordIOError(
        f"{rec_path}: the frame at offset {offset} has cflag {cflag}, which {what} (dmlc-core writes 0, or 1 "
        f"then 2... then 3). The index points inside a record or the .rec is damaged: rebuild the index with "
        f"`{_INDEX_COMMAND} {rec_path} --force`, or copy the .rec again")


def _read_record(pread: Callable[[int, int], bytes], size: int, offset: int, limit: int | None,
                 rec_path: Path) -> tuple[bytes, int]:
    """Join the parts of the record whose first frame is at ``offset`` (dmlc ``RecordIOReader::NextRecord``).

    Args:
        pread: ``pread(offset, n)`` returns up to ``n`` bytes of the file from ``offset``.
        size: the file size in bytes.
        limit: return only the first ``limit`` payload bytes (later parts are skipped, not read);
            None for the whole payload.

    Returns:
        ``(payload, next_offset)``: the joined payload (the magic re-inserted between parts) and the offset
        after the record's last frame and its padding.

    Raises:
        RecordIOError: bad magic, a broken split-record sequence, or a record past the end of the file.
    """
    parts: list[bytes] = []
    have, pos, first = 0, offset, True
    while True:
        frame = pread(pos, _FRAME.size) if pos + _FRAME.size <= size else b""
        if len(frame) < _FRAME.size:
            raise _truncated(rec_path, offset, pos + _FRAME.size, size)
        magic, lrec = _FRAME.unpack(frame)
        if magic != MAGIC:
            raise _not_recordio(rec_path, pos, frame[:4])
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        _check_cflag(rec_path, pos, first, cflag)
        if pos + _FRAME.size + length > size:
            raise _truncated(rec_path, offset, pos + _FRAME.size + length, size)
        if limit is None or have < limit:
            n = length if limit is None else min(length, limit - have)
            data = pread(pos + _FRAME.size, n) if n else b""
            if len(data) < n:
                raise _truncated(rec_path, offset, pos + _FRAME.size + n, pos + _FRAME.size + len(data))
            parts.append(data)
            have += n
        pos += _FRAME.size + _align4(length)
        if cflag in (0, 3):
            payload = b"".join(parts)
            return (payload if limit is None else payload[:limit]), pos
        if limit is None or have < limit:
            parts.append(MAGIC_BYTES)
            have += len(MAGIC_BYTES)
        first = False


# ----------------------------------------------------------------------------------------------- index
def default_index_path(rec_path: str | Path) -> Path:
    """The index beside a ``.rec``: same name, ``.idx`` suffix (``train.rec`` -> ``train.idx``)."""
    return Path(rec_path).with_suffix(".idx")


def _missing_index(rec_path: Path, idx_path: Path) -> RecordIOError:
    return RecordIOError(
        f"{rec_path} has no index: {idx_path} does not exist. Build it with `{_INDEX_COMMAND} {rec_path}"
        + ("" if idx_path == default_index_path(rec_path) else f" --idx {idx_path}")
        + "` (one sequential pass over the .rec; keys are taken from each record's IRHeader id, as im2rec.py "
          "and insightface write them), or copy the .idx that came with the .rec")


def _read_index(idx_path: Path, rec_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``key<TAB>offset`` lines into int64 arrays (file order); raise RecordIOError if malformed."""
    remedy = f"Rebuild it with `{_INDEX_COMMAND} {rec_path} --idx {idx_path} --force`"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "empty input file": reported below
            table = np.loadtxt(idx_path, dtype=np.int64, delimiter="\t", ndmin=2, usecols=(0, 1))
    except (ValueError, IndexError) as e:
        raise RecordIOError(f"{idx_path} is not a RecordIO index (lines of key<TAB>offset, integers): "
                            f"{' '.join(str(e).split())}. {remedy}") from None
    if len(table) == 0:
        raise RecordIOError(f"{idx_path} is empty: an index lists one key<TAB>offset line per record. {remedy}")
    return np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])


def _sorted_unique(keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by key; a key listed twice keeps its last offset (mxnet's index is a dict filled in file order)."""
    order = np.argsort(keys, kind="stable")
    keys, offsets = keys[order], offsets[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    if not last.all():
        logger.warning("%d keys are listed more than once in the index; the last offset of each is used",
                       int((~last).sum()))
    return keys[last], offsets[last]


def _scan(rec_path: Path, limit: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, first `limit` payload bytes)`` of every record of ``rec_path``, in file order."""
    size = rec_path.stat().st_size
    with open(rec_path, "rb", buffering=1 << 20) as f:
        def pread(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)

        pos = 0
        while pos < size:
            head, nxt = _read_record(pread, size, pos, limit, rec_path)
            yield pos, head
            pos = nxt


def _index_lines(rec_path: Path, key: str, keys_seen: array) -> Iterator[bytes]:
    """The ``key\\toffset\\n`` lines of :func:`build_index`, in file order, 64 K records per chunk."""
    chunk: list[str] = []
    size = max(1, rec_path.stat().st_size)
    for n, (offset, head) in enumerate(_scan(rec_path, IR_SIZE if key == "id" else 0)):
        if key == "id":
            if len(head) < IR_SIZE:
                raise RecordIOError(
                    f"{rec_path}: the record at offset {offset} has {len(head)} payload bytes, fewer than the "
                    f"{IR_SIZE}-byte IRHeader whose id is its key. Use the .idx that came with the .rec, or index "
                    f"by file position with `{_INDEX_COMMAND} {rec_path} --key position`")
            k = _IR.unpack_from(head)[2]
            if k >= 1 << 63:
                raise RecordIOError(f"{rec_path}: the record at offset {offset} has IRHeader id {k}, beyond int64: "
                                    f"its ids are not keys. Index it with `{_INDEX_COMMAND} {rec_path} --key position`")
        else:
            k = n
        keys_seen.append(k)
        chunk.append(f"{k}\t{offset}\n")
        if len(chunk) == 65536:
            logger.info("indexed %d records (%.0f%% of %s)", n + 1, 100 * offset / size, rec_path.name)
            yield "".join(chunk).encode("ascii")
            chunk = []
    yield "".join(chunk).encode("ascii")


def build_index(rec_path: str | Path, idx_path: str | Path | None = None, *, key: str = "id") -> int:
    """Scan ``rec_path`` once and write its ``.idx`` (``key<TAB>offset`` per record, in file order).

    The index is written to a temp file in the target folder, then renamed over ``idx_path``
    (:func:`distill.io.atomic_write`), so a reader never sees half an index. Only the frames and the first
    24 payload bytes of each record are read; the image data is skipped.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: where to write; default :func:`default_index_path` (replaced if it exists).
        key: ``"id"``: each record's IRHeader ``id``, which im2rec.py and insightface's writers set to the
            key they index (insightface writes the header record, key 0, last, so file position is not the
            key); ``"position"``: 0, 1, 2, ... in file order, for files whose payloads have no IRHeader.

    Returns:
        The number of records indexed.

    Raises:
        RecordIOError: not a RecordIO file, a truncated record, a payload without an IRHeader, or (for
            ``key="id"``) two records with the same id.
        MissingInputError: ``rec_path`` does not exist.
    """
    if key not in ("id", "position"):
        raise ValueError(f"key must be 'id' or 'position', not {key!r}")
    rec_path = Path(rec_path)
    idx_path = default_index_path(rec_path) if idx_path is None else Path(idx_path)
    if not rec_path.is_file():
        raise MissingInputError(f"{rec_path} does not exist (or is not a file): name the .rec to index")
    keys_seen = array("q")

    def write(f: IO[bytes]) -> None:
        for lines in _index_lines(rec_path, key, keys_seen):
            f.write(lines)
        _check_unique_ids(rec_path, keys_seen)

    atomic_write(idx_path, write)
    logger.info("wrote %s: %d records", idx_path, len(keys_seen))
    return len(keys_seen)


def _check_unique_ids(rec_path: Path, keys_seen: array) -> None:
    keys = np.frombuffer(keys_seen, dtype=np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    if len(uniq) != len(keys):
        dup = int(uniq[np.argmax(counts > 1)])
        raise RecordIOError(
            f"{rec_path}: {len(keys) - len(uniq)} records repeat an IRHeader id (e.g. id {dup}), so the ids are "
            f"not the keys this file was indexed by. Use the .idx that came with the .rec, or index by file "
            f"position with `{_INDEX_COMMAND} {rec_path} --key position`")


# ----------------------------------------------------------------------------------------- RecordFile
class RecordFile:
    """Random access to the records of a ``.rec`` through its ``.idx`` (``mxnet.recordio.MXIndexedRecordIO``).

    The index is held as two int64 arrays (keys sorted, offsets): 16 bytes per record, no per-record
    Python object (MS1MV2's 5.8 M records: 93 MB). The file is opened on the first read in each process and
    reopened after a fork (the pid is stored), and pickling drops the handle, so every DataLoader worker
    reads through its own handle. Reads are thread-safe.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its index; default the ``.idx`` beside it (:func:`default_index_path`).

    Raises:
        MissingInputError: ``rec_path`` does not exist.
        RecordIOError: no index (the message gives the command that builds one), a malformed index, an
            offset beyond the end of the ``.rec``, or a ``.rec`` that is not RecordIO (bad magic).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = default_index_path(self.rec_path) if idx_path is None else Path(idx_path)
        if not self.rec_path.is_file():
            raise MissingInputError(f"{self.rec_path} does not exist (or is not a file): name the train.rec of "
                                    f"an MXNet/insightface data set, or the folder holding it")
        if not self.idx_path.is_file():
            raise _missing_index(self.rec_path, self.idx_path)
        self._size = self.rec_path.stat().st_size
        keys, offsets = _read_index(self.idx_path, self.rec_path)
        self._keys, self._offsets = _sorted_unique(keys, offsets)
        self._keys.flags.writeable = self._offsets.flags.writeable = False
        self._fh: IO[bytes] | None = None
        self._pid: int | None = None
        self._lock: Any = None
        self._check_offsets()

    def _check_offsets(self) -> None:
        """Every offset inside the file, and a record (magic) at the first one."""
        bad = (self._offsets < 0) | (self._offsets + _FRAME.size > self._size)
        if bad.any():
            i = int(np.argmax(bad))
            raise RecordIOError(
                f"{self.idx_path} gives key {int(self._keys[i])} offset {int(self._offsets[i])}, beyond the end of "
                f"{self.rec_path} ({self._size} bytes; {int(bad.sum())} keys in all): the .rec is truncated or the "
                f"index belongs to another file. Copy the .rec again, or rebuild the index with "
                f"`{_INDEX_COMMAND} {self.rec_path} --idx {self.idx_path} --force`")
        first = int(self._offsets.min())
        with open(self.rec_path, "rb") as f:
            f.seek(first)
            magic = f.read(4)
        if magic != MAGIC_BYTES:
            raise _not_recordio(self.rec_path, first, magic)

    # -- handle: one per process -------------------------------------------------------------------
    def _pread(self, offset: int, n: int) -> bytes:
        if self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for the process's reads
            self._pid = os.getpid()
            self._lock = threading.Lock()
        with self._lock:
            self._fh.seek(offset)
            return self._fh.read(n)

    def close(self) -> None:
        """Close this process's handle (a later read reopens it)."""
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = self._pid = self._lock = None

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the handle: the unpickled copy (a DataLoader worker) opens its own."""
        state = self.__dict__.copy()
        state.update(_fh=None, _pid=None, _lock=None)
        return state

    # -- records -----------------------------------------------------------------------------------
    @property
    def keys(self) -> np.ndarray:
        """int64 ``(N,)`` keys of the index, sorted ascending (read-only)."""
        return self._keys

    @property
    def offsets(self) -> np.ndarray:
        """int64 ``(N,)`` byte offset in the ``.rec`` of each key in :attr:`keys` (read-only)."""
        return self._offsets

    def __len__(self) -> int:
        return len(self._keys)

    def _position(self, key: int) -> int:
        i = int(np.searchsorted(self._keys, key))
        return i if i < len(self._keys) and self._keys[i] == key else -1

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (int, np.integer)) and self._position(int(key)) >= 0

    def read(self, key: int, max_bytes: int | None = None) -> bytes:
        """The payload of record ``key``, split parts joined (dmlc-core ``RecordIOReader::NextRecord``).

        Args:
            key: a key of the index.
            max_bytes: return only the first ``max_bytes`` bytes (for headers); None for all of it.

        Raises:
            KeyError: ``key`` is not in the index.
            RecordIOError: no record at the indexed offset (bad magic), or the record is truncated.
        """
        i = self._position(int(key))
        if i < 0:
            raise KeyError(f"key {key} is not in {self.idx_path}")
        payload, _ = _read_record(self._pread, self._size, int(self._offsets[i]), max_bytes, self.rec_path)
        return payload


# -------------------------------------------------------------------------------------- RecordIOFaces
def _locate(root_or_rec: Path) -> tuple[Path, Path]:
    """``(rec, property)`` for a data set folder (``train.rec`` inside) or a ``.rec`` file."""
    if root_or_rec.is_dir():
        return root_or_rec / REC_NAME, root_or_rec / PROPERTY_NAME
    if not root_or_rec.exists():
        raise MissingInputError(f"{root_or_rec} does not exist: name an insightface data set folder (holding "
                                f"{REC_NAME}, {IDX_NAME}, {PROPERTY_NAME}) or its .rec file")
    return root_or_rec, root_or_rec.parent / PROPERTY_NAME


def read_property(path: str | Path) -> tuple[int, int, int]:
    """``(num_classes, height, width)`` from an insightface ``property`` file (text ``85742,112,112``).

    Raises:
        RecordIOError: the file is not three comma-separated non-negative integers.
    """
    text = Path(path).read_text(errors="replace").strip()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise RecordIOError(f"{path}: expected 'num_classes,height,width' (e.g. 85742,112,112), got {text[:60]!r}. "
                            f"Fix the file, or delete it (num_classes is then counted from the records)")
    return values  # type: ignore[return-value]


def _decode(data: bytes, where: str) -> np.ndarray:
    """Encoded image -> RGB uint8 ``(H, W, 3)`` with ``cv2.imdecode`` (as ``mx.image.imdecode``: colour, RGB)."""
    import cv2  # OpenCV only for decoding: indexing and labels do not need it

    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error:
        bgr = None
    if bgr is None:
        raise RecordIOError(
            f"{where}: undecodable image ({len(data)} bytes, starting {data[:8].hex(' ') or 'with nothing'}): "
            f"the record is damaged or does not hold an image. Copy the .rec again from its source; if the "
            f"source has the same bytes, rebuild the set from its images (im2rec.py / face2rec2.py)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class RecordIOFaces:
    """An insightface face training set in RecordIO (arcface_torch ``MXFaceDataset``), read without MXNet.

    Args:
        root_or_rec: a folder holding ``train.rec``, ``train.idx`` and (optionally) ``property``, or a
            ``.rec`` file (its ``.idx`` beside it; ``property`` in the same folder).

    Attributes:
        records: the :class:`RecordFile` underneath.
        image_keys: int64 ``(N,)`` keys of the images, in data set order (``image(i)`` reads
            ``image_keys[i]``): ``1 .. first_identity_key - 1`` under a header record, else every key.
        identity_keys: int64 keys of the identity records, or None when there is no header record.
        image_size: ``(height, width)`` from ``property``, or None without one.

    Raises:
        MissingInputError, RecordIOError: as :class:`RecordFile`; also a header record whose ranges do not
            fit the index, or a malformed ``property``.
    """

    def __init__(self, root_or_rec: str | Path) -> None:
        rec_path, property_path = _locate(Path(root_or_rec))
        self.records = RecordFile(rec_path)
        self._property = read_property(property_path) if property_path.is_file() else None
        self.image_size = None if self._property is None else self._property[1:]
        self.image_keys, self.identity_keys = self._layout()
        self._labels: np.ndarray | None = None

    def _where(self, key: int) -> str:
        return f"{self.records.rec_path} key {key}"

    def _header(self, key: int) -> IRHeader:
        """The IRHeader of record ``key``, reading only the header and its labels."""
        head = self.records.read(key, _HEAD_BYTES)
        if len(head) == _HEAD_BYTES:  # shorter: the whole record
            need = IR_SIZE + 4 * struct.unpack_from("<I", head)[0]
            if need > _HEAD_BYTES:
                head = self.records.read(key, need)
        return unpack(head, where=self._where(key))[0]

    def _layout(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image_keys, identity_keys)`` from the header record (key 0), as arcface_torch reads it.

        Key 0 is a header when its IRHeader has ``flag >= 2`` (a label array holding the range); a key 0
        with a scalar label (or a one-element label array), or no key 0, means every key is an image.
        """
        records = self.records
        header = self._header(0) if 0 in records else None
        if header is None or header.flag < 2:  # arcface_torch: flag > 0; one label cannot be a range
            return records.keys.copy(), None
        first, end = (int(v) for v in header.label[:2])  # type: ignore[index]
        if not 1 <= first <= end:
            raise RecordIOError(
                f"{self._where(0)}: the header record's label {header.label} is not (first_identity_key, end_key) "
                f"with 1 <= first <= end, as insightface writes it. The .rec is damaged or not an insightface "
                f"set: copy it again, or rebuild it with insightface's face2rec2.py")
        keys = records.keys
        present = int(np.searchsorted(keys, end) - np.searchsorted(keys, 1))
        if present != end - 1:
            raise RecordIOError(
                f"{self._where(0)}: the header record says keys 1..{end - 1} are images (1..{first - 1}) and "
                f"identities ({first}..{end - 1}), but {records.idx_path} lists {present} of those {end - 1} keys: "
                f"the index is incomplete or belongs to another file. Rebuild it with "
                f"`{_INDEX_COMMAND} {records.rec_path} --idx {records.idx_path} --force`")
        return np.arange(1, first, dtype=np.int64), np.arange(first, end, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_keys)

    def _key(self, i: int) -> int:
        n = len(self.image_keys)
        if not -n <= i < n:
            raise IndexError(f"image {i} out of range for {n} images in {self.records.rec_path}")
        return int(self.image_keys[i])

    def raw(self, i: int) -> bytes:
        """The encoded image (JPEG usually) of image ``i`` (key ``image_keys[i]``), without its IRHeader."""
        key = self._key(i)
        return unpack(self.records.read(key), where=self._where(key))[1]

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` decoded: RGB uint8 ``(H, W, 3)`` (``(112, 112, 3)`` for insightface sets).

        Raises:
            RecordIOError: the image bytes cannot be decoded (the message names the key).
        """
        key = self._key(i)
        return _decode(unpack(self.records.read(key), where=self._where(key))[1], self._where(key))

    def labels(self) -> np.ndarray:
        """int64 ``(N,)`` identity of each image (read-only; computed on the first call, then cached).

        From the identity records when there are any (one small read per identity, spot-checked against
        image headers); else, or when they do not cover every image once, from each image's IRHeader
        (``label``, or ``label[0]`` for a label array).
        """
        if self._labels is None:
            labels = self._labels_from_identities() if self.identity_keys is not None else None
            if labels is None:
                labels = self._labels_from_headers()
            labels.flags.writeable = False
            self._labels = labels
        return self._labels

    def _labels_from_identities(self) -> np.ndarray | None:
        """Identity ``j`` owns image keys ``[start, end)`` of identity record ``identity_keys[j]``; None if
        the ranges do not cover every image exactly once or disagree with the image headers."""
        n, ids = len(self.image_keys), self.identity_keys
        labels = np.full(n, -1, dtype=np.int64)
        ranges = np.zeros((len(ids), 2), dtype=np.int64)
        for j, key in enumerate(ids.tolist()):
            header = self._header(key)
            start, end = (int(v) for v in header.label[:2]) if header.flag >= 2 else (-1, -1)  # type: ignore[index]
            if not 1 <= start <= end <= n + 1:
                logger.warning("%s: identity record label %s is not an image key range; reading labels from "
                               "every image header instead", self._where(key), header.label)
                return None
            labels[start - 1:end - 1] = j
            ranges[j] = start, end
        if (ranges[:, 1] - ranges[:, 0]).sum() != n or (labels < 0).any():
            logger.warning("%s: identity records do not cover each image exactly once; reading labels from every "
                           "image header instead", self.records.rec_path)
            return None
        return labels if self._identities_agree(ranges) else None

    def _identities_agree(self, ranges: np.ndarray) -> bool:
        """Spot check: the first image of the first, middle and last identity carries that identity's index."""
        for j in sorted({0, len(ranges) // 2, len(ranges) - 1}):
            start, end = (int(v) for v in ranges[j])
            found = self._header(start).identity if start < end else j
            if found != j:
                logger.warning("%s: image key %d has label %d but lies in identity record %d's range; reading "
                               "labels from every image header instead", self.records.rec_path, start, found, j)
                return False
        return True

    def _labels_from_headers(self) -> np.ndarray:
        labels = np.empty(len(self.image_keys), dtype=np.int64)
        for i, key in enumerate(self.image_keys.tolist()):
            labels[i] = self._header(key).identity
            if i and i % 500_000 == 0:
                logger.info("read labels of %d / %d images from %s", i, len(labels), self.records.rec_path)
        return labels

    @property
    def num_classes(self) -> int:
        """Number of identities: from ``property`` when present, else the identity records, else
        ``max(labels()) + 1``."""
        if self._property is not None:
            return self._property[0]
        if self.identity_keys is not None:
            return len(self.identity_keys)
        labels = self.labels()
        return int(labels.max()) + 1 if len(labels) else 0


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The ``python -m distill.data.recordio`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m distill.data.recordio", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tools for MXNet RecordIO face training sets (insightface train.rec/train.idx/property), "
                    "read without MXNet.",
        epilog="example:\n  python -m distill.data.recordio index faces_emore/train.rec")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    index = sub.add_parser(
        "index", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="write the .idx of a .rec (one sequential pass)",
        description="Scan a .rec once and write its index: one 'key<TAB>offset' line per record, in file\n"
                    "order, as mxnet.recordio.MXIndexedRecordIO writes it. Only the frames and the first 24\n"
                    "payload bytes of each record are read. The index is written to a temp file beside it\n"
                    "and renamed into place, so an interrupted run leaves no partial index.",
        epilog="exit codes: 0 written; 2 an input to fix (not RecordIO, truncated, index exists, ...)\n"
               "example:\n  python -m distill.data.recordio index faces_emore/train.rec   # -> faces_emore/train.idx")
    index.add_argument("rec", type=Path, metavar="PATH.rec", help="the RecordIO file to index")
    index.add_argument("--idx", type=Path, metavar="PATH.idx",
                       help="where to write the index (default: beside PATH.rec, suffix .idx)")
    index.add_argument("--key", choices=("id", "position"), default="id",
                       help="key of each record: 'id' (default) its IRHeader id, which im2rec.py and insightface "
                            "set to the record's key; 'position' 0, 1, 2, ... in file order, for payloads "
                            "without an IRHeader")
    index.add_argument("--force", action="store_true", help="replace an index that already exists")
    return parser


def _cmd_index(args: argparse.Namespace) -> int:
    idx = default_index_path(args.rec) if args.idx is None else args.idx
    if idx.exists() and not args.force:
        raise RecordIOError(f"{idx} already exists: pass --force to replace it, or --idx to write elsewhere")
    build_index(args.rec, idx, key=args.key)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, or 2 for an input to fix, the message logged)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return _cmd_index(args)
    except InputError as e:
        logger.error("%s: error: %s", "python -m distill.data.recordio", e)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())

"""distill.data.recordio against files written by an independent writer that follows the published format.

The writer below is written from dmlc-core ``RecordIOWriter::WriteRecord`` (frames, split at an aligned
magic, padding), ``mxnet.recordio.pack`` (IRHeader ``IfQQ`` + float32 label array) and insightface's
``face2rec2.py`` / ``dataset_merge.py`` layout (images at keys 1.., identity records after them, the header
record at key 0 written last, ``property``). Images are real LFW crops (112x112 JPEG, cv2.imencode).
"""
from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from distill.data.recordio import (IRHeader, RecordFile, RecordIOError, RecordIOFaces, build_index, main,
                                   unpack)
from distill.errors import InputError

MAGIC = 0xCED7230A
MAGIC_LE = struct.pack("<I", MAGIC)
PEOPLE = ("Colin_Powell", "Tony_Blair", "Serena_Williams", "Hugo_Chavez")
PER_PERSON = 3
INDEX_CMD = "python -m distill.data.recordio index"


# ------------------------------------------------------------------------------ independent writer
def write_frames(f, payload: bytes) -> list[int]:
    """dmlc-core RecordIOWriter::WriteRecord; returns the cflag of each frame written."""
    n, dptr, cflags = len(payload), 0, []
    for i in range(0, n & ~3, 4):
        if payload[i:i + 4] == MAGIC_LE:
            cflag = 1 if dptr == 0 else 2
            f.write(MAGIC_LE + struct.pack("<I", (cflag << 29) | (i - dptr)) + payload[dptr:i])
            cflags.append(cflag)
            dptr = i + 4
    cflag = 3 if dptr else 0
    f.write(MAGIC_LE + struct.pack("<I", (cflag << 29) | (n - dptr)) + payload[dptr:])
    f.write(b"\0" * (-n % 4))
    return cflags + [cflag]


def pack(label, id_: int, body: bytes = b"", id2: int = 0) -> bytes:
    """mxnet.recordio.pack: scalar label -> flag 0; a sequence -> flag = len, float32 array after the header."""
    if np.isscalar(label):
        return struct.pack("<IfQQ", 0, float(label), id_, id2) + body
    arr = np.asarray(label, dtype="<f4")
    return struct.pack("<IfQQ", arr.size, 0.0, id_, id2) + arr.tobytes() + body


@dataclass
class Written:
    rec: Path
    idx: Path
    payloads: dict[int, bytes] = field(default_factory=dict)
    cflags: dict[int, list[int]] = field(default_factory=dict)


def write_rec(rec: Path, records: list[tuple[int, bytes]]) -> Written:
    """MXIndexedRecordIO.write_idx for each (key, payload), in order: .rec + .idx (``key\\toffset``)."""
    out = Written(rec, rec.with_suffix(".idx"))
    with open(rec, "wb") as f, open(out.idx, "w") as fidx:
        for key, payload in records:
            fidx.write(f"{key}\t{f.tell()}\n")
            out.payloads[key] = payload
            out.cflags[key] = write_frames(f, payload)
    return out


# ------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def crops(lfw_root: Path) -> list[tuple[int, bytes]]:
    """(identity, JPEG bytes) of 4 people x 3 LFW images, centre-cropped and resized to 112x112."""
    out = []
    for label, person in enumerate(PEOPLE):
        for path in sorted((lfw_root / "lfw-deepfunneled" / person).glob("*.jpg"))[:PER_PERSON]:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            s = min(h, w) * 6 // 10
            crop = cv2.resize(img[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2], (112, 112),
                              interpolation=cv2.INTER_AREA)
            ok, enc = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            out.append((label, enc.tobytes()))
    return out


def with_magic_comment(jpeg: bytes) -> bytes:
    """The JPEG with a COM segment holding the magic twice, at payload offsets 32 and 36 (after the 24-byte
    IRHeader: SOI 2 + marker 2 + length 2 + 2 bytes): the writer must split it into 1/2/3 frames."""
    data = b"ab" + MAGIC_LE + MAGIC_LE + b"cd"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", 2 + len(data)) + data + jpeg[2:]


def insightface_records(crops, reverse_identities: bool = False) -> tuple[list[tuple[int, bytes]], dict]:
    """face2rec2 layout: images 1..12, identity records 13..16, header (key 0) last. Image key 2 has id2 =
    magic (split inside the IRHeader); image key 5 holds the magic twice in a JPEG comment."""
    records, bodies = [], {}
    for i, (label, jpeg) in enumerate(crops):
        key = i + 1
        body = with_magic_comment(jpeg) if key == 5 else jpeg
        bodies[key] = body
        records.append((key, pack(label, key, body, id2=MAGIC if key == 2 else 0)))
    first = len(crops) + 1
    people = list(range(len(PEOPLE)))[::-1] if reverse_identities else list(range(len(PEOPLE)))
    for j, person in enumerate(people):
        start = 1 + person * PER_PERSON
        records.append((first + j, pack((start, start + PER_PERSON), first + j)))
    records.append((0, pack((first, first + len(PEOPLE)), 0, id2=1)))
    return records, bodies


def write_insightface(root: Path, crops, *, reverse_identities: bool = False, prop: bool = True):
    root.mkdir(parents=True, exist_ok=True)
    records, bodies = insightface_records(crops, reverse_identities)
    written = write_rec(root / "train.rec", records)
    if prop:
        (root / "property").write_text(f"{len(PEOPLE)},112,112\n")
    return written, bodies


def rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------- tests
def test_insightface_set_reads_back_byte_exact(tmp_path, crops):
    written, bodies = write_insightface(tmp_path / "set", crops)
    assert written.cflags[2] == [1, 3] and written.cflags[5] == [1, 2, 3]  # the split cases were written
    assert all(c == [0] for k, c in written.cflags.items() if k not in (2, 5))
    faces = RecordIOFaces(tmp_path / "set")
    assert len(faces) == 12 and faces.num_classes == 4 and faces.image_size == (112, 112)
    assert faces.image_keys.dtype == np.int64 and faces.image_keys.tolist() == list(range(1, 13))
    assert faces.identity_keys.tolist() == [13, 14, 15, 16]
    for key, payload in written.payloads.items():  # every record, header and identities included
        assert faces.records.read(key) == payload
    for i in range(len(faces)):
        raw = faces.raw(i)
        assert raw == bodies[i + 1]
        img = faces.image(i)
        assert img.dtype == np.uint8 and img.shape == (112, 112, 3) and img.flags.c_contiguous
        np.testing.assert_array_equal(img, rgb(raw))
    header, body = unpack(faces.records.read(2))
    assert header == IRHeader(0, float(crops[1][0]), 2, MAGIC) and body == bodies[2]
    assert unpack(faces.records.read(0))[0] == IRHeader(2, (13.0, 17.0), 0, 1)
    labels = faces.labels()
    assert labels.dtype == np.int64 and labels.tolist() == [label for label, _ in crops]
    assert faces.labels() is labels and not labels.flags.writeable
    for max_bytes in (0, 10, 30, 34, 40, 41, 10**6):  # a prefix across the split parts
        assert faces.records.read(5, max_bytes=max_bytes) == written.payloads[5][:max_bytes]


def test_labels_fall_back_to_image_headers_and_num_classes_without_property(tmp_path, crops):
    """Identity records listed in another order than the image labels: the spot check sees it and the labels
    come from the image headers; without `property` num_classes is the number of identity records."""
    write_insightface(tmp_path / "set", crops, reverse_identities=True, prop=False)
    faces = RecordIOFaces(tmp_path / "set" / "train.rec")
    assert faces.labels().tolist() == [label for label, _ in crops]
    assert faces.num_classes == 4 and faces.image_size is None


@pytest.mark.parametrize("first_key", [0, 100])
def test_plain_layout_every_key_is_an_image(tmp_path, crops, first_key):
    """No header record (key 0 is an image with flag 0, or there is no key 0): every key is an image; labels
    come from each header, label[0] of a label array."""
    records = []
    for i, (label, jpeg) in enumerate(crops):
        key = first_key + i
        records.append((key, pack(label if i % 2 == 0 else (label, 0.25), key, jpeg)))
    write_rec(tmp_path / "plain.rec", records)
    faces = RecordIOFaces(tmp_path / "plain.rec")
    assert faces.identity_keys is None
    assert faces.image_keys.tolist() == list(range(first_key, first_key + len(crops)))
    assert faces.labels().tolist() == [label for label, _ in crops]
    assert faces.num_classes == 4  # no property: max label + 1
    for i in (0, 1, len(crops) - 1):
        assert faces.raw(i) == crops[i][1]
        np.testing.assert_array_equal(faces.image(i), rgb(crops[i][1]))


def test_raw_records_split_joined_exactly(tmp_path):
    """RecordFile alone, payloads without IRHeader: empty, the magic alone, runs of magics, magic at an
    unaligned position (not split), odd lengths (padding)."""
    rng = np.random.default_rng(0)
    noise = bytearray(rng.integers(0, 256, 203, dtype=np.uint8).tobytes())
    noise[40:44] = noise[100:104] = noise[199:203] = MAGIC_LE  # aligned (199 is not: stays whole)
    payloads = [b"", MAGIC_LE, MAGIC_LE * 3, b"x" + MAGIC_LE + b"yz", bytes(noise), MAGIC_LE + b"a",
                b"abc" + MAGIC_LE]
    written = write_rec(tmp_path / "raw.rec", list(enumerate(payloads)))
    assert written.cflags[1] == [1, 3] and written.cflags[2] == [1, 2, 2, 3] and written.cflags[3] == [0]
    assert written.cflags[4] == [1, 2, 3]
    rf = RecordFile(written.rec)
    assert len(rf) == len(payloads) and rf.keys.dtype == np.int64 and rf.offsets.dtype == np.int64
    for key, payload in enumerate(payloads):
        assert rf.read(key) == payload
    with pytest.raises(KeyError):
        rf.read(99)
    before = written.idx.read_bytes()
    assert build_index(written.rec, tmp_path / "pos.idx", key="position") == len(payloads)
    assert (tmp_path / "pos.idx").read_bytes() == before
    with pytest.raises(RecordIOError, match="--key position"):  # no IRHeader id to key by
        build_index(written.rec, tmp_path / "id.idx")
    assert not list(tmp_path.glob(".id.idx.*"))  # the failed build left no temp file


def test_missing_index_names_the_remedy_and_build_index_recreates_it(tmp_path, crops, capsys):
    written, _ = write_insightface(tmp_path / "set", crops)
    original = written.idx.read_bytes()
    written.idx.unlink()
    with pytest.raises(RecordIOError) as e:
        RecordIOFaces(tmp_path / "set")
    assert isinstance(e.value, InputError) and isinstance(e.value, ValueError)
    assert str(written.idx) in str(e.value) and f"{INDEX_CMD} {written.rec}" in str(e.value)
    assert build_index(written.rec) == len(written.payloads)  # keys from IRHeader ids; header written last
    assert written.idx.read_bytes() == original
    assert main(["index", str(written.rec)]) == 2  # exists: refuses without --force
    assert main(["index", str(written.rec), "--force"]) == 0
    assert written.idx.read_bytes() == original
    assert RecordIOFaces(tmp_path / "set").labels().tolist() == [label for label, _ in crops]
    for argv in (["--help"], ["index", "--help"]):
        with pytest.raises(SystemExit) as ex:
            main(argv)
        assert ex.value.code == 0
    help_text = capsys.readouterr().out
    assert "index" in help_text and "--key" in help_text and "--force" in help_text and "--idx" in help_text


def test_garbage_and_damaged_files_raise_recordio_errors(tmp_path, crops):
    garbage = tmp_path / "garbage.rec"
    garbage.write_bytes(b"<html>not a record file</html>" * 10)
    with pytest.raises(RecordIOError, match="not an MXNet RecordIO file"):
        build_index(garbage)
    garbage.with_suffix(".idx").write_text("0\t0\n")
    with pytest.raises(RecordIOError, match="not an MXNet RecordIO file"):
        RecordFile(garbage)
    garbage.with_suffix(".idx").write_text("0\tzero\n")
    with pytest.raises(RecordIOError, match="not a RecordIO index"):
        RecordFile(garbage)

    written, _ = write_insightface(tmp_path / "set", crops)
    data = written.rec.read_bytes()
    written.rec.write_bytes(data[:-30])  # the header record (written last) loses its end
    with pytest.raises(RecordIOError, match="truncated record"):
        RecordIOFaces(tmp_path / "set")
    rf = RecordFile(written.rec)
    assert rf.read(1) == written.payloads[1]
    cut = int(rf.offsets[rf.keys == 6][0]) + 20  # keys 7.. start beyond the end
    written.rec.write_bytes(data[:cut])
    with pytest.raises(RecordIOError, match="beyond the end"):
        RecordFile(written.rec)
    with pytest.raises(RecordIOError, match="shorter than the 24-byte IRHeader"):
        unpack(b"\0" * 10)
    with pytest.raises(RecordIOError, match="labels follow"):
        unpack(struct.pack("<IfQQ", 5, 0.0, 1, 0) + b"\0" * 8)

    broken = [(k, pack(0, k, b"\xff\xd8 not a jpeg" if k == 2 else crops[0][1])) for k in range(3)]
    write_rec(tmp_path / "broken.rec", broken)
    faces = RecordIOFaces(tmp_path / "broken.rec")
    with pytest.raises(RecordIOError, match="key 2: undecodable image"):
        faces.image(2)


def test_pickles_without_handle_and_reads_in_a_forked_worker(tmp_path, crops):
    written, bodies = write_insightface(tmp_path / "set", crops)
    faces = RecordIOFaces(tmp_path / "set")
    assert faces.raw(0) == bodies[1]  # the handle is open now
    assert faces.records._fh is not None
    state = faces.records.__getstate__()
    assert state["_fh"] is None and state["_pid"] is None and state["_lock"] is None
    copy = pickle.loads(pickle.dumps(faces))  # what a spawned DataLoader worker receives
    assert copy.records._fh is None
    np.testing.assert_array_equal(copy.image(4), rgb(bodies[5]))
    assert copy.records._fh is not None and copy.records._fh is not faces.records._fh

    if not hasattr(os, "fork"):
        pytest.skip("platform: no os.fork (the pickled copy above covers spawn)")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a forked worker must open its own handle, then read
        try:
            parent_fh = faces.records._fh
            ok = faces.raw(11) == bodies[12] and faces.records._fh is not parent_fh
            os.write(write_fd, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1"
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert faces.raw(3) == bodies[4]  # the parent's handle still works


def test_reading_keeps_no_per_record_objects(tmp_path, crops):
    write_insightface(tmp_path / "set", crops)
    faces = RecordIOFaces(tmp_path / "set")
    for i in range(len(faces)):
        faces.image(i)
    faces.labels()
    n = len(faces.records)
    for obj in (faces, faces.records):
        for name, value in vars(obj).items():
            if isinstance(value, (list, tuple, dict, set, bytes, bytearray)):
                assert len(value) < min(n, 4), f"{type(obj).__name__}.{name} grows with the records"
            if isinstance(value, np.ndarray):
                assert value.dtype == np.int64, name

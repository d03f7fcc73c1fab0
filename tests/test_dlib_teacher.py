"""The dlib_resnet port: byte-level reader errors, and descriptors equal to dlib's own on real LFW faces."""
from __future__ import annotations

from pathlib import Path

import dlib  # dlib-bin (dev extra, `make install`): the reference implementation
import numpy as np
import pytest
import torch
from PIL import Image

from teachers import TEACHERS
from teachers.dlib_format import DlibFormatError, RESNET_V1_LAYOUT, parse_dlib_model, read_dlib_model
from teachers.dlib_resnet import default_dlib_model_path, dlib_face_chips

MODEL = default_dlib_model_path()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return MODEL.read_bytes()


@pytest.fixture(scope="module")
def chips(lfw_root: Path) -> np.ndarray:
    """16 varied 150x150 chips: 12 real LFW faces aligned by dlib itself + 4 synthetic/edge chips."""
    people = sorted(p for p in (lfw_root / "lfw-deepfunneled").iterdir() if p.is_dir())
    paths = [sorted(p.glob("*.jpg"))[0] for p in people[:: max(1, len(people) // 14)]][:14]
    faces, found = dlib_face_chips([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert len(found) >= 12, f"dlib found faces in only {len(found)} of {len(paths)} LFW images"
    rng = np.random.default_rng(0)
    extra = np.stack([
        rng.integers(0, 256, (150, 150, 3), dtype=np.uint8),            # noise
        np.zeros((150, 150, 3), np.uint8),                              # black
        np.full((150, 150, 3), 255, np.uint8),                          # white (saturating input)
        np.ascontiguousarray(faces[0, :, ::-1]),                        # mirrored face
    ])
    return np.concatenate([faces[:12], extra])


@pytest.fixture(scope="module")
def reference(chips: np.ndarray) -> np.ndarray:
    rec = dlib.face_recognition_model_v1(str(MODEL))
    return np.array([np.array(d) for d in rec.compute_face_descriptor(list(chips))], dtype=np.float32)


def test_reader_parses_the_real_file(model_bytes: bytes) -> None:
    m = parse_dlib_model(model_bytes, str(MODEL))
    assert [layer.kind for layer in m.layers] == list(RESNET_V1_LAYOUT)
    assert m.loss["margin"] == pytest.approx(0.04) and m.loss["distance_threshold"] == pytest.approx(0.6)
    assert m.layers[0].attrs["size"] == (150, 150)
    assert m.layers[0].attrs["mean"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    convs = [layer for layer in m.layers if layer.kind == "con"]
    assert len(convs) == 29 and convs[0].params["weight"].shape == (32, 3, 7, 7)
    total = sum(v.size for layer in m.layers for v in layer.params.values())
    assert total == pytest.approx(5.6e6, rel=0.01)


def test_port_matches_dlib(chips: np.ndarray, reference: np.ndarray) -> None:
    teacher = TEACHERS.build("dlib_resnet")
    out = teacher.embed(torch.from_numpy(chips)).numpy()
    diff = np.abs(out - reference).max()
    assert diff <= 1e-4, f"max |torch - dlib| = {diff}"
    # the descriptors are not degenerate: different people are far apart, as dlib intends (< 0.6 same)
    d = np.linalg.norm(reference[:12, None] - reference[None, :12], axis=-1)
    assert np.median(d[np.triu_indices(12, 1)]) > 0.6


def test_bf16_close_to_fp32(chips: np.ndarray) -> None:
    x = torch.from_numpy(chips[:12])
    a = TEACHERS.build("dlib_resnet").embed(x)
    b = TEACHERS.build("dlib_resnet", precision="bf16").embed(x)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.min() > 0.999, cos


def test_nchw_and_resized_input_accepted(chips: np.ndarray) -> None:
    teacher = TEACHERS.build("dlib_resnet")
    x = torch.from_numpy(chips[:2])
    assert torch.allclose(teacher.embed(x), teacher.embed(x.permute(0, 3, 1, 2)), atol=1e-6)
    assert teacher.embed(torch.from_numpy(chips[:2, :, :, :]).repeat_interleave(2, 1)
                         .repeat_interleave(2, 2)).shape == (2, 128)  # 300x300 resized to 150


@pytest.mark.parametrize("cut", [0, 10, 300, 20_000, -31, -1])
def test_truncated_file_names_offset(model_bytes: bytes, cut: int) -> None:
    data = model_bytes[:cut] if cut >= 0 else model_bytes[:len(model_bytes) + cut]
    with pytest.raises(DlibFormatError, match=r"at byte \d+ .*expected"):
        parse_dlib_model(data, "cut.dat")


def test_garbled_file_errors(model_bytes: bytes, tmp_path: Path) -> None:
    # the loss name
    bad = bytearray(model_bytes)
    bad[4:8] = b"XXXX"
    with pytest.raises(DlibFormatError, match="at byte 0 .*loss_metric_2"):
        parse_dlib_model(bytes(bad), "bad.dat")
    # a layer name in the details (the first conv record, at byte 334 in this file)
    m = read_dlib_model(MODEL)
    off = m.layers[1].offset
    bad = bytearray(model_bytes)
    bad[off + 2:off + 7] = b"cXn_4"  # after the 2-byte length
    with pytest.raises(DlibFormatError, match=rf"at byte {off} .*known layer name.*cXn_4"):
        parse_dlib_model(bytes(bad), "bad.dat")
    # an invalid int control byte
    bad = bytearray(model_bytes)
    bad[0] = 0x3F
    with pytest.raises(DlibFormatError, match="at byte 0 .*control byte"):
        parse_dlib_model(bytes(bad), "bad.dat")
    # trailing garbage
    with pytest.raises(DlibFormatError, match="bytes remain"):
        parse_dlib_model(model_bytes + b"\x00\x00", "long.dat")
    # through the factory: a clear error naming the file
    path = tmp_path / "truncated.dat"
    path.write_bytes(model_bytes[:5000])
    with pytest.raises(DlibFormatError, match="truncated.dat"):
        TEACHERS.build("dlib_resnet", weights=str(path))
    with pytest.raises(FileNotFoundError, match="missing.dat"):
        TEACHERS.build("dlib_resnet", weights=str(tmp_path / "missing.dat"))

"""Hostile data: one bad file never stops a run; every skip is listed with its reason in the run record.

The tree is an LFW-layout folder of synthetic JPEG faces (``data.source=folder``) into which
the test plants corrupt, truncated, empty, mislabelled, exotic-format, oversized, looping,
unreadable and non-UTF-8 entries. Note: the suite runs as root in CI, and ``chmod 000``
does not stop root from reading a file, so there the unreadable file is (correctly) read;
as a normal user it must be skipped as "not readable".
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_reliability_helpers import (QUICKSTART, folder_overrides, run_cli_inprocess, set_args, synthetic_tree,
                                      training_identities)

AS_ROOT = os.geteuid() == 0


def face_jpeg_bytes(root: Path, ident: str) -> bytes:
    return next((root / ident).glob("*.jpg")).read_bytes()


def plant(root: Path, ident: str) -> dict[str, str]:
    """Bad and odd entries in ``ident``'s folder and beside it: {name: what must happen (kept | reason)}."""
    d = root / ident
    good = face_jpeg_bytes(root, ident)
    face = np.asarray(Image.open(d / f"{ident}_0001.jpg").convert("RGB"))
    expect: dict[str, str] = {}

    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(5000))
    expect["corrupt.jpg"] = "image ("  # "corrupt image (...)" or "truncated image (...)", by libjpeg's reading
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    expect["truncated.jpg"] = "truncated"
    (d / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = "empty file"
    (d / "notimage.png").write_text("name,embedding\nnot,an image\n")
    expect["notimage.png"] = "not an image"
    alpha = np.dstack([face, np.tile(np.linspace(0, 255, face.shape[1], dtype=np.uint8), (face.shape[0], 1))])
    Image.fromarray(alpha, "RGBA").save(d / "alpha.png")
    expect["alpha.png"] = "kept"
    grey16 = (face.mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(d / "deep16.png")
    assert Image.open(d / "deep16.png").mode.startswith("I")
    expect["deep16.png"] = "kept"
    Image.fromarray(face).convert("L").save(d / "grey.jpg")
    expect["grey.jpg"] = "kept"
    Image.fromarray(face).convert("CMYK").save(d / "cmyk.jpg")
    expect["cmyk.jpg"] = "kept"
    Image.fromarray(face).resize((10000, 10000), Image.NEAREST).save(d / "huge.jpg", quality=50)
    expect["huge.jpg"] = "kept"  # 100 MP JPEG: decoded at 1/4 scale, never whole in memory
    Image.new("L", (10000, 10000), 90).save(d / "huge.png")
    expect["huge.png"] = "decompression-bomb guard"
    os.symlink("loop.jpg", d / "loop.jpg")
    expect["loop.jpg"] = "cannot stat"
    os.symlink("does-not-exist.jpg", d / "dangling.jpg")
    expect["dangling.jpg"] = "cannot stat"
    bad_name = os.fsencode(str(d)) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(bad_name, "wb") as f:
        f.write(good)
    expect["caf\\xe9.jpg"] = "not valid UTF-8"
    (d / "locked.jpg").write_bytes(good)
    os.chmod(d / "locked.jpg", 0)
    expect["locked.jpg"] = "kept" if AS_ROOT else "not readable"
    # beside the identity folders
    (root / "stray.jpg").write_bytes(good)
    expect["stray.jpg"] = "image outside an identity folder"
    os.mkdir(os.fsencode(str(root)) + b"/M\xfcller")
    with open(os.fsencode(str(root)) + b"/M\xfcller/1.jpg", "wb") as f:
        f.write(good)
    expect["M\\xfcller"] = "folder name is not valid UTF-8"
    os.symlink("loopdir", root / "loopdir")
    expect["loopdir"] = "Too many levels of symbolic links"
    return expect


@pytest.mark.slow
def test_run_completes_and_records_every_skip(tmp_path: Path) -> None:
    root, pairs = synthetic_tree(tmp_path / "faces")
    trained = training_identities(root, pairs)
    held = sorted(set(p.name for p in root.iterdir() if p.is_dir()) - set(trained))
    ident = trained[0]
    expect = plant(root, ident)
    # a face an evaluation pair needs is corrupt too: that pair is dropped, the run goes on
    victim = root / held[0] / f"{held[0]}_0001.jpg"
    victim.write_bytes(b"GIF89a garbage")
    run = tmp_path / "run"
    try:
        rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(folder_overrides(tmp_path / "cache", root,
                                                                                              pairs)),
                                          "--out", str(run)])
    finally:
        os.chmod(root / ident / "locked.jpg", 0o644)
    assert rc == 0, err
    assert (run / "student.pt").exists() and (run / "report.json").exists()
    record = json.loads((run / "data_record.json").read_text())
    train = record["train"]
    skipped = {**{p: r for p, r in train["skipped_while_scanning"]}, **train["alignment"]["skipped"]}
    by_name = {p.rstrip("/").rsplit("/", 1)[-1]: r for p, r in skipped.items()}
    for name, what in expect.items():
        if what == "kept":
            assert name not in by_name, f"{name} was skipped: {by_name.get(name)}"
        else:
            assert name in by_name and what in by_name[name], f"{name}: expected '{what}', got {by_name.get(name)}"
    kept = set(json.loads((run / "split" / "train_images.json").read_text())["rel_paths"])
    for name, what in expect.items():
        if what == "kept":
            assert f"{ident}/{name}" in kept
    # 6 training identities x 4 faces + alpha, 16-bit, grey, CMYK, huge JPEG (+ the locked one, read as root)
    assert train["aligned_train_faces"] == 24 + 5 + AS_ROOT
    eval_skipped = record["eval"]["alignment"]["skipped"]
    assert list(eval_skipped) == [victim.relative_to(root).as_posix()] and "image (" in eval_skipped[
        victim.relative_to(root).as_posix()]
    assert "pairs dropped" in out
    json.dumps(record)  # non-UTF-8 names are recorded as printable text
    assert (root / ident / "corrupt.jpg").stat().st_size == 5004  # sources are never modified
    assert os.path.exists(os.fsencode(str(root / ident)) + b"/caf\xe9.jpg")


def test_identity_whose_only_image_is_bad_is_skipped_and_counted(tmp_path: Path) -> None:
    """A folder with no usable image is left out of the run, named in the log and the run record."""
    root, pairs = synthetic_tree(tmp_path / "faces")
    (root / "lonely").mkdir()
    (root / "lonely" / "only.jpg").write_bytes(b"")
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(folder_overrides(tmp_path / "cache", root,
                                                                                          pairs)),
                                      "--out", str(tmp_path / "run")])
    assert rc == 0, err
    assert "1 identity folders skipped, no usable image: lonely" in out + err
    record = json.loads((tmp_path / "run" / "data_record.json").read_text())
    assert record["train"]["skipped_identity_folders"] == ["lonely"]


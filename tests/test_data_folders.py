"""Identity-folder scanning (bad input included), ImageList round trips and identity-disjoint splits."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from distill.data.folders import (DatasetError, SkippedFilesWarning, load_image_list, save_image_list,
                                  scan_identity_folder)
from distill.data.pairs import read_pairs
from distill.data.splits import identity_disjoint_split

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # content is not decoded while scanning, only its size matters


def _tree(root: Path, spec: dict[str, list[str]]) -> Path:
    for ident, files in spec.items():
        (root / ident).mkdir(parents=True, exist_ok=True)
        for f in files:
            (root / ident / f).write_bytes(PNG)
    return root


def _snapshot(root: Path) -> list[tuple[bytes, int, float]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out.append((p, st.st_size, st.st_mtime))
    return sorted(out)


def test_scan_layout_labels_and_order(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"bob": ["b_2.png", "b_1.JPG"], "Ann": ["a.jpeg"], "carl": ["c.webp", "c.PGM", "c.bmp"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean tree must not warn
        images = scan_identity_folder(root)
    assert images.identities == ["Ann", "bob", "carl"]
    assert images.rel_paths == ["Ann/a.jpeg", "bob/b_1.JPG", "bob/b_2.png", "carl/c.PGM", "carl/c.bmp", "carl/c.webp"]
    assert images.labels.tolist() == [0, 1, 1, 2, 2, 2] and images.labels.dtype == np.int64
    assert images.counts().tolist() == [1, 2, 3]
    assert images.identity_of(2) == "bob" and images.paths()[0] == root / "Ann" / "a.jpeg"
    assert scan_identity_folder(root).rel_paths == images.rel_paths  # deterministic


def test_bad_entries_are_skipped_with_one_warning_and_source_untouched(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"ann": ["ok.jpg", "notes.txt"], "bob": ["ok.png"]})
    (root / "ann" / "empty.jpg").write_bytes(b"")
    (root / "ann" / "nested").mkdir()
    (root / "ann" / "broken.jpg").symlink_to(root / "ann" / "missing.jpg")
    (root / "ann" / "loop.jpg").symlink_to(root / "ann" / "loop.jpg")
    (root / "loopdir").symlink_to(root / "loopdir")
    (root / "README.txt").write_text("metadata beside the identities: ignored silently")
    (root / "stray.jpg").write_bytes(PNG)
    (root / "ann" / ".DS_Store").write_bytes(b"x")  # hidden files are not data and not reported
    bad_name = os.path.join(os.fsencode(root / "bob"), b"caf\xe9.jpg")  # Latin-1, not UTF-8
    with open(bad_name, "wb") as f:
        f.write(PNG)
    before = _snapshot(root)

    with pytest.warns(SkippedFilesWarning) as record:
        images = scan_identity_folder(root)
    assert len(record) == 1
    message = str(record[0].message)
    reasons = dict(images.skipped)
    assert images.rel_paths == ["ann/ok.jpg", "bob/ok.png"]
    assert reasons["ann/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["ann/notes.txt"] == "not an image extension"
    assert "nested folder" in reasons["ann/nested/"]
    assert "cannot stat" in reasons["ann/broken.jpg"] and "cannot stat" in reasons["ann/loop.jpg"]
    assert reasons["bob/caf\\xe9.jpg"] == "file name is not valid UTF-8"
    assert reasons["stray.jpg"] == "image outside an identity folder" and "README.txt" not in reasons
    assert "loopdir" in reasons
    assert not any(".DS_Store" in p for p in reasons)
    for path in reasons:
        assert path in message, f"warning does not name {path}"
    assert _snapshot(root) == before, "scanning modified the source folder"
    json.dumps(images.to_dict())  # the skipped list is JSON-safe for the run record


@pytest.mark.skipif(os.geteuid() == 0, reason="platform: running as root: permission bits do not stop root from reading")
def test_unreadable_file_and_folder_are_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"ann": ["ok.jpg", "secret.jpg"], "bob": ["ok.jpg"], "carl": ["ok.jpg"]})
    (root / "ann" / "secret.jpg").chmod(0)
    (root / "carl").chmod(0)
    try:
        with pytest.warns(SkippedFilesWarning):
            images = scan_identity_folder(root)
    finally:
        (root / "carl").chmod(0o755)
        (root / "ann" / "secret.jpg").chmod(0o644)
    reasons = dict(images.skipped)
    assert "permissions" in reasons["ann/secret.jpg"] and "not readable" in reasons["carl/"]
    assert images.identities == ["ann", "bob"]


def test_identity_without_usable_image_is_skipped_and_counted(tmp_path: Path) -> None:
    """One bad folder never aborts a command: it is left out, named and counted (issue: real-world inputs)."""
    root = _tree(tmp_path, {"ann": ["ok.jpg"], "bob": ["notes.txt"]})
    (root / "bob" / "empty.png").write_bytes(b"")
    (root / "carl").mkdir()  # an empty identity folder, too
    with pytest.warns(SkippedFilesWarning, match="bob/: identity folder with no usable image"):
        images = scan_identity_folder(root)
    assert images.identities == ["ann"] and images.skipped_identities == ["bob", "carl"]
    reasons = dict(images.skipped)
    assert "empty file" in reasons["bob/"] and "the folder is empty" in reasons["carl/"]


def test_os_litter_is_ignored_silently_and_tiff_is_an_image(tmp_path: Path) -> None:
    from PIL import Image

    root = _tree(tmp_path, {"ann": ["ok.jpg"]})
    (root / "tiffany").mkdir()
    Image.new("RGB", (32, 32), (90, 60, 30)).save(root / "tiffany" / "only.tiff")
    (root / "__MACOSX" / "ann").mkdir(parents=True)
    (root / "__MACOSX" / "ann" / "._ok.jpg").write_bytes(b"\x00\x05\x16\x07")
    for name in ("Thumbs.db", "desktop.ini", ".DS_Store"):
        (root / name).write_bytes(b"litter")
        (root / "ann" / name).write_bytes(b"litter")
    (root / "ann" / "._ok.jpg").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # litter is not even worth a warning
        images = scan_identity_folder(root)
    assert images.identities == ["ann", "tiffany"] and images.rel_paths == ["ann/ok.jpg", "tiffany/only.tiff"]
    assert not images.skipped


def test_empty_or_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no usable images under"):
        scan_identity_folder(tmp_path)
    with pytest.raises(DatasetError, match="does not exist.*data.root"):
        scan_identity_folder(tmp_path / "nope")


def test_subset_relabels_and_json_round_trip(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"ann": ["1.jpg", "2.jpg"], "bob": ["1.jpg"], "carl": ["1.jpg", "2.jpg"]})
    images = scan_identity_folder(root)
    sub = images.subset(np.array([True, False, False, True, True]))
    assert sub.identities == ["ann", "carl"] and sub.labels.tolist() == [0, 1, 1]
    assert sub.rel_paths == ["ann/1.jpg", "carl/1.jpg", "carl/2.jpg"]
    assert images.subset([4, 0]).rel_paths == ["ann/1.jpg", "carl/2.jpg"]  # index arrays keep data order
    with pytest.raises(ValueError, match="mask has shape"):
        images.subset(np.array([True, False]))
    path = save_image_list(sub, tmp_path / "run" / "images.json")
    back = load_image_list(path)
    assert back.rel_paths == sub.rel_paths and back.identities == sub.identities
    assert np.array_equal(back.labels, sub.labels) and back.root == sub.root
    (tmp_path / "bad.json").write_text('{"root": "x"}')
    with pytest.raises(DatasetError, match="bad.json"):
        load_image_list(tmp_path / "bad.json")


def test_holdout_split_is_identity_disjoint_and_seeded(tmp_path: Path) -> None:
    root = _tree(tmp_path, {f"p{i:02d}": ["1.jpg", "2.jpg"] for i in range(20)})
    images = scan_identity_folder(root)
    train, held, record = identity_disjoint_split(images, holdout_fraction=0.25, seed=3)
    assert len(held) == 5 and not set(held) & set(train.identities)
    assert len(train) == 30 and record["train_images"] == 30 and record["held_out"] == held
    assert identity_disjoint_split(images, holdout_fraction=0.25, seed=3).held_out == held
    assert identity_disjoint_split(images, holdout_fraction=0.25, seed=4).held_out != held
    json.dumps(record)
    with pytest.raises(ValueError, match="not identity-disjoint"):
        identity_disjoint_split(images)


def test_lfw_scan_and_devtest_disjoint_split(lfw_root: Path) -> None:
    images = scan_identity_folder(lfw_root / "lfw-deepfunneled")
    assert len(images) == 13233 and images.num_identities == 5749
    test_pairs = lfw_root / "pairsDevTest.txt"
    train, held, record = identity_disjoint_split(images, exclude_pairs=[test_pairs])
    assert len(train) == 10492 and train.num_identities == 4786
    people = read_pairs(test_pairs, images.root).people()
    assert not people & set(train.identities)
    assert set(held) == people and len(held) == 963
    assert record["held_out_images"] == 2741
    assert record["exclude_pairs"][0]["sha256"]
    json.dumps(record)

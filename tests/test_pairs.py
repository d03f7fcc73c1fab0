"""LFW pairs files: official View 1 / View 2 on the real data, malformed and missing input, write/read;
every-pair protocols (all_pairs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.data.pairs import MissingImagesError, PairsFormatError, all_pairs, read_pairs, write_pairs


def _images(root: Path, names: dict[str, int], ext: str = ".jpg") -> Path:
    for name, n in names.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            (root / name / f"{name}_{i:04d}{ext}").write_bytes(b"x")
    return root


@pytest.mark.parametrize("fname,count,view", [("pairsDevTrain.txt", 2200, 1), ("pairsDevTest.txt", 1000, 1),
                                              ("pairs.txt", 6000, 2)])
def test_official_lfw_files_load(lfw_root: Path, fname: str, count: int, view: int) -> None:
    pairs = read_pairs(lfw_root / fname, lfw_root / "lfw-deepfunneled")  # raises if any image is missing
    assert len(pairs) == count and pairs.view == view and pairs.name == Path(fname).stem
    assert pairs.is_same.sum() == count // 2
    assert pairs.num_folds == 10
    for f in range(10):  # every fold balanced: View 2 by the file, View 1 by position
        in_fold = pairs.fold == f
        assert in_fold.sum() == count // 10 and pairs.is_same[in_fold].sum() == count // 20
    same_people = {a.split("/")[0] == b.split("/")[0] for a, b in zip(np.array(pairs.rel_path_a)[pairs.is_same],
                                                                      np.array(pairs.rel_path_b)[pairs.is_same])}
    assert same_people == {True}
    assert all((pairs.images_root / p).is_file() for p in pairs.image_rel_paths()[:50])


def test_view1_people_are_disjoint(lfw_root: Path) -> None:
    train = read_pairs(lfw_root / "pairsDevTrain.txt", lfw_root, check_exists=False)
    test = read_pairs(lfw_root / "pairsDevTest.txt", lfw_root, check_exists=False)
    assert len(test.people()) == 963
    assert not train.people() & test.people()


def test_view2_first_line_maps_to_file_names(lfw_root: Path) -> None:
    pairs = read_pairs(lfw_root / "pairs.txt", lfw_root / "lfw-deepfunneled", check_exists=False)
    # line 2 of the official file: Abel_Pacheco 1 4
    assert (pairs.rel_path_a[0], pairs.rel_path_b[0]) == ("Abel_Pacheco/Abel_Pacheco_0001.jpg",
                                                         "Abel_Pacheco/Abel_Pacheco_0004.jpg")
    assert pairs.is_same[0] and pairs.fold[0] == 0 and pairs.fold[-1] == 9 and not pairs.is_same[-1]


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    root = _images(tmp_path / "img", {"ann": 3, "bob": 2, "cy": 1}, ext=".png")
    same = [("ann", 1, 2), ("ann", 2, 3), ("bob", 1, 2)]
    diff = [("ann", 1, "bob", 2), ("bob", 1, "cy", 1), ("ann", 3, "cy", 1)]
    path = write_pairs(tmp_path / "pairsDevTest.txt", same, diff)
    assert path.read_text().splitlines()[:2] == ["3", "ann\t1\t2"]
    pairs = read_pairs(path, root, ext=".png")
    assert pairs.is_same.tolist() == [True] * 3 + [False] * 3
    assert pairs.rel_path_b[3] == "bob/bob_0002.png" and pairs.people() == {"ann", "bob", "cy"}
    a, b = pairs.index_into(pairs.image_rel_paths())
    assert [pairs.image_rel_paths()[i] for i in b] == pairs.rel_path_b
    with pytest.raises(ValueError, match="as many same as different"):
        write_pairs(tmp_path / "x.txt", same, diff[:2])
    with pytest.raises(ValueError, match="whitespace"):
        write_pairs(tmp_path / "x.txt", [("a b", 1, 2)], [("a b", 1, "c", 1)])
    assert not (tmp_path / "x.txt").exists()


def test_missing_images_are_listed(tmp_path: Path) -> None:
    root = _images(tmp_path / "img", {"ann": 2, "bob": 1})
    path = write_pairs(tmp_path / "p.txt", [("ann", 1, 2), ("ann", 1, 7)], [("ann", 1, "bob", 1), ("ann", 2, "zed", 3)])
    with pytest.raises(MissingImagesError) as err:
        read_pairs(path, root)
    msg = str(err.value)
    assert "2 image(s)" in msg and "ann/ann_0007.jpg" in msg and "zed/zed_0003.jpg" in msg and str(root) in msg
    assert len(read_pairs(path, root, check_exists=False)) == 4


@pytest.mark.parametrize("text,line,match", [
    ("2\na\t1\t2\nb\t1\t2\na\t1\tb\t2\na\t1\n", 5, "different-person line"),
    ("1\na\t1\tb\t2\na\t1\tb\t2\n", 2, "same-person line"),
    ("1\na\tx\t2\na\t1\tb\t2\n", 2, "not an integer"),
    ("1\na\t1\t2\na\t1\ta\t2\n", 3, "names 'a' twice"),
    ("hello\n", 1, "header"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, line: int, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(PairsFormatError, match=match) as err:
        read_pairs(path, tmp_path, check_exists=False)
    assert f"{path}:{line}" in str(err.value)


def test_count_mismatch_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("10\t300\na\t1\t2\n")
    with pytest.raises(PairsFormatError, match="promises 6000 pairs, the file has 1"):
        read_pairs(path, tmp_path, check_exists=False)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_pairs(tmp_path / "nope.txt", tmp_path)


def test_all_pairs_golden() -> None:
    labels = np.array([5, 5, 7, 5, 9])           # unsorted, sparse labels: persons 5 -> 0, 7 -> 1, 9 -> 2
    a, b, same, fold = all_pairs(labels, folds=2)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4),
                                                 (2, 3), (2, 4), (3, 4)]   # C(5, 2), i < j, row-major
    assert same.tolist() == [True, False, True, False, False, True, False, False, False, False]
    assert fold.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0]   # person of the first image, mod 2
    assert a.dtype == b.dtype == fold.dtype == np.int64 and same.dtype == bool
    assert [len(x) for x in all_pairs(np.array([3]))] == [0] * 4 and len(all_pairs(np.zeros(0))[0]) == 0
    with pytest.raises(ValueError, match="folds"):
        all_pairs(labels, folds=0)


def test_all_pairs_counts_and_person_folds() -> None:
    labels = np.repeat(np.arange(23), np.arange(1, 24) % 4 + 1)   # 23 people, 1..4 images each
    n, counts = labels.size, np.bincount(labels)
    a, b, same, fold = all_pairs(labels)
    assert len(a) == n * (n - 1) // 2 and same.sum() == (counts * (counts - 1) // 2).sum()
    assert np.all(a < b) and np.array_equal(same, labels[a] == labels[b])
    assert np.array_equal(fold, labels[a] % 10) and set(fold.tolist()) == set(range(10))
    for person in range(23):   # a person's genuine pairs never straddle folds
        assert np.unique(fold[same & (labels[a] == person)]).size <= 1


def test_all_pairs_of_lfw_devtest_people(lfw_root: Path) -> None:
    """The count the DevTest-all-pairs protocol evaluates (View 2 on DevTest people has 78 impostors)."""
    from distill.data import scan_identity_folder

    people = read_pairs(lfw_root / "pairsDevTest.txt", lfw_root, check_exists=False).people()
    images = scan_identity_folder(lfw_root / "lfw-deepfunneled").select_identities(people)
    assert (len(images), images.num_identities) == (2741, 963)
    a, b, same, fold = all_pairs(images.labels)
    assert (int(same.sum()), int((~same).sum())) == (23524, 3731646)
    assert np.unique(fold).size == 10 and all(same[fold == k].any() for k in range(10))
